"""Translation methods and the two modes behind them: `--mode=sample` and `--mode=eval`.

A method turns source-contrast slices (N, H, W, 1) in [0, 1] into target-contrast slices of
the same shape. They share one signature, `method(context, source, key)`, and one dict,
`METHODS`; adding a baseline touches that dict and nothing else.

- lmi: the reverse SDE from the prior, the score network fed LMI(G; G, x_t) recomputed
  from the current sample at every step (the paper's Eq. 3, `models.lmi_score`); the
  reference-only channels of G are computed once; `sampling.guidance_scale` mixes in the
  unconditional score. A source stack of little structure is translated by the shipped
  folder's faint-contrast model when there is one (`lmi_model`).
- sdedit: the same model without conditioning (null features), started from the source
  perturbed to t0 (Meng et al.).
- histmatch: the source's histogram matched to the pooled target training histogram.
- identity: the source as it is.
- source_kmeans: no translation, the competitor a translation must beat: each source volume
  segmented by a K-means of its own brain, the clusters named by the source contrast's tissue
  order (`data.source_order`), drawn at the target K-means' centroids so that scoring
  segments it back to those names. source_kmeans_best: the same clusters named by the
  renaming that maximises Dice against the true target (`BEST_NAMING`, an upper bound).
- cyclegan, stylegan, supervised: the trained baselines of `lmi_jax.baselines` (few-shot
  CycleGAN, StyleGAN2-ADA inversion, and the supervised ceiling, which is not zero-shot),
  their parameters from WORKDIR/baselines/<name>.msgpack or the shipped model folder.
"""

import dataclasses
import functools
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import linen as nn
from skimage import exposure

from lmi_jax import (checkpoints, evaluation, figures, files, inference, lmi, masks,
                     model_store, multiscale, reference_map, sampling, segmentation, structure)
from lmi_jax.baselines import BASELINES
from lmi_jax.data import load_dataset
from lmi_jax.errors import InputError
from lmi_jax.models import create_model, lmi_score, unconditional_score
from lmi_jax.sde import SDE, sde_from_config

@dataclasses.dataclass(frozen=True)
class Context:
  """Everything a method needs besides its input: the trained model and the settings."""
  model: nn.Module
  variables: dict
  sde: SDE
  lmi_cfg: lmi.LMIConfig
  config: ml_collections.ConfigDict
  target_reference: np.ndarray  # (M,) pooled target training intensities, for histmatch
  step: int = 0  # Training step of the parameters.
  model_folder: str = ""  # Where the parameters came from: a shipped folder or a workdir's checkpoints.
  faint: model_store.FaintModel | None = None  # lmi's model for sources of little structure (`lmi_model`).
  progress: sampling.ProgressFn | None = None  # Host callback of the sampler's steps.
  baselines: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # name -> parameters.
  # Compiled samplers kept across calls (method name -> (pmapped function, its progress)), with
  # batches of a fixed size so that several volumes compile once; None: equal-size batches,
  # compiled per call (eval and split sampling, whose documented numbers use them).
  runners: dict | None = None
  segmenter: segmentation.KMeansSegmenter | None = None  # The target K-means, whose centroids source_kmeans draws its classes at.
  volumes: np.ndarray | None = None  # (N,) volume id of each source slice: source_kmeans clusters volume by volume; None: one volume.
  lowres: "Context | None" = None  # The low-resolution model lmi starts from (sampling.lowres_model; lmi_jax/multiscale.py).


def lmi_batch(ctx: Context, source: jax.Array, key: jax.Array,
               trajectory_steps: tuple[int, ...] = ()) -> tuple[jax.Array, jax.Array]:
  """LMI-guided translation of one (B, H, W, 1) batch by `sampling.method` (jax, inside the
  jitted / pmapped call): the sample, and
  (method em only) the states after the given steps, (len(trajectory_steps), B, H, W, 1)."""
  cfg = ctx.config.sampling
  score = lmi_score(ctx.model, ctx.variables, ctx.sde, ctx.lmi_cfg, source,
                    scale_by_sigma=ctx.config.model.scale_by_sigma,
                    guidance_scale=float(cfg.guidance_scale))
  if not trajectory_steps:
    x = sampling.sample(score, ctx.sde, source.shape, key, cfg, progress=ctx.progress)
    return x, jnp.zeros((0, *x.shape), x.dtype)
  if cfg.method != "em":
    raise InputError(f"sampling.method={cfg.method!r}: a trajectory is kept by 'em' only.")
  return sampling.em_sampler(
      score, ctx.sde, source.shape, key, int(cfg.num_steps), eps=float(cfg.eps),
      corrector_steps=int(cfg.corrector_steps), snr=float(cfg.snr),
      denoise=bool(cfg.denoise), trajectory_steps=trajectory_steps, progress=ctx.progress)


