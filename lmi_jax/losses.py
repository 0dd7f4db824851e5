"""Denoising score matching with LMI conditioning: the paper's Eq. 2 in continuous time.

For a clean target slice F (the only modality training sees):
  t ~ U(eps, 1),  z ~ N(0, I),  F_t = alpha(t) F + std(t) z          (perturbation kernel)
  c = LMI(F; F, F_t)   (`lmi.features`, computed inside the jitted step)
  loss = 1/2 || std(t) s(F_t, c, t) + z ||^2, summed over pixels, averaged over examples.
With the score of the kernel -z / std(t), this is Eq. 2's 1/2 |s - grad log p|^2 weighted by
lambda(t) = std(t)^2, which puts every noise level on the same scale (Song et al. 2021).

`Weighting` "edm" instead draws the noise levels and weighs them as Karras et al. (2022):
ln sigma_y ~ N(p_mean, p_std^2) for the noise level sigma_y = 2 std(t) / alpha(t) of images
in [-1, 1] (t clipped to [eps, 1]), and the loss above times (sigma_y^2 + sd^2) / sd^2, which
is their lambda(sigma) |D - y_0|^2; with the "edm" feeding (lmi_jax.models.score) the
network's own regression target then has unit weight at every level.

Conditioning augmentation (`CondAug`, off unless given): with probability `prob` an example's
reference is not F but a contrast F never had, g(F) + noise, with g a random piecewise-linear
intensity curve (tissue order shuffled, inverted or squeezed) and the noise std drawn
log-uniformly up to `noise`: c = LMI(g(F) + n; F, F_t). The network still sees target images
only, but learns to read LMI maps of faint or unfamiliar sources, as translation gives it.

Conditioning dropout: with probability p_uncond an example's features are replaced by
`null_features`, so one network learns both s(x, c, t) and the unconditional s(x, t), for the
SDEdit baseline and for guidance scales other than 1.

Every random draw of an example comes from its own key (t, z, the dropout choice and the
network's dropout masks), so an example's loss does not depend on the device, host or batch
mates it is computed with: data-parallel runs match single-device runs.
"""

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmi_jax import lmi
from lmi_jax.models import null_features, score_fn
from lmi_jax.models.score import SIGMA_DATA
from lmi_jax.sde import SDE, bcast

def drop_features(features: jax.Array, drop: jax.Array) -> jax.Array:
  """Features (B, H, W, C) with those of the examples where drop (B,) bool is set made null."""
  return jnp.where(bcast(drop, features), null_features(features.shape), features)


@dataclasses.dataclass(frozen=True)
class CondAug:
  """Static settings of the conditioning augmentation (`training.cond_aug*`).

  prob: chance that an example's reference is remapped (0: the paper's reference F).
  knots: points of the random curve, evenly spaced over [0, 1]; the first maps 0 to 0.
  noise: largest noise std of the remapped reference (on its [0, 1] scale); the smallest
    is noise / NOISE_RANGE.
  """
  prob: float
  knots: int
  noise: float


NOISE_RANGE = 100.0  # Ratio of the largest to the smallest noise std drawn by `CondAug`.
CURVE_FLOOR = 0.2  # Lowest value of a curve's knots after 0: the background stays darkest.


def remap(x0: jax.Array, values: jax.Array, sigma: jax.Array, z: jax.Array) -> jax.Array:
  """clip(g(x0) + sigma z, 0, 1), g the piecewise-linear curve through (k / (K - 1), values[k]).

  Args:
    x0: (H, W, 1) target slice in [0, 1]. values: (K,) the curve's values at its knots.
    sigma: () noise std. z: (H, W, 1) standard normal noise.
  """
  knots = jnp.linspace(0.0, 1.0, values.shape[0])
  return jnp.clip(jnp.interp(x0, knots, values) + sigma * z, 0.0, 1.0)


def draw_curve(key: jax.Array, knots: int) -> jax.Array:
  """(knots,) values of a random intensity curve: 0 at 0, the others uniform in
  [CURVE_FLOOR, 1], then scaled so that the largest is 1."""
  values = jax.random.uniform(key, (knots - 1,), jnp.float32, CURVE_FLOOR, 1.0)
  return jnp.concatenate([jnp.zeros((1,)), values / jnp.max(values)])


def augment_reference(key: jax.Array, x0: jax.Array, aug: CondAug) -> jax.Array:
  """The LMI reference (H, W, 1) of one target slice x0 (H, W, 1): x0 itself, or with
  probability aug.prob `remap(x0, ...)` with a `draw_curve` curve and a log-uniform std."""
  apply_key, curve_key, sigma_key, z_key = jax.random.split(key, 4)
  log_sigma = jax.random.uniform(sigma_key, (), jnp.float32,
                                 jnp.log(aug.noise / NOISE_RANGE), jnp.log(aug.noise))
  remapped = remap(x0, draw_curve(curve_key, aug.knots), jnp.exp(log_sigma),
                   jax.random.normal(z_key, x0.shape, jnp.float32))
  return jnp.where(jax.random.bernoulli(apply_key, aug.prob), remapped, x0)


