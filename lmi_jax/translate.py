"""The two modes that run the translation methods (`lmi_jax.methods`) on a data set's split:
`--mode=sample` without --input (the split translated by lmi, written with a picture) and
`--mode=eval` (every method of eval.methods scored against the target, with reports and
the comparison figure); and the context both build: the settings and the restored model.
Scans given with --input go through `lmi_jax.scans`.
"""

import dataclasses
import os

import ml_collections
import numpy as np
from absl import logging

from lmi_jax import (checkpoints, evaluation, figures, files, lmi, methods, model_store,
                     multiscale, segmentation, structure)
from lmi_jax.data import load_dataset
from lmi_jax.errors import InputError
from lmi_jax.models import create_model
from lmi_jax.sde import sde_from_config


def make_context(config: ml_collections.ConfigDict, workdir: str,
                 train_target: np.ndarray | None, with_model: bool = True) -> methods.Context:
  """The shared settings and, unless `with_model` is False, the restored model (`load_model`).
  `train_target` (N, H, W, 1) gives histmatch its reference; None leaves histmatch without."""
  rng = np.random.default_rng(int(config.seed))
  pooled = np.zeros((0,), np.float32) if train_target is None else train_target.reshape(-1)
  # A sample of the pooled histogram is as good a reference as all of it, and cheaper.
  reference = rng.choice(pooled, size=min(pooled.size, 200_000), replace=False)
  ctx = methods.Context(model=None, variables={}, sde=None, lmi_cfg=None, config=config,
                        target_reference=reference)
  if with_model:
    return load_model(ctx, config, workdir)
  return dataclasses.replace(ctx, sde=sde_from_config(config.sde), lmi_cfg=lmi.from_config(config.lmi))


def load_model(ctx: methods.Context, config: ml_collections.ConfigDict, workdir: str) -> methods.Context:
  """`ctx` with the model of `config` restored from `workdir` (`restore_model`), and the
  SDE and LMI settings of `config`; the histogram reference is kept."""
  variables, step = checkpoints.restore_model(config, workdir)
  logging.info("Using EMA parameters of training step %d.", step)
  shipped = checkpoints.shipped_folder(config, workdir)
  folder = shipped or checkpoints.score_folder(workdir)
  faint = checkpoints.load_faint(config, shipped)
  ctx = dataclasses.replace(ctx, model=create_model(config.model), variables=variables,
                            sde=sde_from_config(config.sde), lmi_cfg=lmi.from_config(config.lmi),
                            config=config, step=step, model_folder=folder,
                            faint=None if faint is None else model_store.FaintModel(*faint))
  return multiscale.load_lowres(ctx)


def select_split(data: dict, name: str, max_slices: int) -> dict[str, np.ndarray]:
  """The arrays of split `name` of `load_dataset`'s result, cut to max_slices (0: all)."""
  if name not in data:
    raise InputError(f"eval.split = {name!r}: the dataset has splits {sorted(data)}.")
  split = data[name]
  if max_slices > 0:
    split = {k: v[:max_slices] for k, v in split.items()}
  return split


