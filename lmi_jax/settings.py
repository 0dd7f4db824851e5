"""Checks of a whole config before any work, in every mode: what no section's own check sees.

Each section's keys are checked where they are used (`dataset.check_data_config`,
`sampling.check_sampling_config`, `lmi.from_config`, ...); `check_config` runs those that every
mode needs and adds two rules over all keys: every number is finite, and every seed fits a
PRNG seed.
"""

import math

import ml_collections

from lmi_jax import sampling
from lmi_jax.data import dataset
from lmi_jax.errors import InputError

# jax.random.PRNGKey and numpy's generators take seeds in [0, 2**32); fold_in takes 32 bits.
_SEED_LIMIT = 2**32


def _leaves(config: ml_collections.ConfigDict, prefix: str = ""):
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, name + ".")
    else:
      yield name, value


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raise InputError naming the first key with an unusable value: a NaN or infinite number
  anywhere, a seed outside [0, 2**32), or a bad data.* / sampling.* value."""
  for name, value in _leaves(config):
    numbers = value if isinstance(value, (tuple, list)) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
      raise InputError(f"{name}={value!r}: not a finite number; give a finite value "
                       "(configs/default.py has the defaults).")
    if name.split(".")[-1] == "seed" and not (
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _SEED_LIMIT):
      raise InputError(f"{name}={value!r}: a seed is an integer in [0, 2**32).")
  dataset.check_data_config(config.data)
  sampling.check_sampling_config(config.sampling)
