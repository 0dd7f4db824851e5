"""Checkpoints: orbax managers, saving and restoring a state, and the score network's EMA
parameters of a training run, with the checks that name what does not fit.

Translation restores through this module alone, so it needs no optimizer, metrics or
TensorBoard code.
"""

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import serialization

from lmi_jax.errors import InputError
from lmi_jax.models import create_model, init_variables

CHECKPOINT_DIR = "checkpoints"  # The score model's checkpoints in a workdir.
CheckpointManager = ocp.CheckpointManager
# A shipped model folder (written by lmi_jax.pretrained): parameters, config, metadata.
PARAMS_FILE = "ema_params.msgpack"
CONFIG_FILE = "config.py"
META_FILE = "model.json"
# A shipped folder may hold, in this subfolder, a second model fine-tuned with training.cond_aug
# that lmi uses for sources of little structure (sampling.faint_below).
FAINT_DIR = "faint"
_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def manager(folder: str, max_to_keep: int = 1, create: bool = True) -> ocp.CheckpointManager:
  """orbax manager of the checkpoints in `folder` (made if `create`)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
  return ocp.CheckpointManager(os.path.abspath(folder), options=options)


def save(store: ocp.CheckpointManager, step: int, tree: Any) -> None:
  """Saves `tree` as host arrays, so a checkpoint restores on any device."""
  store.save(int(step), args=ocp.args.StandardSave(jax.device_get(tree)))


def restore_latest(store: ocp.CheckpointManager, template: Any) -> Any:
  """The latest checkpoint in the structure of `template`, or `template` itself if there is
  none. A checkpoint that does not fit the template is an InputError naming its folder."""
  step = store.latest_step()
  if step is None:
    return template
  logging.info("Resuming from the checkpoint of step %d", step)

  def unfit(why: str) -> InputError:
    return InputError(f"{store.directory}/{step}: does not fit this config or is damaged "
                      f"({why}); use the config it was trained with, or move the folder away "
                      "to start afresh.")
  try:
    restored = store.restore(step, args=ocp.args.StandardRestore(jax.device_get(template)))
  except (ValueError, KeyError, TypeError) as error:
    raise unfit(type(error).__name__) from error
  # Orbax restores the saved shapes whatever the template's: another network size would
  # otherwise fail later, inside the compiled step, with a traceback.
  if not same_shapes(restored, template):
    raise unfit("other array shapes")
  return restored


def same_shapes(tree: Any, reference: Any) -> bool:
  """Whether two pytrees have one structure and equal shapes leaf by leaf (arrays or
  jax.ShapeDtypeStruct)."""
  return (jax.tree.structure(tree) == jax.tree.structure(reference) and
          jax.tree.map(np.shape, tree) == jax.tree.map(np.shape, reference))


def latest_step(folder: str) -> int | None:
  """Step of the latest checkpoint in `folder`, None when it holds none (nothing is created)."""
  if not os.path.isdir(folder):
    return None
  return manager(folder, create=False).latest_step()


def score_folder(workdir: str) -> str:
  """The folder of the score model's checkpoints in a workdir."""
  return os.path.join(workdir, CHECKPOINT_DIR)


def check_params_fit(config: ml_collections.ConfigDict, params: Any, where: str,
                     hint: str) -> None:
  """Raise InputError naming `where` (and ending with `hint`) unless `params` has the tree
  and shapes of the parameters of the score network that `config` describes."""
  in_channels = 1 + len(config.lmi.features)
  expected = jax.eval_shape(
      lambda key: init_variables(create_model(config.model), key, config.data.image_size,
                                 in_channels), jax.random.key(0))["params"]
  if not same_shapes(params, expected):
    raise InputError(f"{where} does not fit the network of this config (model.*, "
                     f"lmi.features or data.image_size differ from training); {hint}.")


