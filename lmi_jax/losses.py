"""Denoising score matching with LMI conditioning: the paper's Eq. 2 in continuous time.

For a clean target slice F (the only modality training sees):
  t ~ U(eps, 1),  z ~ N(0, I),  F_t = alpha(t) F + std(t) z          (perturbation kernel)
  c = LMI(F; F, F_t)   (`lmi.features`, computed inside the jitted step)
  loss = 1/2 || std(t) s(F_t, c, t) + z ||^2, summed over pixels, averaged over examples.
With the score of the kernel -z / std(t), this is Eq. 2's 1/2 |s - grad log p|^2 weighted by
lambda(t) = std(t)^2, which puts every noise level on the same scale (Song et al. 2021).

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


class Draws(NamedTuple):
  """One example's randomness: t (), z (H, W, 1), drop () bool, dropout_key and
  reference_key (keys)."""
  t: jax.Array
  z: jax.Array
  drop: jax.Array
  dropout_key: jax.Array
  reference_key: jax.Array


def draw(key: jax.Array, image_shape: tuple[int, ...], eps: float, p_uncond: float) -> Draws:
  """The randomness of one example (image_shape (H, W, 1)) from its own key."""
  t_key, z_key, drop_key, dropout_key = jax.random.split(key, 4)
  return Draws(t=jax.random.uniform(t_key, (), jnp.float32, eps, 1.0),
               z=jax.random.normal(z_key, image_shape, jnp.float32),
               drop=jax.random.bernoulli(drop_key, p_uncond),
               dropout_key=dropout_key,
               reference_key=jax.random.fold_in(key, 1))


def dsm_loss(model: nn.Module, params: dict, sde: SDE, lmi_cfg: lmi.LMIConfig,
             x0: jax.Array, keys: jax.Array, *, eps: float, p_uncond: float,
             scale_by_sigma: bool, cond_aug: CondAug | None = None) -> jax.Array:
  """Eq. 2 on a batch: a scalar, the mean over examples of the per-example loss.

  Args:
    model, params: the score network (`create_model`) and its parameters.
    sde: the forward SDE of the perturbation kernel.
    lmi_cfg: static LMI settings of the conditioning features.
    x0: (B, H, W, 1) clean target slices in [0, 1].
    keys: (B,) one key per example.
    eps: smallest diffusion time drawn.
    p_uncond: probability that an example's features are replaced by the null.
    scale_by_sigma: the network output is divided by std(t) (see `score_fn`).
    cond_aug: the conditioning augmentation (None or prob 0: the reference is x0).
  """
  d = jax.vmap(lambda k: draw(k, x0.shape[1:], eps, p_uncond))(keys)
  mean, std = sde.marginal(x0, d.t)
  std = bcast(std, x0)
  x_t = mean + std * d.z
  reference = x0
  if cond_aug is not None and cond_aug.prob > 0:
    reference = jax.vmap(lambda k, x: augment_reference(k, x, cond_aug))(d.reference_key, x0)
  features = drop_features(lmi.features(reference, x_t, lmi_cfg), d.drop)

  def one_score(x, c, t, key):
    return score_fn(model, {"params": params}, sde, x[None], c[None], t[None],
                    scale_by_sigma=scale_by_sigma, train=True, key=key)[0]
  # vmap gives each example its own dropout masks and still runs the network on the whole
  # batch: the mapped axis becomes the convolutions' batch axis.
  score = jax.vmap(one_score)(x_t, features, d.t, d.dropout_key)
  per_example = 0.5 * jnp.sum(jnp.square(std * score + d.z), axis=(1, 2, 3))
  return jnp.mean(per_example)
