"""Score networks: the one registry from config name to architecture, and helpers around it."""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lmi_jax.errors import InputError
from lmi_jax.models.ncsnpp import NCSNpp
from lmi_jax.models.score import (FEEDINGS, NULL_VALUE, feeding_of, lmi_score, noise_labels,
                                   null_features, score_fn, unconditional_score)

MODELS = {"ncsnpp": NCSNpp}

# Keys of the `model` config section that are no constructor option: the registry key, and
# how the network is fed (lmi_jax.models.score).
_FEEDING_KEYS = ("name", "scale_by_sigma", "preconditioning")


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The network described by the `model` section of a config; InputError names a bad key."""
  if config.name not in MODELS:
    raise InputError(f"model.name = {config.name!r}: expected one of {sorted(MODELS)}.")
  cls = MODELS[config.name]
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  kwargs = {k: v for k, v in config.items() if k not in _FEEDING_KEYS}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise InputError(f"model.{unknown[0]} is not an option of {config.name}; "
                     f"its options are {sorted(fields)}.")
  model = cls(**kwargs)
  model.check_options()
  return model


def init_variables(model: nn.Module, key: jax.Array, image_size: int,
                   in_channels: int) -> dict:
  """Flax variables of `model` for (1, image_size, image_size, in_channels) inputs."""
  x = jnp.zeros((1, image_size, image_size, in_channels), jnp.float32)
  return model.init(key, x, jnp.zeros((1,), jnp.float32), train=False)


def count_params(variables: dict) -> int:
  """Number of scalars in a pytree of arrays (or of jax.ShapeDtypeStruct)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(variables))


__all__ = ["FEEDINGS", "MODELS", "NCSNpp", "NULL_VALUE", "count_params", "create_model",
           "feeding_of", "init_variables", "lmi_score", "noise_labels", "null_features", "score_fn", "unconditional_score"]