def restore_ema_params(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict, int]:
  """The EMA parameters of the latest checkpoint in workdir, and its step.

  Returns:
    ({"params": EMA parameters as host arrays}, step): the variables to call the network
    with, `score_fn(model, variables, ...)`, model = `create_model(config.model)`.
  """
  folder = score_folder(workdir)
  step = latest_step(folder)
  if step is None:
    raise InputError(f"{folder} holds no checkpoint; train first (--mode=train with this "
                     "--workdir) or point --workdir at a trained run.")
  try:
    params = manager(folder, create=False).restore(
        step, args=ocp.args.StandardRestore())["ema_params"]
  except (ValueError, KeyError, TypeError, OSError) as error:
    raise InputError(f"{folder}/{step}: the checkpoint cannot be read ({type(error).__name__}); "
                     "it is damaged: delete that step's folder to use the one before, or "
                     "retrain.") from error
  check_params_fit(config, params, where=f"{folder}/{step}",
                   hint="use the config the run was trained with, "
                        f"{os.path.join(workdir, 'config.json')}")
  return {"params": params}, step


def read_meta(folder: str) -> dict:
  """The model.json of a shipped model folder."""
  path = os.path.join(folder, META_FILE)
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as exc:
    raise InputError(f"{path}: missing or not JSON ({exc}); export the model again "
                     "(python -m lmi_jax.pretrained).") from exc


def load_shipped(config: ml_collections.ConfigDict, folder: str,
                 key: str = "sampling.pretrained") -> tuple[dict, int]:
  """The shipped EMA parameters in `folder` as ({"params": ...}, step).

  Raises InputError when the folder is missing or the parameters do not fit the network
  of `config` (use the config.py stored beside them); `key` is the config key that named it.
  """
  path = os.path.join(folder, PARAMS_FILE)
  if not os.path.isfile(path):
    raise InputError(f"{key} = {folder!r}: {path} does not exist; train a model "
                     f"(--mode=train) or point {key} at an exported folder.")
  try:
    with open(path, "rb") as f:
      params = jax.tree.map(lambda p: np.asarray(p, np.float32),
                            serialization.msgpack_restore(f.read()))
    step = int(read_meta(folder)["step"])
  except InputError:
    raise
  except Exception as error:  # msgpack and numpy raise many types for damaged bytes.
    raise InputError(f"{path}: damaged or not a model file ({type(error).__name__}); export or "
                     "download the model again.") from error
  check_params_fit(config, params, where=path,
                   hint=f"use the config it was trained with, {os.path.join(folder, CONFIG_FILE)}")
  return {"params": params}, step


def pretrained_folder(config: ml_collections.ConfigDict) -> str | None:
  """The folder `sampling.pretrained` names (relative to the working directory or to the
  repository), or None when it names none."""
  return resolve_folder(config.sampling.pretrained) or None


def resolve_folder(folder: str) -> str:
  """A model folder as given when it exists from the working directory (or is absolute or
  ""), else relative to the repository, where the shipped models are."""
  if folder and not os.path.isabs(folder) and not os.path.isdir(folder):
    return os.path.join(_REPOSITORY, folder)
  return folder


def shipped_folder(config: ml_collections.ConfigDict, workdir: str) -> str | None:
  """The shipped model folder used instead of `workdir`'s checkpoints, or None.

  The shipped model (`pretrained_folder`) is used only when the workdir holds no
  checkpoint of its own.
  """
  if latest_step(score_folder(workdir)) is not None:
    return None
  return pretrained_folder(config)


def load_faint(config: ml_collections.ConfigDict, folder: str | None) -> tuple[dict, int, str] | None:
  """(variables, step, folder) of the faint-contrast model in the shipped model `folder`
  (subfolder `FAINT_DIR`), or None when `folder` is None or holds none."""
  faint = None if folder is None else os.path.join(folder, FAINT_DIR)
  if faint is None or not os.path.isdir(faint):
    return None
  variables, step = load_shipped(config, faint, key=f"sampling.pretrained (its {FAINT_DIR}/)")
  return variables, step, faint


def restore_model(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict, int]:
  """EMA parameters of the latest checkpoint in `workdir`, else of the shipped model
  (`shipped_folder`)."""
  folder = shipped_folder(config, workdir)
  if folder is None:
    return restore_ema_params(config, workdir)
  variables, step = load_shipped(config, folder)
  logging.warning("%s holds no checkpoint: using the shipped model %s (training step %d).",
                  workdir, folder, step)
  return variables, step
