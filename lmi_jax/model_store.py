"""What a trained run or a shipped model folder holds besides the score model: the trained
baselines' parameters and the K-means that segments the model's translations."""

import dataclasses
import os
from typing import TYPE_CHECKING

import ml_collections
from absl import logging

from lmi_jax import checkpoints, segmentation
from lmi_jax.baselines import BASELINES, common as baseline_files
from lmi_jax.data import load_dataset
from lmi_jax.errors import InputError

if TYPE_CHECKING:
  from lmi_jax.methods import Context


@dataclasses.dataclass(frozen=True)
class FaintModel:
  """A model fine-tuned on LMI maps of unfamiliar contrasts (training.cond_aug), which lmi
  uses instead of the main one for sources of structure score below sampling.faint_below."""
  variables: dict
  step: int
  folder: str


def baseline_path(config: ml_collections.ConfigDict, workdir: str, name: str) -> str:
  """The parameters of baseline `name`: WORKDIR/baselines/<name>.msgpack when it was trained
  there, else <name>.msgpack in the shipped model folder (`sampling.pretrained`)."""
  own, _ = baseline_files.export_paths(workdir, name)
  if os.path.isfile(own):
    return own
  folder = checkpoints.pretrained_folder(config)
  shipped = os.path.join(folder, f"{name}.msgpack") if folder else None
  if shipped and os.path.isfile(shipped):
    return shipped
  raise InputError(f"eval.methods: {name} has no trained parameters ({own}"
                   f"{' or ' + shipped if shipped else ''} does not exist); train it with "
                   f"--mode=train --config.training.method={name} and the same --workdir.")


def load_baselines(ctx: "Context", config: ml_collections.ConfigDict, workdir: str,
                   methods: tuple[str, ...]) -> "Context":
  """`ctx` with the parameters of every trained baseline among `methods`."""
  params = {name: BASELINES[name].load(config, baseline_path(config, workdir, name))
            for name in methods if name in BASELINES}
  return dataclasses.replace(ctx, baselines={**ctx.baselines, **params})


SEGMENTER_FILE = "segmenter.json"


def stored_segmenter(config: ml_collections.ConfigDict, workdir: str) -> segmentation.KMeansSegmenter:
  """The K-means that goes with the model: stored in the shipped model's model.json, or in
  WORKDIR/segmenter.json; fitted on the target training slices (and saved there) if absent."""
  folder = checkpoints.shipped_folder(config, workdir)
  if folder is not None:
    stored = checkpoints.read_meta(folder).get("segmenter")
    if stored:
      return segmentation.KMeansSegmenter(tuple(stored["centroids"]), stored["background_threshold"])
  path = os.path.join(workdir, SEGMENTER_FILE)
  if os.path.isfile(path):
    return segmentation.read_segmenter(path)
  logging.info("No stored K-means for this model: fitting it on the target training slices.")
  segmenter = segmentation.fit_segmenter(config, load_dataset(config, workdir)["train"]["target"])
  segmentation.write_segmenter(segmenter, path)
  return segmenter