def sdedit_batch(ctx: Context, source: jax.Array, key: jax.Array) -> jax.Array:
  """SDEdit of one (B, H, W, 1) batch: the source perturbed to t0, then the unconditional
  sampler down to 0."""
  cfg = ctx.config.sampling
  score = unconditional_score(ctx.model, ctx.variables, ctx.sde, len(ctx.lmi_cfg.features),
                              scale_by_sigma=ctx.config.model.scale_by_sigma)
  return sampling.sample(score, ctx.sde, source.shape, key, cfg, x_init=source,
                         t_start=float(cfg.sdedit_t0), progress=ctx.progress)


def lmi_reference(ctx: Context, source: np.ndarray) -> np.ndarray:
  """(N, H, W, 1) sources -> the LMI references that condition `lmi_batch`
  (`lmi.reference_map`, e.g. bias-field flattening and a brain stretch; lmi_jax/reference_map.py)."""
  cfg = ctx.config.lmi
  return reference_map.map_reference(source, str(cfg.reference_map), float(cfg.flatten_sigma))


def lmi_model(ctx: Context, source: np.ndarray) -> Context:
  """`ctx` with the model lmi translates the (N, H, W, 1) source stack with: its faint-contrast
  model (`FaintModel`), and sampling.faint_reference_map unless it is "", when it has one and
  the stack's structure score (`stack_structure_score`) is below sampling.faint_below, else
  `ctx` itself.

  On the phantom's validation sweep the faint model (cond_aug 0.5) gains on the variants
  scoring below 4 and loses 0.02 at today's PD (5.3) against an equally fine-tuned model;
  flat_equalize gains for it where the contrast is faint and loses with noise:
  docs/results.md, "Faint contrast".
  """
  threshold = float(ctx.config.sampling.faint_below)
  if ctx.faint is None or threshold <= 0:
    return ctx
  score = stack_structure_score(ctx.config, source)
  if not score < threshold:
    return ctx
  config = ctx.config.copy_and_resolve_references()
  config.lmi.reference_map = str(config.sampling.faint_reference_map or config.lmi.reference_map)
  logging.info("Structure score %.2f < sampling.faint_below = %g: lmi uses the faint-contrast "
               "model %s (training step %d) and reference map %s.", score, threshold,
               ctx.faint.folder, ctx.faint.step, config.lmi.reference_map)
  return dataclasses.replace(ctx, variables=ctx.faint.variables, step=ctx.faint.step,
                             model_folder=ctx.faint.folder, faint=None, config=config)


def translate_lmi(ctx: Context, source: np.ndarray, key: jax.Array) -> np.ndarray:
  """lmi of (N, H, W, 1) sources; with a low-resolution model (`ctx.lowres`), that model's
  translation of the shrunk sources made full resolution (`multiscale.refine`)."""
  if ctx.lowres is not None:
    start_key, key = jax.random.split(key)
    start = multiscale.lowres_start(ctx, source, start_key, translate_lmi)
    return multiscale.refine(ctx, lmi_reference(ctx, source), start, key)
  ctx = lmi_model(ctx, source)
  run = lambda reference: inference.run_batched(lambda c, s, k: lmi_batch(c, s, k)[0], ctx,
                                                reference, key, "lmi")
  if ctx.config.data.pixel_mm > 0:
    return multiscale.in_content_box(ctx, lmi_reference(ctx, source), run)
  return run(lmi_reference(ctx, source))


def translate_sdedit(ctx: Context, source: np.ndarray, key: jax.Array) -> np.ndarray:
  return inference.run_batched(sdedit_batch, ctx, source, key, "sdedit",
                     t_start=float(ctx.config.sampling.sdedit_t0))


