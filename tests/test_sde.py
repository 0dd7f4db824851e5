"""VE/VP SDEs against closed forms computed independently in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from lmi_jax.errors import InputError
from lmi_jax.sde import VESDE, VPSDE, sde_from_config

VE = VESDE(sigma_min=0.01, sigma_max=50.0)
VP = VPSDE(beta_min=0.1, beta_max=20.0)


def _reference_coeffs(sde):
  """(a(t), g(t)^2) of dx = a(t) x dt + g(t) dw, written from the SDEs' definitions."""
  if isinstance(sde, VESDE):
    log_r = np.log(sde.sigma_max / sde.sigma_min)
    # d/dt sigma_min^2 r^(2t) = 2 log r sigma(t)^2
    return lambda t: 0.0, lambda t: 2 * log_r * (sde.sigma_min * np.exp(log_r * t)) ** 2
  beta = lambda t: sde.beta_min + t * (sde.beta_max - sde.beta_min)
  return lambda t: -0.5 * beta(t), beta


def _integrate_moments(sde, x0, v0, t_end, n=20000):
  """RK4 on m' = a m, v' = 2 a v + g^2 from t = 0 (float64)."""
  a, g2 = _reference_coeffs(sde)
  rhs = lambda t, y: np.array([a(t) * y[0], 2 * a(t) * y[1] + g2(t)])
  y, h = np.array([x0, v0], np.float64), t_end / n
  for i in range(n):
    t = i * h
    k1 = rhs(t, y)
    k2 = rhs(t + h / 2, y + h / 2 * k1)
    k3 = rhs(t + h / 2, y + h / 2 * k2)
    k4 = rhs(t + h, y + h * k3)
    y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
  return y[0], np.sqrt(y[1])


@pytest.mark.parametrize("sde, v0", [(VE, 0.01**2), (VP, 0.0)], ids=["ve", "vp"])
@pytest.mark.parametrize("t", [0.05, 0.4, 1.0])
def test_marginal_matches_moment_odes(sde, v0, t):
  # VE: x(0) carries sigma_min noise by convention (Song et al.), so v(0) = sigma_min^2.
  x0 = 0.7
  mean_ref, std_ref = _integrate_moments(sde, x0, v0, t)
  mean, std = sde.marginal(jnp.full((1, 2, 2, 1), x0), jnp.array([t]))
  np.testing.assert_allclose(mean, mean_ref, rtol=1e-5)
  np.testing.assert_allclose(std, [std_ref], rtol=1e-5)


@pytest.mark.parametrize("sde", [VE, VP], ids=["ve", "vp"])
def test_drift_diffusion_matches_definition(sde):
  a, g2 = _reference_coeffs(sde)
  t = np.array([0.001, 0.3, 0.9])
  x = jnp.array(np.random.default_rng(0).normal(size=(3, 4, 4, 1)), jnp.float32)
  f, g = sde.drift_diffusion(x, jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(f, np.asarray(a(t)).reshape(-1, 1, 1, 1) * x, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g, np.sqrt(g2(t)), rtol=1e-5)


@pytest.mark.parametrize("sde", [VE, VP], ids=["ve", "vp"])
def test_forward_sde_monte_carlo(sde):
  """Euler-Maruyama of the forward SDE from x(0) reaches the closed-form marginal."""
  n, steps, t_end = 20000, 1000, 0.5
  k0, k1 = jax.random.split(jax.random.key(0))
  x0 = 0.3 + 0.1 * jax.random.normal(k0, (n, 1))
  std0 = sde.mean_std(jnp.zeros(()))[1]  # VE: x(0) carries sigma_min noise.
  x = x0 + std0 * jax.random.normal(k1, x0.shape)
  dt = t_end / steps

  def step(x, inputs):
    t, k = inputs
    f, g = sde.drift_diffusion(x, jnp.full((n,), t))
    return x + f * dt + g[:, None] * np.sqrt(dt) * jax.random.normal(k, x.shape), None

  ts = jnp.arange(steps) * dt
  x, _ = jax.lax.scan(step, x, (ts, jax.random.split(jax.random.key(1), steps)))
  alpha, std = sde.mean_std(jnp.array(t_end))
  want_std = np.sqrt(alpha**2 * 0.1**2 + std**2)
  np.testing.assert_allclose(x.mean(), alpha * 0.3, atol=4 * want_std / np.sqrt(n))
  np.testing.assert_allclose(x.std(), want_std, rtol=0.03)


def test_vp_is_the_limit_of_ddpm_linear_betas():
  """alpha(i / 1000)^2 equals DDPM's prod_{j<=i}(1 - beta_j), betas linspace(1e-4, 0.02, 1000)."""
  abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
  i = np.array([10, 100, 400, 999])
  alpha, std = VP.mean_std(jnp.asarray((i + 1) / 1000, jnp.float32))
  np.testing.assert_allclose(alpha**2, abar[i], rtol=0.02, atol=1e-5)
  np.testing.assert_allclose(alpha**2 + std**2, 1.0, rtol=1e-6)
  # The authors' SDEdit start (step 400): signal 0.44, noise 0.90.
  np.testing.assert_allclose(VP.mean_std(jnp.array(0.4)), (0.44, 0.90), atol=0.01)


@pytest.mark.parametrize("sde", [VE, VP], ids=["ve", "vp"])
def test_prior_and_perturb(sde):
  x = sde.prior_sample(jax.random.key(0), (8, 32, 32, 1))
  assert x.shape == (8, 32, 32, 1) and x.dtype == jnp.float32
  np.testing.assert_allclose(x.std(), sde.prior_std, rtol=0.03)
  x0 = jnp.full((8, 32, 32, 1), 0.5)
  t = jnp.full((8,), 0.3)
  xt = sde.perturb(jax.random.key(1), x0, t)
  alpha, std = sde.mean_std(t[0])
  np.testing.assert_allclose(xt.mean(), 0.5 * alpha, atol=4 * std / np.sqrt(xt.size))
  np.testing.assert_allclose(xt.std(), std, rtol=0.03)


def test_sde_from_config():
  config = default.get_config()
  assert sde_from_config(config.sde) == VESDE(config.sde.sigma_min, config.sde.sigma_max)
  config.sde.type = "vp"
  assert sde_from_config(config.sde) == VPSDE(config.sde.beta_min, config.sde.beta_max)
  config.sde.type = "subvp"
  with pytest.raises(InputError, match="sde.type"):
    sde_from_config(config.sde)
