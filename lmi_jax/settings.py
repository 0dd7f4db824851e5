"""Every section of a config checked once, before any work: the step between `main` and a mode.

`check_config(config, mode)` runs each section's own check (they live beside the code that
reads the section: `dataset.check_data_config`, `sampling.check_sampling_config`,
`lmi.from_config`, `sde_from_config`, `create_model`, each baseline's `check_config`) for the
sections the mode uses, so that a bad key ends the run at once with a message that names it,
not minutes later; and adds what no section sees alone: every number is finite, every seed
fits a PRNG seed, crops suit the data and the network. The training section's own checks
live here too (`check_training_config`, `check_crop_config`, and `check_global_batch`, which
train runs once the devices of every host are known).
"""

import math
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections

from lmi_jax import lmi, losses, methods, sampling
from lmi_jax.baselines import BASELINES
from lmi_jax.data import dataset
from lmi_jax.models import create_model, feeding_of
from lmi_jax.sde import sde_from_config
from lmi_jax.errors import InputError, key_checker

# jax.random.PRNGKey and numpy's generators take seeds in [0, 2**32); fold_in takes 32 bits.
_SEED_LIMIT = 2**32


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted name, value) of every key of a config, depth first."""
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from leaves(value, name + ".")
    else:
      yield name, value


def flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """config as flat dotted names -> int, float, str or bool (tuples as strings)."""
  return {name: value if isinstance(value, (int, float, str, bool)) else str(value)
          for name, value in leaves(config)}


def check_config(config: ml_collections.ConfigDict, mode: str = "sample") -> None:
  """Raise InputError naming the first key with an unusable value for `mode` (train, sample,
  eval): a NaN or infinite number anywhere, a seed outside [0, 2**32), a bad data.*,
  sampling.*, sde.*, lmi.* or model.* value; for train the training section (and the baseline
  section `training.method` names), for eval `eval.methods` and the baseline sections they
  name."""
  for name, value in leaves(config):
    numbers = value if isinstance(value, (tuple, list)) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
      raise InputError(f"{name}={value!r}: not a finite number; give a finite value "
                       "(configs/default.py has the defaults).")
    if name.split(".")[-1] == "seed" and not (
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _SEED_LIMIT):
      raise InputError(f"{name}={value!r}: a seed is an integer in [0, 2**32).")
  dataset.check_data_config(config.data)
  sampling.check_sampling_config(config.sampling)
  sde_from_config(config.sde)
  lmi.from_config(config.lmi)
  create_model(config.model)
  feeding_of(config.model)
  if mode == "train":
    check_training_config(config.training)
    check_crop_config(config)
    used = (check_training_method(config.training),)
  elif mode == "eval":
    used = methods.check_methods(config.eval.methods)
  else:
    used = ()
  for name in used:
    if name in BASELINES:
      BASELINES[name].check_config(config)


def check_training_method(training: ml_collections.ConfigDict) -> str:
  """training.method, which must be "score" or a key of `BASELINES` (InputError otherwise)."""
  method = str(training.method)
  if method != "score" and method not in BASELINES:
    raise InputError(f"training.method={method!r}: choose score or one of {sorted(BASELINES)}.")
  return method


def check_global_batch(training: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raise InputError unless training.batch_size divides over `num_devices` devices (known
  only once jax.distributed has started, so train checks it then)."""
  require = key_checker("training", training)
  require(training.batch_size % num_devices == 0, "batch_size",
          f"the global batch must divide evenly over the {num_devices} devices "
          f"({jax.process_count()} host(s)); use a multiple of {num_devices}")


def check_training_config(training: ml_collections.ConfigDict) -> None:
  """Raise InputError naming the first `training.*` key with an unusable value."""
  require = key_checker("training", training)
  require(training.batch_size > 0, "batch_size", "use a positive global batch")
  require(training.num_steps >= 0, "num_steps", "use a count >= 0")
  require(training.lr > 0, "lr", "use a positive learning rate")
  require(training.warmup_steps >= 0, "warmup_steps", "use a count >= 0")
  require(training.grad_clip >= 0, "grad_clip", "use a norm >= 0 (0: no clipping)")
  require(0.0 <= training.ema_decay < 1.0, "ema_decay", "use a decay in [0, 1)")
  require(0.0 < training.eps < 1.0, "eps", "use a time in (0, 1)")
  require(training.weighting in losses.WEIGHTINGS, "weighting", f"use one of {losses.WEIGHTINGS}")
  require(training.edm_p_std > 0, "edm_p_std", "use a positive std")
  require(0.0 <= training.p_uncond <= 1.0, "p_uncond", "use a probability in [0, 1]")
  require(0.0 <= training.cond_aug <= 1.0, "cond_aug", "use a probability in [0, 1]")
  require(training.cond_aug_knots >= 2, "cond_aug_knots", "use a count >= 2")
  require(0.0 < training.cond_aug_noise <= 1.0, "cond_aug_noise", "use a std in (0, 1]")
  for key in ("log_every", "checkpoint_every", "max_to_keep", "prefetch", "num_samples"):
    require(training[key] >= 1, key, "use a count >= 1")
  for key in ("sample_every", "sample_steps"):
    require(training[key] >= 0, key, "use a count >= 0")
  require(training.time_limit_min >= 0, "time_limit_min", "use minutes >= 0 (0: no limit)")
  require(training.crop_size >= 0, "crop_size", "use a size >= 0 (0: whole slices)")


def check_crop_config(config: ml_collections.ConfigDict) -> None:
  """Raise InputError when training.crop_size does not suit the data or the model: a model
  trained on crops runs on whole slices, which only a fully convolutional one can."""
  crop = config.training.crop_size
  if not crop:
    return
  if crop > config.data.image_size:
    raise InputError(f"training.crop_size={crop} exceeds data.image_size={config.data.image_size}; "
                     "use a smaller crop.")
  if config.model.get("mid_attention", False) or tuple(config.model.get("attn_resolutions", ())):
    raise InputError(f"training.crop_size={crop} trains on crops but model.mid_attention / "
                     "model.attn_resolutions add self-attention, whose reach would differ on whole "
                     "slices; set model.mid_attention=False and model.attn_resolutions=().")
