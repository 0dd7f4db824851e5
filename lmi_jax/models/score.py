"""How the score network is fed, kept apart from its architecture (as EDM's preconditioning).

The network sees [2 x_t - 1, features] (images in [0, 1] mapped to [-1, 1]; the LMI
features as given) and a noise label derived from t. Its output F becomes a score by one of
three feedings (`FEEDINGS`, `feeding_of` reads them from the `model` config section):
  raw    score = F;
  sigma  score = F / std(t), so the regression target -z has unit scale at every t
         (Song et al.'s VE models);
  edm    Karras et al. (2022)'s preconditioning: in y = 2 x / alpha(t) - 1, whose noise level
         is sigma_y = 2 std(t) / alpha(t), the network sees c_in y and predicts the clean
         image D = c_skip y + c_out F, with c_in = 1 / sqrt(sigma_y^2 + sd^2),
         c_skip = sd^2 / (sigma_y^2 + sd^2), c_out = sigma_y sd / sqrt(sigma_y^2 + sd^2),
         sd = SIGMA_DATA; then score = (alpha x_0(D) - x_t) / std^2. Input and target have
         unit scale at every noise level, where the VE network's input grows to sigma_max.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lmi_jax import lmi
from lmi_jax.errors import InputError
from lmi_jax.sde import SDE, bcast

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]

# The null condition: every feature channel is constant -1. Cross and self maps are >= 0
# (MI, NMI and entropies are non-negative) and the aligned channel is a noisy image, never
# constant, so no LMI output can be mistaken for it.
NULL_VALUE = -1.0
FEEDINGS = ("raw", "sigma", "edm")
PRECONDITIONINGS = ("none", "edm")
SIGMA_DATA = 0.5  # EDM's data std for images in [-1, 1].


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


def feeding_of(model_config: ml_collections.ConfigDict) -> str:
  """The feeding (`FEEDINGS`) of a `model` config section: its preconditioning, or else
  scale_by_sigma's choice between sigma and raw."""
  preconditioning = str(model_config.preconditioning)
  if preconditioning not in PRECONDITIONINGS:
    raise InputError(f"model.preconditioning = {preconditioning!r}: expected one of "
                     f"{PRECONDITIONINGS}.")
  if preconditioning == "edm":
    return "edm"
  return "sigma" if model_config.scale_by_sigma else "raw"


def edm_coefficients(sigma_y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(c_in, c_skip, c_out) of EDM's preconditioning at noise levels sigma_y in [-1, 1]
  units (any shape, elementwise)."""
  var = sigma_y**2 + SIGMA_DATA**2
  return jax.lax.rsqrt(var), SIGMA_DATA**2 / var, sigma_y * SIGMA_DATA * jax.lax.rsqrt(var)


def score_fn(model: nn.Module, variables: dict, sde: SDE, x: jax.Array, features: jax.Array,
             t: jax.Array, *, feeding: str, train: bool = False,
             key: jax.Array | None = None) -> jax.Array:
  """Score of x_t: x (B, H, W, 1), features (B, H, W, C), t (B,) -> (B, H, W, 1).

  `model` is the module from `create_model`, `variables` its Flax variables
  ({'params': ...}); `feeding` one of `FEEDINGS` (`feeding_of`); `key` feeds dropout and is
  needed when train is True.
  """
  if feeding not in FEEDINGS:
    raise ValueError(f"feeding = {feeding!r}: expected one of {FEEDINGS}.")
  labels = noise_labels(model.embedding_type, sde, t)
  rngs = {"dropout": key} if key is not None else {}
  alpha, std = (bcast(v, x) for v in sde.mean_std(t))
  if feeding == "edm":
    y = 2.0 * x / alpha - 1.0
    c_in, c_skip, c_out = edm_coefficients(2.0 * std / alpha)
    image_input = c_in * y
  else:
    image_input = 2.0 * x - 1.0
  out = model.apply(variables, jnp.concatenate([image_input, features], axis=-1), labels,
                    train=train, rngs=rngs)
  if feeding == "raw":
    return out
  if feeding == "sigma":
    return out / std
  denoised = 0.5 * (c_skip * y + c_out * out + 1.0)  # x_0's estimate, in [0, 1] units.
  return (alpha * denoised - x) / std**2


def lmi_score(model: nn.Module, variables: dict, sde: SDE, lmi_cfg: lmi.LMIConfig,
              reference: jax.Array, *, feeding: str, guidance_scale: float = 1.0,
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
    conditional = score_fn(model, variables, sde, x, feats, t, feeding=feeding)
    if guidance_scale == 1.0:
      return conditional
    unconditional = score_fn(model, variables, sde, x, null_features(feats.shape), t,
                             feeding=feeding)
    return unconditional + guidance_scale * (conditional - unconditional)

  return score


def unconditional_score(model: nn.Module, variables: dict, sde: SDE, num_channels: int, *,
                        feeding: str) -> ScoreFn:
  """score(x, t) with the null condition the model learnt through conditioning dropout."""

  def score(x: jax.Array, t: jax.Array) -> jax.Array:
    null = null_features(x.shape[:-1] + (num_channels,))
    return score_fn(model, variables, sde, x, null, t, feeding=feeding)

  return score
