"""How the score network is fed, kept apart from its architecture (as EDM's preconditioning).

The network sees [2 x_t - 1, features] (images in [0, 1] mapped to [-1, 1]; the LMI
features as given), a noise label derived from t, and with scale_by_sigma its output is
divided by the marginal std(t), so its regression target -z has unit scale at every t.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmi_jax import lmi
from lmi_jax.sde import SDE, bcast

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]

# The null condition: every feature channel is constant -1. Cross and self maps are >= 0
# (MI, NMI and entropies are non-negative) and the aligned channel is a noisy image, never
# constant, so no LMI output can be mistaken for it.
NULL_VALUE = -1.0


def null_features(shape: tuple[int, ...]) -> jax.Array:
  """The features that stand for "no condition": (B, H, W, C) float32, all NULL_VALUE."""
  return jnp.full(shape, NULL_VALUE, jnp.float32)


def noise_labels(embedding_type: str, sde: SDE, t: jax.Array) -> jax.Array:
  """What the network's time embedding reads, (B,) from t (B,).

  'fourier': log std(t), whose range the Fourier scale is chosen for (Song et al.'s VE);
  'positional': 999 t, the DDPM step index the sinusoid frequencies are chosen for.
  """
  if embedding_type == "fourier":
    return jnp.log(sde.mean_std(t)[1])
  return 999.0 * t


def score_fn(model: nn.Module, variables: dict, sde: SDE, x: jax.Array, features: jax.Array,
             t: jax.Array, *, scale_by_sigma: bool, train: bool = False,
             key: jax.Array | None = None) -> jax.Array:
  """Score of x_t: x (B, H, W, 1), features (B, H, W, C), t (B,) -> (B, H, W, 1).

  `model` is the module from `create_model`, `variables` its Flax variables
  ({'params': ...}); `key` feeds dropout and is needed when train is True.
  """
  inputs = jnp.concatenate([2.0 * x - 1.0, features], axis=-1)
  labels = noise_labels(model.embedding_type, sde, t)
  rngs = {"dropout": key} if key is not None else {}
  out = model.apply(variables, inputs, labels, train=train, rngs=rngs)
  if scale_by_sigma:
    out = out / bcast(sde.mean_std(t)[1], out)
  return out


def lmi_score(model: nn.Module, variables: dict, sde: SDE, lmi_cfg: lmi.LMIConfig,
              reference: jax.Array, *, scale_by_sigma: bool, guidance_scale: float = 1.0,
              fixed: dict[str, jax.Array] | None = None) -> ScoreFn:
  """score(x, t) conditioned on LMI(reference; reference, x), recomputed from each x.

  guidance_scale w mixes in the unconditional score (null features):
  s = s_uncond + w (s_cond - s_uncond); w = 1 is plain conditioning, one network call.

  Args:
    reference: (B, H, W, 1) the image the LMI maps compare x with (the source G).
    fixed: `lmi.reference_channels(reference, lmi_cfg)`, computed once by the caller.
  Returns:
    score(x (B, H, W, 1), t (B,)) -> (B, H, W, 1).
  """
  if fixed is None:
    fixed = lmi.reference_channels(reference, lmi_cfg)

  def score(x: jax.Array, t: jax.Array) -> jax.Array:
    feats = lmi.features(reference, x, lmi_cfg, fixed=fixed)
    conditional = score_fn(model, variables, sde, x, feats, t, scale_by_sigma=scale_by_sigma)
    if guidance_scale == 1.0:
      return conditional
    unconditional = score_fn(model, variables, sde, x, null_features(feats.shape), t,
                             scale_by_sigma=scale_by_sigma)
    return unconditional + guidance_scale * (conditional - unconditional)

  return score


def unconditional_score(model: nn.Module, variables: dict, sde: SDE, num_channels: int, *,
                        scale_by_sigma: bool) -> ScoreFn:
  """score(x, t) with the null condition the model learnt through conditioning dropout."""

  def score(x: jax.Array, t: jax.Array) -> jax.Array:
    null = null_features(x.shape[:-1] + (num_channels,))
    return score_fn(model, variables, sde, x, null, t, scale_by_sigma=scale_by_sigma)

  return score