def source_structure(config: ml_collections.ConfigDict, source: np.ndarray,
                     name: str) -> tuple[float, dict]:
  """`methods.stack_structure_score` of (N, H, W, 1) source slices, with the warning of
  `structure.check_structure` logged when it is too little for a translation: the score
  (for `Context.structure_score`) and the record written beside the outputs."""
  score = methods.stack_structure_score(config, source)
  warning = structure.check_structure(score, name=name)
  if warning:
    logging.warning(warning)
  return score, {"structure_score": None if not np.isfinite(score) else round(float(score), 3),
                 "structure_threshold": structure.THRESHOLD, "structure_warning": warning}


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`--mode=sample` without --input: translates the `eval.split` of the data set with `lmi`,
  as `--mode=eval` does (scans given with --input go through `lmi_jax.scans`).

  Returns the path of the translation written: WORKDIR/samples/<split>.npz (with a .png beside it).
  """
  out_dir = os.path.join(workdir, "samples")
  data = load_dataset(config, workdir)
  ctx = make_context(config, workdir, data["train"]["target"])
  split = select_split(data, config.eval.split, int(config.eval.max_slices))
  # As eval's lmi column: its noise stream and the source's brain.
  translated = methods.run_methods(ctx, ("lmi",), split["source"])[0]["lmi"]
  base = os.path.join(out_dir, config.eval.split)
  files.save_npz(base + ".npz", source=split["source"], translation=translated,
                             target=split["target"])
  figures.plot_rows({"source": split["source"], "translation": translated,
                        "target": split["target"]}, base + ".png")
  logging.info("Wrote %s.npz and %s.png (%d slices).", base, base, len(translated))
  return base + ".npz"


def prepare_split(config: ml_collections.ConfigDict, workdir: str, names: tuple[str, ...],
                  data: dict | None = None
                  ) -> tuple[dict[str, np.ndarray], segmentation.Segmenters, methods.Context]:
  """What scoring the methods `names` on `eval.split` needs: the split's arrays, the K-means (both
  protocols) fitted on target training slices, and the context (the model restored only if a method uses it).
  `data` is `load_dataset`'s result for callers that hold it; None loads it.
  """
  if data is None:
    data = load_dataset(config, workdir)
  split = select_split(data, config.eval.split, int(config.eval.max_slices))
  train_target = data["train"]["target"]
  segmenters = segmentation.fit_segmenters(config, train_target)
  needs_model = any(m in ("lmi", "sdedit") for m in names)
  ctx = make_context(config, workdir, train_target, with_model=needs_model)
  ctx = dataclasses.replace(ctx, segmenter=segmenters.tissue, volumes=split.get("subject"))
  return split, segmenters, model_store.load_baselines(ctx, config, workdir, names)


def score_split(config: ml_collections.ConfigDict, outputs: dict[str, np.ndarray],
                split: dict[str, np.ndarray], segmenters: segmentation.Segmenters) -> dict:
  """`evaluation.evaluate_methods` on a split, with ground-truth Dice where labels fit.

  Skull-stripped data (data.mask="nonzero") are scored inside the target's brain; a split with
  "exclude" masks (data.exclude_glob) is scored once more outside them, in report["regions"].
  """
  labels = split.get("labels")
  if labels is not None and labels.max() != int(config.eval.kmeans_clusters):
    labels = None  # Ground-truth classes only compare with K-means when the counts match.
  brain = methods.brain_region(config, split["target"])
  segmenter = segmenters.tissue
  data_range = float(config.eval.data_range)
  best_named = [m for m in outputs if m in methods.BEST_NAMING]
  report = evaluation.evaluate_methods(outputs, split["target"], segmenter, labels=labels,
                                       data_range=data_range, paper_segmenter=segmenters.paper,
                                       mask=brain, best_named=best_named,
                                       volumes=split.get("subject"))
  if "exclude" in split:
    region = segmentation.foreground_mask(segmenter, split["target"]) if brain is None else brain
    report["regions"] = {"outside_exclude": evaluation.evaluate_methods(
        outputs, split["target"], segmenter, labels=labels, mask=region & ~split["exclude"],
        data_range=data_range, best_named=best_named, volumes=split.get("subject"))}
  report["split"] = config.eval.split
  report["not_zero_shot"] = [m for m in outputs if m in methods.NOT_ZERO_SHOT]
  return report


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`--mode=eval`: every method of `eval.methods` on `eval.split`, against the target.

  K-means is fitted on target training slices only; writes WORKDIR/eval/report.{json,md,csv}
  and comparison.png, and returns the report.
  """
  names = methods.check_methods(config.eval.methods)
  split, segmenters, ctx = prepare_split(config, workdir, names)
  score, record = source_structure(config, split["source"],
                                   f"{config.eval.split} split ({config.data.source})")
  ctx = dataclasses.replace(ctx, structure_score=score)
  outputs, _ = methods.run_methods(ctx, names, split["source"])
  report = score_split(config, outputs, split, segmenters)
  report["structure"] = record
  chosen = methods.lmi_model(ctx, split["source"]) if "lmi" in names else ctx
  if chosen is not ctx:
    report["structure"]["faint_model"] = chosen.model_folder
  out_dir = os.path.join(workdir, "eval")
  evaluation.write_report(report, out_dir)
  brain = methods.brain_region(config, split["target"])
  # Skull-stripped splits start and end with small slices: show the one with the most brain.
  index = 0 if brain is None else int(np.argmax(brain.sum((1, 2))))
  figures.plot_comparison(split["target"], split["source"], outputs, segmenters.tissue,
                             os.path.join(out_dir, "comparison.png"), index=index, mask=brain)
  logging.info("Wrote %s/report.{json,md,csv} and comparison.png.", out_dir)
  return report
