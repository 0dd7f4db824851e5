"""Full-resolution translation started from a low-resolution one (`sampling.lowres_model`).

A prior trained on 1 mm crops (configs/real_t1.py) knows local T1w appearance but not a whole
slice's layout, which a low-resolution model does know, without the detail. So a shipped
low-resolution model first translates the source shrunk to its own canvas; the result is
enlarged back (the mean of sampling.lowres_samples draws: less noise from slice to slice) and
made full resolution by `sampling.lowres_refine`:

- diffusion: noised to time `sampling.lowres_t0` and taken down to 0 by the full-resolution
  model, guided by LMI with the full-resolution source (SDEdit's start, Meng et al. 2022, with
  the paper's guidance; the refinement stage of cascaded diffusion models). The sampler takes
  that share of its network evaluations.
- guided: a guided filter (He et al., 2013) with the LMI reference as the guide: in every
  window the enlarged translation is fitted as a linear map of the source, so the source's
  edges come through at the translation's local contrast. No network.
- none: the enlarged translation as it is (what the low-resolution model alone gives).
"""

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import ml_collections
import numpy as np
from scipy import ndimage
from skimage import transform

from lmi_jax import checkpoints, inference, lmi, masks, model_store, sampling
from lmi_jax.errors import InputError
from lmi_jax.models import create_model, feeding_of, lmi_score
from lmi_jax.sde import sde_from_config

if TYPE_CHECKING:
  from lmi_jax.methods import Context