WEIGHTINGS = ("dsm", "edm")


@dataclasses.dataclass(frozen=True)
class Weighting:
  """Static settings of the noise levels the loss draws and their weights
  (`training.weighting`, `training.edm_p_mean`, `training.edm_p_std`; see the module doc).

  kind: dsm (t ~ U(eps, 1), Eq. 2) | edm (log-normal levels, EDM's weights).
  eps: smallest diffusion time. p_mean, p_std: edm's ln sigma_y distribution.
  """
  kind: str = "dsm"
  eps: float = 1e-5
  p_mean: float = -1.2
  p_std: float = 1.2


class Draws(NamedTuple):
  """One example's randomness: t () uniform in [eps, 1), z (H, W, 1), drop () bool,
  dropout_key and reference_key (keys), level () standard normal (edm's noise level)."""
  t: jax.Array
  z: jax.Array
  drop: jax.Array
  dropout_key: jax.Array
  reference_key: jax.Array
  level: jax.Array


def draw(key: jax.Array, image_shape: tuple[int, ...], eps: float, p_uncond: float) -> Draws:
  """The randomness of one example (image_shape (H, W, 1)) from its own key."""
  t_key, z_key, drop_key, dropout_key = jax.random.split(key, 4)
  return Draws(t=jax.random.uniform(t_key, (), jnp.float32, eps, 1.0),
               z=jax.random.normal(z_key, image_shape, jnp.float32),
               drop=jax.random.bernoulli(drop_key, p_uncond),
               dropout_key=dropout_key,
               reference_key=jax.random.fold_in(key, 1),
               level=jax.random.normal(jax.random.fold_in(key, 2), (), jnp.float32))


def loss_times(sde: SDE, d: Draws, weighting: Weighting) -> tuple[jax.Array, jax.Array]:
  """Each example's diffusion time and loss weight, (B,) each, from its draws (batched)."""
  if weighting.kind == "dsm":
    return d.t, jnp.ones_like(d.t)
  sigma_y = jnp.exp(weighting.p_mean + weighting.p_std * d.level)
  t = jnp.clip(sde.time_of_scaled_std(0.5 * sigma_y), weighting.eps, 1.0)
  sigma_y = 2.0 * sde.scaled_std(t)
  return t, (sigma_y**2 + SIGMA_DATA**2) / SIGMA_DATA**2


def dsm_loss(model: nn.Module, params: dict, sde: SDE, lmi_cfg: lmi.LMIConfig,
             x0: jax.Array, keys: jax.Array, *, p_uncond: float, feeding: str,
             weighting: Weighting, cond_aug: CondAug | None = None) -> jax.Array:
  """Eq. 2 on a batch: a scalar, the mean over examples of the per-example loss.

  Args:
    model, params: the score network (`create_model`) and its parameters.
    sde: the forward SDE of the perturbation kernel.
    lmi_cfg: static LMI settings of the conditioning features.
    x0: (B, H, W, 1) clean target slices in [0, 1].
    keys: (B,) one key per example.
    p_uncond: probability that an example's features are replaced by the null.
    feeding: how the network's output becomes a score (`lmi_jax.models.score`).
    weighting: the noise levels drawn and their weights.
    cond_aug: the conditioning augmentation (None or prob 0: the reference is x0).
  """
  d = jax.vmap(lambda k: draw(k, x0.shape[1:], weighting.eps, p_uncond))(keys)
  t, weight = loss_times(sde, d, weighting)
  mean, std = sde.marginal(x0, t)
  std = bcast(std, x0)
  x_t = mean + std * d.z
  reference = x0
  if cond_aug is not None and cond_aug.prob > 0:
    reference = jax.vmap(lambda k, x: augment_reference(k, x, cond_aug))(d.reference_key, x0)
  features = drop_features(lmi.features(reference, x_t, lmi_cfg), d.drop)

  def one_score(x, c, t, key):
    return score_fn(model, {"params": params}, sde, x[None], c[None], t[None],
                    feeding=feeding, train=True, key=key)[0]
  # vmap gives each example its own dropout masks and still runs the network on the whole
  # batch: the mapped axis becomes the convolutions' batch axis.
  score = jax.vmap(one_score)(x_t, features, t, d.dropout_key)
  per_example = 0.5 * weight * jnp.sum(jnp.square(std * score + d.z), axis=(1, 2, 3))
  return jnp.mean(per_example)
