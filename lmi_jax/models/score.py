"""How the score network is fed, kept apart from its architecture (as EDM's preconditioning).

The network sees [2 x_t - 1, features] (images in [0, 1] mapped to [-1, 1]; the LMI
features as given), a noise label derived from t, and with scale_by_sigma its output is
divided by the marginal std(t), so its regression target -z has unit scale at every t.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmi_jax.sde import SDE, bcast


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
