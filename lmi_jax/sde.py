"""Forward SDEs dx = f(x, t) dt + g(t) dw on continuous time t in [eps, 1].

Both SDEs here have a linear drift, so x(t) given x(0) is Gaussian with mean
alpha(t) x(0) and std std(t) per pixel; `mean_std` gives the two coefficients in
closed form; the marginal, perturbation and the samplers' denoising are built on it.

The diffusion runs in image space: x(0) is an image in [0, 1] (NHWC). `t` arguments that
go with a batch `x` are (B,); per-sample outputs (g, std) are (B,) too, and `bcast`
lifts them to x's rank.
"""

import abc
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from lmi_jax.errors import InputError


def bcast(v: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes a per-sample vector v (B,) to (B, 1, ..., 1) so it broadcasts against x (B, ...)."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


class SDE(abc.ABC):
  """A forward SDE with a linear drift; subclasses give the coefficients in closed form."""

  @property
  @abc.abstractmethod
  def prior_std(self) -> float:
    """Std of the prior N(0, prior_std^2 I) that stands in for x(1)."""

  @abc.abstractmethod
  def mean_std(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(alpha(t), std(t)) with x(t) | x(0) ~ N(alpha x(0), std^2); elementwise over t."""

  @abc.abstractmethod
  def drift_diffusion(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """f(x, t) (B, ...) and g(t) (B,) for x (B, ...) and t (B,)."""

  def scaled_std(self, t: jax.Array) -> jax.Array:
    """sigma(t) = std(t) / alpha(t): the noise level of x(t) / alpha(t) = x(0) + sigma(t) z."""
    alpha, std = self.mean_std(t)
    return std / alpha

  @abc.abstractmethod
  def time_of_scaled_std(self, sigma: jax.Array) -> jax.Array:
    """The inverse of `scaled_std`: the time t at which std(t) / alpha(t) = sigma (elementwise)."""

  def marginal(self, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean (B, ...) and std (B,) of x(t) given x(0) = x0 (B, ...), t (B,)."""
    alpha, std = self.mean_std(t)
    return bcast(alpha, x0) * x0, std

  def perturb(self, key: jax.Array, x0: jax.Array, t: jax.Array) -> jax.Array:
    """A draw of x(t) (B, ...) given x(0) = x0 (B, ...) at times t (B,)."""
    mean, std = self.marginal(x0, t)
    return mean + bcast(std, x0) * jax.random.normal(key, x0.shape, x0.dtype)

  def prior_sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """A draw from the prior N(0, prior_std^2 I), float32 of the given shape."""
    return self.prior_std * jax.random.normal(key, shape, jnp.float32)


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
  """Variance exploding SDE (the paper's Eq. 3): f = 0, g(t)^2 = d sigma(t)^2 / dt.

  sigma(t) = sigma_min (sigma_max / sigma_min)^t. As in Song et al. (2021), x(0) is the data
  already perturbed by N(0, sigma_min^2), so the marginal std is sigma(t) itself; the network
  is never asked for a score below sigma_min, where the data's own score is ill-posed.
  """

  sigma_min: float = 0.01
  sigma_max: float = 50.0

  @property
  def prior_std(self) -> float:
    return self.sigma_max

  def sigma(self, t: jax.Array) -> jax.Array:
    """Noise std at time t (any shape, elementwise)."""
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def mean_std(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.ones_like(t), self.sigma(t)

  def time_of_scaled_std(self, sigma: jax.Array) -> jax.Array:
    return jnp.log(sigma / self.sigma_min) / jnp.log(self.sigma_max / self.sigma_min)

  def drift_diffusion(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    log_ratio = jnp.log(self.sigma_max / self.sigma_min)
    return jnp.zeros_like(x), self.sigma(t) * jnp.sqrt(2.0 * log_ratio)


@dataclasses.dataclass(frozen=True)
class VPSDE(SDE):
  """Variance preserving SDE: f = -beta(t) x / 2, g(t) = sqrt(beta(t)), beta linear in t.

  beta_min = 0.1, beta_max = 20 is the continuous limit of DDPM's (and the authors')
  betas linspace(1e-4, 0.02) over 1000 steps: beta_i = beta(i / 1000) / 1000.
  """

  beta_min: float = 0.1
  beta_max: float = 20.0

  @property
  def prior_std(self) -> float:
    return 1.0

  def beta(self, t: jax.Array) -> jax.Array:
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def mean_std(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    log_alpha = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
    # -expm1 keeps std accurate at small t, where 1 - alpha^2 cancels in float32.
    return jnp.exp(log_alpha), jnp.sqrt(-jnp.expm1(2.0 * log_alpha))

  def time_of_scaled_std(self, sigma: jax.Array) -> jax.Array:
    # -log alpha = log(1 + sigma^2) / 2 = a t^2 + b t, solved for t >= 0 (stable form).
    a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
    c = 0.5 * jnp.log1p(sigma**2)
    return 2.0 * c / (b + jnp.sqrt(b**2 + 4.0 * a * c))

  def drift_diffusion(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    beta = self.beta(t)
    return -0.5 * bcast(beta, x) * x, jnp.sqrt(beta)


SDES = {
    "ve": lambda c: VESDE(sigma_min=c.sigma_min, sigma_max=c.sigma_max),
    "vp": lambda c: VPSDE(beta_min=c.beta_min, beta_max=c.beta_max),
}


def sde_from_config(config: ml_collections.ConfigDict) -> SDE:
  """The SDE described by the `sde` section of a config."""
  if config.type not in SDES:
    raise InputError(f"sde.type = {config.type!r}: expected one of {sorted(SDES)}.")
  return SDES[config.type](config)
