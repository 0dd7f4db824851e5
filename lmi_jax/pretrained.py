"""Shipped models: EMA parameters exported from a training run into a small folder.

A folder holds `ema_params.msgpack` (Flax msgpack of the parameters, float32 or float16),
`config.py` (the config that trained them, loadable with --config) and `model.json` (step,
parameter count, storage type, where it came from). `--mode=sample` and `--mode=eval` fall
back to the folder named by `sampling.pretrained` when their workdir holds no checkpoint of
its own.

  python -m lmi_jax.pretrained --config=configs/phantom_pd2t1_cpu.py \
      --workdir=workdir/phantom_cpu --out=checkpoints/phantom_pd2t1
"""

import dataclasses
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import serialization
from ml_collections import config_flags

from lmi_jax import checkpoints, files, segmentation
from lmi_jax.data import load_dataset
from lmi_jax.checkpoints import CONFIG_FILE, META_FILE, PARAMS_FILE
from lmi_jax.errors import InputError


STORAGE_DTYPES = ("float32", "float16")


def write_model(params: dict, config_path: str, meta: dict, out_dir: str,
                dtype: str = "float32") -> dict:
  """Writes `params` (stored as `dtype`), the config file and `meta` into `out_dir`.

  float16 halves the file (a 9.9M-parameter model: 40 -> 20 MB) and moves weights by at
  most 2^-11 of their size; `load` gives float32 back either way. The folder is assembled
  next to its destination and renamed into place, so an interrupted write leaves no
  half-written model behind; other files already in `out_dir` (the baselines shipped beside
  the score model) are kept. Returns the metadata written, with the parameter count and dtype.
  """
  if dtype not in STORAGE_DTYPES:
    raise InputError(f"dtype={dtype!r}: use one of {', '.join(STORAGE_DTYPES)}.")
  params = jax.tree.map(lambda p: np.asarray(p, dtype), params)
  meta = {**meta, "parameters": int(sum(p.size for p in jax.tree.leaves(params))),
          "config": os.path.basename(config_path), "dtype": dtype}
  files.prepare_dir(os.path.dirname(os.path.abspath(out_dir)))
  staging = files.temporary_sibling(out_dir)
  os.mkdir(staging)
  try:
    with open(os.path.join(staging, PARAMS_FILE), "wb") as f:
      f.write(serialization.msgpack_serialize(params))
    shutil.copyfile(config_path, os.path.join(staging, CONFIG_FILE))
    with open(os.path.join(staging, META_FILE), "w") as f:
      json.dump(meta, f, indent=2)
    if os.path.isdir(out_dir):
      for name in sorted(set(os.listdir(out_dir)) - {PARAMS_FILE, CONFIG_FILE, META_FILE}):
        source = os.path.join(out_dir, name)
        copy = shutil.copytree if os.path.isdir(source) else shutil.copy2
        copy(source, os.path.join(staging, name))
      shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
  finally:
    if os.path.isdir(staging):
      shutil.rmtree(staging)
  return meta


def export(config: ml_collections.ConfigDict, config_path: str, workdir: str,
           out_dir: str, dtype: str = "float32") -> dict:
  """Writes the latest EMA parameters of `workdir` and their config into `out_dir`
  (`write_model`), with the K-means fitted on the target training slices (`segmenter`), which
  `--mode=sample --input=` segments with. A run fine-tuned from a shipped model
  (`training.init_from`) records that model's folder and training step under "init_from", as
  "step" counts this run's steps only. Returns the metadata."""
  variables, step = checkpoints.restore_ema_params(config, workdir)
  segmenter = segmentation.fit_segmenter(config, load_dataset(config, workdir)["train"]["target"])
  meta = {"step": int(step), "source_workdir": os.path.relpath(workdir),
          "segmenter": dataclasses.asdict(segmenter)}
  if config.training.init_from:
    start = checkpoints.resolve_folder(config.training.init_from)
    meta["init_from"] = {"folder": config.training.init_from,
                         "step": int(checkpoints.read_meta(start)["step"])}
  return write_model(variables["params"], config_path, meta, out_dir, dtype)


def main(argv: list[str]) -> None:
  del argv
  config_path = config_flags.get_config_filename(flags.FLAGS["config"])
  meta = export(flags.FLAGS.config, config_path, flags.FLAGS.workdir, flags.FLAGS.out,
                flags.FLAGS.dtype)
  print(f"Exported step {meta['step']} ({meta['parameters']} parameters, {meta['dtype']}) "
        f"to {flags.FLAGS.out}")


if __name__ == "__main__":
  # Flags are defined here, not on import: main.py imports this module and has its own.
  config_flags.DEFINE_config_file("config", None, "Config the run was trained with.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Training run to export from.")
  flags.DEFINE_string("out", None, "Folder to write the shipped model into.")
  flags.DEFINE_enum("dtype", "float32", list(STORAGE_DTYPES),
                    "Storage type of the parameters (float16: half the size; loads as float32).")
  flags.mark_flags_as_required(["config", "workdir", "out"])
  app.run(main)