def shipped_config(folder: str, key: str) -> ml_collections.ConfigDict:
  """The config.py stored in a shipped model folder, as it trained the model there."""
  path = os.path.join(folder, checkpoints.CONFIG_FILE)
  if not os.path.isfile(path):
    raise InputError(f"{key} = {folder!r}: {path} does not exist; point {key} at a folder "
                     "exported by `python -m lmi_jax.pretrained`.")
  spec = importlib.util.spec_from_file_location(f"shipped_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def load_lowres(ctx: "Context") -> "Context":
  """`ctx` with its `lowres` context: the model `sampling.lowres_model` names, with the
  config it was trained with (its canvas, SDE, LMI and sampler), or `ctx` unchanged when
  that key is ""."""
  cfg = ctx.config.sampling
  folder = checkpoints.resolve_folder(str(cfg.lowres_model))
  if not folder:
    return ctx
  config = shipped_config(folder, "sampling.lowres_model")
  # Whether slices share noise is a choice about the whole translation, both stages.
  config.sampling.shared_noise = bool(cfg.shared_noise)
  if cfg.lowres_sampler:
    sampling.set_sampler(config.sampling, cfg.lowres_sampler)
  variables, step = checkpoints.load_shipped(config, folder, key="sampling.lowres_model")
  faint = checkpoints.load_faint(config, folder)
  lowres = dataclasses.replace(
      ctx, model=create_model(config.model), variables=variables,
      sde=sde_from_config(config.sde), lmi_cfg=lmi.from_config(config.lmi), config=config,
      step=step, model_folder=folder,
      faint=None if faint is None else model_store.FaintModel(*faint), lowres=None,
      runners=None if ctx.runners is None else {})
  return dataclasses.replace(ctx, lowres=lowres)


def resize_slices(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(N, H, W, C) float images resized to (N, *size, C), bilinear, anti-aliased when shrinking."""
  shrinking = size[0] < images.shape[1]
  return np.stack([transform.resize(image, (*size, image.shape[-1]), order=1,
                                    anti_aliasing=shrinking, preserve_range=True)
                   for image in images]).astype(np.float32)


TranslateFn = Callable[["Context", np.ndarray, jax.Array], np.ndarray]


def lowres_draws(ctx: "Context", source: np.ndarray, key: jax.Array, translate_lmi: TranslateFn,
                 draws: int) -> list[np.ndarray]:
  """`draws` translations by the low-resolution model of (N, H, W, 1) sources shrunk to its
  canvas (keys folded 0, 1, ...), each (N, h, h, 1) on that canvas. `translate_lmi` is lmi's
  entry point, which the low-resolution context runs as it would alone (its faint-contrast
  model included)."""
  canvas = int(ctx.lowres.config.data.image_size)
  small = resize_slices(source, (canvas, canvas))
  return [translate_lmi(ctx.lowres, small, jax.random.fold_in(key, i)) for i in range(draws)]


def enlarged_mean(draws: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
  """The mean of (N, h, h, 1) draws enlarged to (N, *size, 1)."""
  return resize_slices(sum(draws) / len(draws), size)


def lowres_start(ctx: "Context", source: np.ndarray, key: jax.Array,
                 translate_lmi: TranslateFn) -> np.ndarray:
  """The low-resolution model's translation of (N, H, W, 1) sources, the mean of
  sampling.lowres_samples draws (`lowres_draws`) enlarged back: (N, H, W, 1)."""
  draws = lowres_draws(ctx, source, key, translate_lmi, int(ctx.config.sampling.lowres_samples))
  return enlarged_mean(draws, source.shape[1:3])


def guided_filter(guide: np.ndarray, image: np.ndarray, radius: int, eps: float) -> np.ndarray:
  """He et al.'s guided filter of (N, H, W, 1) `image` by (N, H, W, 1) `guide`: per
  (2 radius + 1)^2 window the least-squares map a * guide + b of image (a ridge of eps on a),
  the maps averaged over the windows holding each pixel. (N, H, W, 1) float32."""
  size = (1, 2 * radius + 1, 2 * radius + 1, 1)
  mean = lambda x: ndimage.uniform_filter(x.astype(np.float64), size, mode="reflect")
  mean_g, mean_i = mean(guide), mean(image)
  var_g = mean(guide * guide) - mean_g ** 2
  cov = mean(guide * image) - mean_g * mean_i
  a = cov / (var_g + eps)
  b = mean_i - a * mean_g
  return (mean(a) * guide + mean(b)).astype(np.float32)


def refine_batch(ctx: "Context", packed: jax.Array, key: jax.Array) -> jax.Array:
  """One (B, H, W, 2) batch of [LMI reference, enlarged translation] -> (B, H, W, 1): the
  translation noised to sampling.lowres_t0 and sampled down to 0 with LMI guidance."""
  cfg = ctx.config.sampling
  reference, start = packed[..., :1], packed[..., 1:]
  score = lmi_score(ctx.model, ctx.variables, ctx.sde, ctx.lmi_cfg, reference,
                    feeding=feeding_of(ctx.config.model),
                    guidance_scale=float(cfg.guidance_scale))
  return sampling.sample(score, ctx.sde, reference.shape, key, cfg, x_init=start,
                         t_start=float(cfg.lowres_t0), progress=ctx.progress)


def refine(ctx: "Context", reference: np.ndarray, start: np.ndarray, key: jax.Array) -> np.ndarray:
  """The enlarged low-resolution translation `start` made full resolution by
  `sampling.lowres_refine` (see the module docstring); (N, H, W, 1) -> (N, H, W, 1)."""
  cfg = ctx.config.sampling
  if cfg.lowres_refine == "none":
    return start
  if cfg.lowres_refine == "guided":
    return np.clip(guided_filter(reference, start, int(cfg.guided_radius),
                                 float(cfg.guided_eps)), 0.0, 1.0)
  packed = np.concatenate([reference, start], axis=-1)
  return in_content_box(ctx, packed, lambda inside: inference.run_batched(
      refine_batch, ctx, inside, key, "lmi refine", t_start=float(cfg.lowres_t0)))


def in_content_box(ctx: "Context", images: np.ndarray,
                   run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """`run` (N, H', W', C) -> (N, H', W', 1) applied to the box of (N, H, W, C) `images`
  holding every slice's brain (`content_box` of channel 0), 0 outside it: at a fixed pixel
  size the canvas is larger than the brain (a 1 mm BraTS brain fills a third of it)."""
  box = content_box(images[..., :1], multiple=2 ** (len(ctx.config.model.ch_mult) - 1))
  out = np.zeros((*images.shape[:-1], 1), np.float32)
  out[box] = run(images[box])
  return out


def content_box(images: np.ndarray, multiple: int, margin: int = 8) -> tuple[slice, ...]:
  """Index of the smallest (H', W') window of (N, H, W, C) images holding every non-zero pixel
  of every image with `margin` pixels around, its sides multiples of `multiple` (whole
  images when that does not fit or nothing is non-zero)."""
  height, width = images.shape[1:3]
  occupied = np.any(masks.nonzero(images), axis=(0, 3))
  if not occupied.any():
    return (slice(None),) * 4
  sides = []
  for axis, length in ((1, height), (0, width)):
    hit = np.flatnonzero(occupied.any(axis=axis))
    lo, hi = max(0, hit[0] - margin), min(length, hit[-1] + 1 + margin)
    size = min(length, -(-(hi - lo) // multiple) * multiple)
    lo = min(max(0, (lo + hi - size) // 2), length - size)
    sides.append(slice(lo, lo + size) if size % multiple == 0 else slice(None))
  return (slice(None), sides[0], sides[1], slice(None))
