"""The translation methods: one registry, one signature, one noise stream each.

A method turns source-contrast slices (N, H, W, 1) in [0, 1] into target-contrast slices of
the same shape. They share one signature, `method(context, source, key)`, and one dict,
`METHODS`; adding a baseline touches that dict (and `STREAMS`) and nothing else. `run_methods`
runs several on one source stack, each with its own key (`method_key`).

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

from lmi_jax import (inference, lmi, local_regression, masks, model_store, multiscale,
                     reference_map, sampling, segmentation, structure)
from lmi_jax.baselines import BASELINES
from lmi_jax.errors import InputError
from lmi_jax.models import feeding_of, lmi_score, unconditional_score
from lmi_jax.sde import SDE


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
  structure_score: float | None = None  # `stack_structure_score` of the sources being translated, when the caller has it (`lmi_model` uses it).


def keeping_runners(ctx: Context) -> Context:
  """`ctx` and its low-resolution context with empty `runners`: each sampler compiles on its
  first call and is reused by later calls of the same method, as `--mode=sample` runs them."""
  lowres = ctx.lowres and dataclasses.replace(ctx.lowres, runners={})
  return dataclasses.replace(ctx, runners={}, lowres=lowres)


def lmi_batch(ctx: Context, source: jax.Array, key: jax.Array,
               trajectory_steps: tuple[int, ...] = ()) -> tuple[jax.Array, jax.Array]:
  """LMI-guided translation of one (B, H, W, 1) batch by `sampling.method` (jax, inside the
  jitted / pmapped call): the sample, and
  (method em only) the states after the given steps, (len(trajectory_steps), B, H, W, 1)."""
  cfg = ctx.config.sampling
  score = lmi_score(ctx.model, ctx.variables, ctx.sde, ctx.lmi_cfg, source,
                    feeding=feeding_of(ctx.config.model),
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
                              feeding=feeding_of(ctx.config.model))
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
  the stack's structure score (`ctx.structure_score`, else `stack_structure_score`) is below
  sampling.faint_below, else `ctx` itself.

  On the phantom's validation sweep the faint model (cond_aug 0.5) gains on the variants
  scoring below 4 and loses 0.02 at today's PD (5.3) against an equally fine-tuned model;
  flat_equalize gains for it where the contrast is faint and loses with noise:
  docs/results.md, "Faint contrast".
  """
  threshold = float(ctx.config.sampling.faint_below)
  if ctx.faint is None or threshold <= 0:
    return ctx
  score = ctx.structure_score
  if score is None:
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
  translation of the shrunk sources made full resolution (`multiscale.refine`); finished by
  `source_guided_finish` and `source_regression_finish`."""
  if ctx.lowres is not None:
    start_key, key = jax.random.split(key)
    start = multiscale.lowres_start(ctx, source, start_key, translate_lmi)
    translated = multiscale.refine(ctx, lmi_reference(ctx, source), start, key)
  else:
    ctx = lmi_model(ctx, source)
    run = lambda reference: inference.run_batched(lambda c, s, k: lmi_batch(c, s, k)[0], ctx,
                                                  reference, key, "lmi")
    if ctx.config.data.pixel_mm > 0:
      translated = multiscale.in_content_box(ctx, lmi_reference(ctx, source), run)
    else:
      translated = run(lmi_reference(ctx, source))
  translated = source_guided_finish(ctx.config, source, translated)
  return source_regression_finish(ctx.config, source, translated)


def source_guided_finish(config: ml_collections.ConfigDict, source: np.ndarray,
                         translated: np.ndarray) -> np.ndarray:
  """(N, H, W, 1) translations of (N, H, W, 1) sources filtered by `multiscale.guided_filter`
  with the source as guide (sampling.finish_radius, finish_eps), or unchanged when
  finish_radius is 0.

  Why: the sampler leaves a texture of its noise that is not anatomy. Each window's
  least-squares map of the source onto the translation averages it away where the source is
  flat (local variance below finish_eps) and follows the source's edges where it is not,
  keeping the translation's contrast (docs/results.md, "A guided filter by the source").
  """
  radius = int(config.sampling.finish_radius)
  if radius == 0:
    return translated
  filtered = multiscale.guided_filter(source, translated, radius,
                                      float(config.sampling.finish_eps))
  return np.clip(filtered, 0.0, 1.0)


def source_regression_finish(config: ml_collections.ConfigDict, source: np.ndarray,
                             translated: np.ndarray) -> np.ndarray:
  """(N, H, W, 1) translations of a stack of (N, H, W, 1) sources replaced inside the
  sources' brain (`brain_region`) by one regression of them on the sources' local features
  (`local_regression.regress_on_source`, seeded by the config's seed) when
  sampling.regress_on_source, else unchanged.

  Why: what the sampler gets wrong varies between pixels whose source neighbourhoods look
  alike; one map from the source's local appearance to the translation, fitted on the whole
  stack, keeps the contrast mapping and drops that variation (docs/results.md, "The
  translation regressed on its source").
  """
  if not config.sampling.regress_on_source:
    return translated
  return local_regression.regress_on_source(source, translated, brain_region(config, source),
                                            int(config.seed))


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


def stack_structure_score(config: ml_collections.ConfigDict, source: np.ndarray) -> float:
  """How much tissue structure (N, H, W, 1) source slices carry: `structure.structure_score`
  inside their brain (the non-zero pixels of skull-stripped data, else `structure.brain_mask`)."""
  brain = brain_region(config, source)
  brain = structure.brain_mask(source) if brain is None else brain
  return structure.structure_score(source, brain)


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