def translate_histmatch(ctx: Context, source: np.ndarray, key: jax.Array) -> np.ndarray:
  del key
  if ctx.target_reference.size == 0:
    raise InputError("histmatch needs the target training slices (data.root); none were loaded.")
  reference = ctx.target_reference.reshape(1, -1)  # match_histograms wants equal ranks.
  matched = [exposure.match_histograms(s[..., 0], reference) for s in source]
  return np.clip(np.stack(matched)[..., None], 0.0, 1.0).astype(np.float32)


def translate_identity(ctx: Context, source: np.ndarray, key: jax.Array) -> np.ndarray:
  del ctx, key
  return np.asarray(source, np.float32)


def translate_baseline(name: str, ctx: Context, source: np.ndarray, key: jax.Array) -> np.ndarray:
  """The trained baseline `name` (a key of `BASELINES`) with its loaded parameters."""
  return BASELINES[name].translate(ctx.config, ctx.baselines[name], source, key)


def source_kmeans(ctx: Context, source: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
  """(N, H, W, 1) sources -> (N, H, W, 1) T1w-like images: each volume (`ctx.volumes`)
  segmented by `segmentation.segment_by_order` inside its brain, class c drawn at the target
  K-means' centroid c (`segmentation.labels_to_image`).

  The brain is the non-zero pixels of skull-stripped data (data.mask="nonzero"); other data
  have no brain mask here, so everything above eval.background_threshold is clustered, scalp
  and skull included, which makes this a weaker competitor there.
  """
  config = ctx.config
  if ctx.segmenter is None:
    raise InputError("source_kmeans needs the target K-means (Context.segmenter), which "
                     "prepare_split fits on the target training slices.")
  volumes = np.zeros(len(source), np.int32) if ctx.volumes is None else np.asarray(ctx.volumes)
  if volumes.shape != (len(source),):
    raise InputError(f"source_kmeans: {len(source)} source slices but volume ids of shape "
                     f"{volumes.shape} (Context.volumes).")
  brain = brain_region(config, source)
  brain = segmentation.foreground_mask(ctx.segmenter, source) if brain is None else brain
  labels = np.zeros(brain.shape, np.int32)
  # Each scan has its own gain and bias: one K-means over several would mix their classes.
  for volume in np.unique(volumes):
    at = volumes == volume
    labels[at] = segmentation.segment_by_order(
        source[at], brain[at], order, int(config.seed),
        max_pixels=int(config.eval.kmeans_max_pixels), n_init=int(config.eval.kmeans_n_init))
  return segmentation.labels_to_image(ctx.segmenter, labels)


def translate_source_kmeans(ctx: Context, source: np.ndarray, key: jax.Array) -> np.ndarray:
  """`source_kmeans` named by data.source_order; (N, H, W, 1) -> (N, H, W, 1)."""
  del key
  order = segmentation.check_source_order(ctx.config.data.source_order,
                                          int(ctx.config.eval.kmeans_clusters))
  return source_kmeans(ctx, source, order)


def translate_source_ranks(ctx: Context, source: np.ndarray, key: jax.Array) -> np.ndarray:
  """source_kmeans_best before scoring: the clusters named by rank, darkest first, so the
  renaming that scoring picks (`BEST_NAMING`) is itself the best source order."""
  del key
  return source_kmeans(ctx, source, tuple(range(1, int(ctx.config.eval.kmeans_clusters) + 1)))


METHODS = {
    "lmi": translate_lmi,
    "sdedit": translate_sdedit,
    "histmatch": translate_histmatch,
    "identity": translate_identity,
    "source_kmeans": translate_source_kmeans,
    "source_kmeans_best": translate_source_ranks,
    "cyclegan": functools.partial(translate_baseline, "cyclegan"),
    "stylegan": functools.partial(translate_baseline, "stylegan"),
    "supervised": functools.partial(translate_baseline, "supervised"),
}
# Each method's noise stream, folded into the sampling key by name so that a method's numbers
# do not depend on where it stands in eval.methods or on which mode runs it. The numbers are
# the positions of the documented tables' order (Table 1: lmi,sdedit,cyclegan,stylegan,
# histmatch,identity,supervised), so those tables keep their values.
STREAMS = {"lmi": 0, "sdedit": 1, "cyclegan": 2, "stylegan": 3, "histmatch": 4, "identity": 5,
           "supervised": 6, "source_kmeans": 7, "source_kmeans_best": 8}
# Methods that see paired source/target training data: reports mark them as not zero-shot.
NOT_ZERO_SHOT = ("supervised",)
# Methods whose classes scoring renames to fit the true target best (evaluation.best_naming).
BEST_NAMING = ("source_kmeans_best",)


def make_context(config: ml_collections.ConfigDict, workdir: str,
                 train_target: np.ndarray | None, with_model: bool = True) -> Context:
  """The shared settings and, unless `with_model` is False, the restored model (`load_model`).
  `train_target` (N, H, W, 1) gives histmatch its reference; None leaves histmatch without."""
  sampling.check_sampling_config(config.sampling)
  rng = np.random.default_rng(int(config.seed))
  pooled = np.zeros((0,), np.float32) if train_target is None else train_target.reshape(-1)
  # A sample of the pooled histogram is as good a reference as all of it, and cheaper.
  reference = rng.choice(pooled, size=min(pooled.size, 200_000), replace=False)
  ctx = Context(model=None, variables={}, sde=sde_from_config(config.sde),
                lmi_cfg=lmi.from_config(config.lmi), config=config, target_reference=reference)
  return load_model(ctx, config, workdir) if with_model else ctx


def load_model(ctx: Context, config: ml_collections.ConfigDict, workdir: str) -> Context:
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


def sampling_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The translation key: the root seed folded with `sampling.seed`."""
  return jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), int(config.sampling.seed))


def method_key(config: ml_collections.ConfigDict, name: str) -> jax.Array:
  """The key of method `name` (a key of `METHODS`): the sampling key folded with its stream."""
  return jax.random.fold_in(sampling_key(config), STREAMS[name])


def check_methods(names) -> tuple[str, ...]:
  unknown = [n for n in names if n not in METHODS]
  if unknown:
    raise InputError(f"eval.methods: unknown method {unknown[0]!r}; choose from {sorted(METHODS)}.")
  return tuple(names)


def select_split(data: dict, name: str, max_slices: int) -> dict[str, np.ndarray]:
  """The arrays of split `name` of `load_dataset`'s result, cut to max_slices (0: all)."""
  if name not in data:
    raise InputError(f"eval.split = {name!r}: the dataset has splits {sorted(data)}.")
  split = data[name]
  if max_slices > 0:
    split = {k: v[:max_slices] for k, v in split.items()}
  return split


def stack_structure_score(config: ml_collections.ConfigDict, source: np.ndarray) -> float:
  """How much tissue structure (N, H, W, 1) source slices carry: `structure.structure_score`
  inside their brain (the non-zero pixels of skull-stripped data, else `structure.brain_mask`)."""
  brain = brain_region(config, source)
  brain = structure.brain_mask(source) if brain is None else brain
  return structure.structure_score(source, brain)


def source_structure(config: ml_collections.ConfigDict, source: np.ndarray, name: str) -> dict:
  """`stack_structure_score` of (N, H, W, 1) source slices, with the warning of
  `structure.check_structure` logged when it is too little for a translation; the dict is
  recorded beside the outputs."""
  score = stack_structure_score(config, source)
  warning = structure.check_structure(score, name=name)
  if warning:
    logging.warning(warning)
  return {"structure_score": None if not np.isfinite(score) else round(float(score), 3),
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
  translated = run_methods(ctx, ("lmi",), split["source"])[0]["lmi"]
  base = os.path.join(out_dir, config.eval.split)
  files.save_npz(base + ".npz", source=split["source"], translation=translated,
                             target=split["target"])
  figures.plot_rows({"source": split["source"], "translation": translated,
                        "target": split["target"]}, base + ".png")
  logging.info("Wrote %s.npz and %s.png (%d slices).", base, base, len(translated))
  return base + ".npz"


def prepare_split(config: ml_collections.ConfigDict, workdir: str, methods: tuple[str, ...],
                  data: dict | None = None
                  ) -> tuple[dict[str, np.ndarray], segmentation.Segmenters, Context]:
  """What scoring `methods` on `eval.split` needs: the split's arrays, the K-means (both
  protocols) fitted on target training slices, and the context (the model restored only if a method uses it).
  `data` is `load_dataset`'s result for callers that hold it; None loads it.
  """
  if data is None:
    data = load_dataset(config, workdir)
  split = select_split(data, config.eval.split, int(config.eval.max_slices))
  train_target = data["train"]["target"]
  segmenters = segmentation.fit_segmenters(config, train_target)
  needs_model = any(m in ("lmi", "sdedit") for m in methods)
  ctx = make_context(config, workdir, train_target, with_model=needs_model)
  ctx = dataclasses.replace(ctx, segmenter=segmenters.tissue, volumes=split.get("subject"))
  return split, segmenters, model_store.load_baselines(ctx, config, workdir, methods)


def inside_source_brain(config: ml_collections.ConfigDict, source: np.ndarray,
                        translated: np.ndarray) -> np.ndarray:
  """For skull-stripped sources (data.mask="nonzero"), the (N, H, W, 1) translation zeroed
  outside the source's brain: the output has the input's background."""
  brain = brain_region(config, source)
  return translated if brain is None else translated * brain[..., None]


def run_methods(ctx: Context, methods: tuple[str, ...],
                source: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """Each method's translation of (N, H, W, 1) sources, and its wall time in seconds.

  Each method draws its noise from `method_key`, whatever the order of `methods`.
  """
  outputs, seconds = {}, {}
  for name in methods:
    start = time.time()
    outputs[name] = inside_source_brain(
        ctx.config, source, METHODS[name](ctx, source, method_key(ctx.config, name)))
    seconds[name] = time.time() - start
    logging.info("%s: %d slices in %.1f s", name, len(source), seconds[name])
  return outputs, seconds


def brain_region(config: ml_collections.ConfigDict, images: np.ndarray) -> np.ndarray | None:
  """(N, H, W) bool brain of skull-stripped (N, H, W, 1) slices (data.mask="nonzero": the
  pixels above their background 0, `masks.above`), else None (no brain mask: the whole
  image counts)."""
  return masks.above(images[..., 0], 0.0) if config.data.mask == "nonzero" else None


def score_split(config: ml_collections.ConfigDict, outputs: dict[str, np.ndarray],
                split: dict[str, np.ndarray], segmenters: segmentation.Segmenters) -> dict:
  """`evaluation.evaluate_methods` on a split, with ground-truth Dice where labels fit.

  Skull-stripped data (data.mask="nonzero") are scored inside the target's brain; a split with
  "exclude" masks (data.exclude_glob) is scored once more outside them, in report["regions"].
  """
  labels = split.get("labels")
  if labels is not None and labels.max() != int(config.eval.kmeans_clusters):
    labels = None  # Ground-truth classes only compare with K-means when the counts match.
  brain = brain_region(config, split["target"])
  segmenter = segmenters.tissue
  data_range = float(config.eval.data_range)
  best_named = [m for m in outputs if m in BEST_NAMING]
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
  report["not_zero_shot"] = [m for m in outputs if m in NOT_ZERO_SHOT]
  return report


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`--mode=eval`: every method of `eval.methods` on `eval.split`, against the target.

  K-means is fitted on target training slices only; writes WORKDIR/eval/report.{json,md,csv}
  and comparison.png, and returns the report.
  """
  methods = check_methods(config.eval.methods)
  split, segmenters, ctx = prepare_split(config, workdir, methods)
  outputs, _ = run_methods(ctx, methods, split["source"])
  report = score_split(config, outputs, split, segmenters)
  report["structure"] = source_structure(config, split["source"],
                                         f"{config.eval.split} split ({config.data.source})")
  chosen = lmi_model(ctx, split["source"]) if "lmi" in methods else ctx
  if chosen is not ctx:
    report["structure"]["faint_model"] = chosen.model_folder
  out_dir = os.path.join(workdir, "eval")
  evaluation.write_report(report, out_dir)
  brain = brain_region(config, split["target"])
  # Skull-stripped splits start and end with small slices: show the one with the most brain.
  index = 0 if brain is None else int(np.argmax(brain.sum((1, 2))))
  figures.plot_comparison(split["target"], split["source"], outputs, segmenters.tissue,
                             os.path.join(out_dir, "comparison.png"), index=index, mask=brain)
  logging.info("Wrote %s/report.{json,md,csv} and comparison.png.", out_dir)
  return report
