"""Local mutual information (LMI): pure, jit-compiled JAX functions.

For a reference image A and a moving image B, odd patch size k, search radius r and n
bins, the LMI at pixel i is the largest mutual information between A's k x k patch at i
and B's k x k patch at i + s over all shifts |s|_inf <= r (true shifted windows).

The MI of a patch pair is a Gaussian-Parzen estimate from its k^2 intensity pairs:
  u      intensities mapped to [0, 1] per image (`normalize`), optionally truncated to
         `levels` grey levels, on a grid of n bin centres spread over [0, top];
  K(v)   exp(-0.5 ((v - c_b) / w)^2) for every bin centre c_b, w = kernel_sigma bin
         spacings;
  p_a    mean of the k^2 kernel vectors of A's patch, renormalised (likewise p_b);
  P_ab   sum of the k^2 outer products K_a K_b^T, renormalised;
  H      -sum p log2(p + eps); MI = H_a + H_b - H_ab; NMI = 2 (MI + eps) / (H_a + H_b + eps).
This is the authors' estimator (see `authors_preset`), generalised in patch size, bins,
kernel width and intensity normalisation.

Why it is fast, and what runs where. Everything is XLA code on JAX's backend (CPU or
GPU; no host callbacks), in three stages per call:
  1. per image, once: intensity normalisation, kernel vectors of every padded pixel of
     both images, and marginal entropies from k x k box sums of kernel vectors (A's at
     every pixel, B's at every pixel of the search area);
  2. in one `lax.map` loop over (shift, image, row chunk) items: each pixel's outer
     product K_a K_b^T is formed once, a patch's joint histogram is its k x k box sum
     taken separably (two window reductions), and the joint entropy is accumulated in
     one pass (`_joint_entropy_chunk`). Products and logarithms per joint entry do not
     depend on k, only 2 (k - 1) additions do; the joint is never stored for the whole
     image, so memory stays bounded at any image size (`row_chunk`);
  3. per image: MI from the three entropies and the arg-max over shifts (the moving image
     at that shift, `align`, only for the "aligned" feature).
The reference's share of stage 1 is recomputed at every call rather than passed in by
the sampler: it measured 4-5% of a 128 x 128 call on the 2-core CPU (authors' preset and
default), stages 1 and 3 for both images 7-8%, and the loop the rest. The loop runs on
one thread on XLA's CPU backend.

Borders: both images are padded by k//2 + r pixels before patches are taken (`padding`:
`zero` as the authors, `edge`, or `reflect`), so every pixel has all (2r+1)^2 shifted
windows; a padded sample counts as a sample of the padded value.

Out-of-range input (a noisy x_t) is handled by the normalisation, which maps every image
into [0, 1] by construction; `none` clips to [0, 1]. The authors instead let values
outside [0, 1] fall off the bin grid, where they get no kernel mass and pure noise can
reach the maximum NMI.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmi_jax import reference_map
from lmi_jax.errors import InputError

EPS = 1e-10  # The authors' epsilon, used in every normalisation and logarithm.
NORMALIZE_MODES = ("none", "minmax", "percentile", "rank")
PADDING_MODES = ("zero", "edge", "reflect")
FEATURE_NAMES = ("cross", "self", "self_parzen", "aligned")
_LOG_KERNEL_FLOOR = -34.5  # ln(1e-15)
_CHUNK_ENTRIES = 1024 * 1024  # Joint-histogram entries computed per loop iteration.


@dataclasses.dataclass(frozen=True)
class LMIConfig:
  """Static LMI settings (hashable: passed to jit as a static argument)."""
  patch_size: int = 5
  radius: int = 1
  num_bins: int = 16
  kernel_sigma: float = 0.8
  levels: int = 0
  normalize: str = "minmax"
  p_lo: float = 1.0
  p_hi: float = 99.0
  nmi: bool = True
  padding: str = "reflect"
  row_chunk: int = 0
  features: tuple[str, ...] = ("cross", "self")

  def __post_init__(self):
    if self.patch_size < 1 or self.patch_size % 2 == 0:
      raise InputError(f"lmi.patch_size must be a positive odd number, got {self.patch_size}.")
    if self.radius < 0:
      raise InputError(f"lmi.radius must be >= 0, got {self.radius}.")
    if self.num_bins < 2:
      raise InputError(f"lmi.num_bins must be >= 2, got {self.num_bins}.")
    if self.kernel_sigma <= 0:
      raise InputError(f"lmi.kernel_sigma must be > 0, got {self.kernel_sigma}.")
    if self.normalize not in NORMALIZE_MODES:
      raise InputError(f"lmi.normalize must be one of {NORMALIZE_MODES}, got {self.normalize!r}.")
    if self.padding not in PADDING_MODES:
      raise InputError(f"lmi.padding must be one of {PADDING_MODES}, got {self.padding!r}.")
    if not 0 <= self.p_lo < self.p_hi <= 100:
      raise InputError(f"lmi.p_lo/p_hi must satisfy 0 <= p_lo < p_hi <= 100, got {self.p_lo}, {self.p_hi}.")
    unknown = [f for f in self.features if f not in FEATURE_NAMES]
    if unknown or not self.features:
      raise InputError(f"lmi.features must be a non-empty subset of {FEATURE_NAMES}, got {self.features}.")

  @property
  def top(self) -> float:
    """Upper end of the bin grid, in the units kernels are evaluated in."""
    return float(self.levels) if self.levels > 0 else 1.0

  @property
  def kernel_width(self) -> float:
    """Kernel standard deviation in grid units (authors: 8 grey levels)."""
    return self.kernel_sigma * self.top / (self.num_bins - 1)

  @property
  def shifts(self) -> tuple[tuple[int, int], ...]:
    """(0, 0) first, so that ties resolve to no shift; then raster order."""
    r = self.radius
    rest = tuple((dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
                 if (dy, dx) != (0, 0))
    return ((0, 0),) + rest


class CrossLMI(NamedTuple):
  """Result of `cross_lmi`.

  value: (B, H, W, 1) max over shifts of the patch MI (or NMI).
  shift: (B, H, W, 2) int32 arg-max shift (dy, dx).
  """
  value: jax.Array
  shift: jax.Array


def from_config(config: ml_collections.ConfigDict) -> LMIConfig:
  """The `lmi` section of a config as a static `LMIConfig` (its reference-map keys checked)."""
  reference_map.check_name(str(config.reference_map))
  if not float(config.flatten_sigma) > 0.0:
    raise InputError(f"lmi.flatten_sigma={config.flatten_sigma!r}: give a positive fraction of "
                     "the image width (default 0.094).")
  return LMIConfig(
      patch_size=int(config.patch_size), radius=int(config.radius),
      num_bins=int(config.num_bins), kernel_sigma=float(config.kernel_sigma),
      levels=int(config.levels), normalize=str(config.normalize),
      p_lo=float(config.p_lo), p_hi=float(config.p_hi), nmi=bool(config.nmi),
      padding=str(config.padding), row_chunk=int(config.row_chunk),
      features=tuple(config.features))


def authors_preset(radius: int = 1) -> LMIConfig:
  """The authors' estimator, with true shifted windows instead of their mirrored ones.

  3x3 patches, 27 bins on 0..255, kernel width 8 grey levels (sigma=2 in their class:
  w = 2 sigma^2), truncation to integer grey levels, normalised MI, no intensity
  normalisation (values are only clipped to [0, 1]), zero padding; conditioning
  channels [cross, self] with their Parzen self-estimate.
  """
  num_bins, levels = 27, 255
  return LMIConfig(
      patch_size=3, radius=radius, num_bins=num_bins,
      kernel_sigma=8.0 * (num_bins - 1) / levels, levels=levels, normalize="none",
      nmi=True, padding="zero", features=("cross", "self_parzen"))


# --------------------------------------------------------------------------------------
# Intensity normalisation


def _normalize_image(x: jax.Array, mask: jax.Array, cfg: LMIConfig) -> jax.Array:
  """One image (H, W) to [0, 1] with statistics from `mask` (H, W) bool; 0 outside."""
  mode = cfg.normalize
  if mode == "none":
    out = jnp.clip(x, 0.0, 1.0)
  elif mode == "rank":
    # Mid-rank of each value among the masked values: ties share their average rank,
    # so a strictly monotone intensity map leaves the result unchanged.
    count = jnp.sum(mask)
    ordered = jnp.sort(jnp.where(mask, x, jnp.inf).ravel())
    below = jnp.searchsorted(ordered, x.ravel(), side="left")
    upto = jnp.searchsorted(ordered, x.ravel(), side="right")
    ranks = (below + upto - 1).astype(jnp.float32) * 0.5
    out = (ranks / jnp.maximum(count - 1, 1).astype(jnp.float32)).reshape(x.shape)
  else:
    if mode == "minmax":
      lo = jnp.min(jnp.where(mask, x, jnp.inf))
      hi = jnp.max(jnp.where(mask, x, -jnp.inf))
    else:
      values = jnp.where(mask, x, jnp.nan).ravel()
      lo, hi = jnp.nanpercentile(values, jnp.array([cfg.p_lo, cfg.p_hi]))
    out = jnp.clip((x - lo) / jnp.maximum(hi - lo, 1e-12), 0.0, 1.0)
  return jnp.where(mask, out, 0.0).astype(jnp.float32)


def normalize(x: jax.Array, cfg: LMIConfig, mask: jax.Array | None = None) -> jax.Array:
  """Per-image intensity map to [0, 1] before binning.

  Args:
    x: (B, H, W, 1) images, any range (noisy samples included).
    cfg: `normalize` picks none (clip) | minmax | percentile (p_lo..p_hi) | rank.
    mask: optional (B, H, W, 1) bool; statistics come from masked pixels, others are 0.
  Returns:
    (B, H, W, 1) float32 in [0, 1].
  """
  x = jnp.asarray(x, jnp.float32)[..., 0]
  m = jnp.ones(x.shape, bool) if mask is None else jnp.asarray(mask, bool)[..., 0]
  return jax.vmap(lambda xi, mi: _normalize_image(xi, mi, cfg))(x, m)[..., None]


# --------------------------------------------------------------------------------------
# Parzen estimates


def parzen_kernel(u: jax.Array, cfg: LMIConfig) -> jax.Array:
  """Kernel vectors of normalised intensities: (...) in [0, 1] -> (..., num_bins)."""
  if cfg.levels > 0:
    u = jnp.trunc(u * jnp.float32(cfg.levels))
  centres = jnp.linspace(0.0, cfg.top, cfg.num_bins, dtype=jnp.float32)
  z = (u[..., None] - centres) / jnp.float32(cfg.kernel_width)
  exponent = jnp.float32(-0.5) * z * z
  # Values below 1e-15 become exact zeros: products of two kernel values would
  # otherwise be subnormal floats, which are many times slower on CPUs, and their
  # share of a histogram is far below float32 resolution.
  far = exponent < _LOG_KERNEL_FLOOR
  return jnp.where(far, 0.0, jnp.exp(jnp.where(far, 0.0, exponent)))


def entropy(p: jax.Array, axes: int | tuple[int, ...] = -1) -> jax.Array:
  """Entropy in bits of unnormalised histograms: renormalise over `axes`, -sum p log2 p."""
  p = p / (jnp.sum(p, axis=axes, keepdims=True) + EPS)
  return -jnp.sum(p * jnp.log2(p + EPS), axis=axes)


def mutual_information(h_a: jax.Array, h_b: jax.Array, h_ab: jax.Array,
                       nmi: bool) -> jax.Array:
  """MI (bits) or NMI from marginal and joint entropies of matching shapes."""
  mi = h_a + h_b - h_ab
  return 2.0 * (mi + EPS) / (h_a + h_b + EPS) if nmi else mi


def _box_sum(x: jax.Array, k: int, axes: tuple[int, ...]) -> jax.Array:
  """Valid sums of k consecutive entries along each of `axes` in turn (a separable box
  sum): size L -> L - k + 1 on each.

  A window reduction rather than a sum of k shifted slices: XLA's CPU backend made each
  slice of a fused product its own pass that recomputed the products (k = 9: 20x slower).
  """
  for axis in axes:
    window = tuple(k if a == axis else 1 for a in range(x.ndim))
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1,) * x.ndim, "VALID")
  return x


# --------------------------------------------------------------------------------------
# Maps


def _pad(u: jax.Array, width: int, mode: str) -> jax.Array:
  """Pad (B, H, W) images by `width` on both spatial axes."""
  jnp_mode = {"zero": "constant", "edge": "edge", "reflect": "reflect"}[mode]
  return jnp.pad(u, ((0, 0), (width, width), (width, width)), mode=jnp_mode)


def _row_chunk(cfg: LMIConfig, height: int, width: int) -> int:
  # About 1M joint entries per loop iteration: measured on 2 CPU cores at 128 and 256
  # pixels, 0.5M-2M ran alike, while 256K (a row or two of a 256-wide image) was up to
  # 1.6x slower: the loop's per-iteration overhead and the k - 1 extra rows of products
  # each chunk needs for its patches.
  if cfg.row_chunk > 0:
    return min(cfg.row_chunk, height)
  return max(1, min(height, _CHUNK_ENTRIES // (width * cfg.num_bins ** 2)))


def _joint_entropy_chunk(ka: jax.Array, kb: jax.Array, k: int) -> jax.Array:
  """Joint entropies of all patches of a chunk, in one pass over the joint.

  Each pixel's outer product K_a K_b^T is formed once and the patch joints are its k x k
  box sums, taken separably: the products and logarithms per joint entry do not depend
  on k, only the 2 (k - 1) additions do. Bins lead and pixels are the minor axis, so the
  products and logarithms vectorise over pixels. The normaliser Z = sum of the joint is
  known before the joint (a box sum of products of per-pixel kernel sums), which lets the
  entropy be accumulated without a second pass:
  H = log Z' (Z / Z') - sum_bc J log(J + eps Z') / Z',  Z' = Z + eps,
  the same number as renormalising first.

  Args:
    ka, kb: (n, B, R + k - 1, W + k - 1) kernel vectors over the chunk's patch support.
  Returns:
    (B, R, W) entropy in bits of each patch's Parzen joint histogram.
  """
  joint = _box_sum(ka[:, None] * kb[None, :], k, (3, 4))  # (n, n, B, R, W)
  total = _box_sum(jnp.sum(ka, axis=0) * jnp.sum(kb, axis=0), k, (1, 2)) + EPS
  weighted = jnp.sum(joint * jnp.log(joint + EPS * total), axis=(0, 1))
  return (jnp.log(total) * (total - EPS) - weighted) / (total * jnp.log(2.0))


def _cross_maps(ua: jax.Array, ub: jax.Array, cfg: LMIConfig) -> jax.Array:
  """Patch MI for every pixel and shift.

  Args:
    ua, ub: (B, H, W) normalised images.
  Returns:
    (S, B, H, W) MI (or NMI) for each shift in `cfg.shifts`.
  """
  batch, height, width = ua.shape
  k, r, h = cfg.patch_size, cfg.radius, cfg.patch_size // 2
  pad = h + r
  ka = parzen_kernel(_pad(ua, pad, cfg.padding), cfg)  # (B, H + 2pad, W + 2pad, n)
  kb = parzen_kernel(_pad(ub, pad, cfg.padding), cfg)
  # Marginal entropies from box sums of kernel vectors: A's at every pixel, B's at
  # every pixel of the search area.
  h_a = entropy(_box_sum(ka[:, r:r + height + 2 * h, r:r + width + 2 * h], k, (1, 2)))
  h_b = entropy(_box_sum(kb, k, (1, 2)))  # (B, H + 2r, W + 2r)

  chunk = _row_chunk(cfg, height, width)
  num_chunks = -(-height // chunk)
  extra = num_chunks * chunk - height
  # Bins first for the joint; rows past the image bottom are computed and cropped.
  ka = jnp.pad(jnp.moveaxis(ka, -1, 0), ((0, 0), (0, 0), (0, extra), (0, 0)), mode="edge")
  kb = jnp.pad(jnp.moveaxis(kb, -1, 0), ((0, 0), (0, 0), (0, extra), (0, 0)), mode="edge")

  def item(index: jax.Array) -> jax.Array:
    image, start, dy, dx = index[0], index[1], index[2], index[3]
    size = (ka.shape[0], 1, chunk + 2 * h, width + 2 * h)
    ka_c = jax.lax.dynamic_slice(ka, (0, image, start + r, r), size)
    kb_c = jax.lax.dynamic_slice(kb, (0, image, start + r + dy, r + dx), size)
    return _joint_entropy_chunk(ka_c, kb_c, k)[0]  # (chunk, W)

  # One loop over (shift, image, chunk) items keeps the compiled body to a single patch
  # sum whatever the radius (compile time does not grow with (2r+1)^2) and the working
  # set to a few rows of one image whatever the batch.
  grid = np.array([(image, start, dy, dx) for dy, dx in cfg.shifts for image in range(batch)
                   for start in range(0, num_chunks * chunk, chunk)], np.int32)
  h_ab = jax.lax.map(item, jnp.asarray(grid))
  h_ab = h_ab.reshape(len(cfg.shifts), batch, num_chunks * chunk, width)[:, :, :height]
  h_b_shifted = jnp.stack([h_b[:, r + dy:r + dy + height, r + dx:r + dx + width]
                           for dy, dx in cfg.shifts])
  return mutual_information(h_a[None], h_b_shifted, h_ab, cfg.nmi)


@functools.partial(jax.jit, static_argnames=("cfg",))
def cross_lmi(reference: jax.Array, moving: jax.Array, cfg: LMIConfig,
              mask: jax.Array | None = None) -> CrossLMI:
  """LMI(reference; moving): best patch MI over shifts and its shift.

  Args:
    reference: (B, H, W, 1) float32 image A (patch at i).
    moving: (B, H, W, 1) float32 image B (patch at i + s).
    cfg: static `LMIConfig`.
    mask: optional (B, H, W, 1) bool region for the intensity normalisation.
  Returns:
    `CrossLMI` with value (B, H, W, 1) and shift (B, H, W, 2) int32.
  """
  _check_pair(reference, moving)
  ua = normalize(reference, cfg, mask)[..., 0]
  ub = normalize(moving, cfg, mask)[..., 0]
  maps = _cross_maps(ua, ub, cfg)  # (S, B, H, W)
  shift = jnp.array(cfg.shifts, jnp.int32)[jnp.argmax(maps, axis=0)]  # (B, H, W, 2)
  return CrossLMI(value=jnp.max(maps, axis=0)[..., None], shift=shift)


@functools.partial(jax.jit, static_argnames=("cfg",))
def align(moving: jax.Array, shift: jax.Array, cfg: LMIConfig) -> jax.Array:
  """The (B, H, W, 1) moving image (as given) at i + shift, shift (B, H, W, 2) from
  `cross_lmi`; past the border it is padded as LMI pads it (`cfg.padding`)."""
  r = cfg.radius
  padded = _pad(jnp.asarray(moving, jnp.float32)[..., 0], r, cfg.padding)
  batch, height, width = moving.shape[:3]
  rows = jnp.arange(height)[None, :, None] + r + shift[..., 0]
  cols = jnp.arange(width)[None, None, :] + r + shift[..., 1]
  return padded[jnp.arange(batch)[:, None, None], rows, cols][..., None]


@functools.partial(jax.jit, static_argnames=("cfg",))
def self_lmi(image: jax.Array, cfg: LMIConfig, mask: jax.Array | None = None) -> jax.Array:
  """LMI(A; A) per pixel: the local entropy H(A's patch) in bits, Property 1's bound.

  A variable's mutual information with itself is its entropy, and every cross map is
  bounded by it: cross_lmi(A, B).value <= self_lmi(A) for MI (with NMI the bound is 1,
  which carries no information, so the entropy is returned in both cases).

  Args:
    image: (B, H, W, 1) float32.
  Returns:
    (B, H, W, 1) float32 entropy in bits.
  """
  u = normalize(image, cfg, mask)[..., 0]
  h = cfg.patch_size // 2
  kernels = parzen_kernel(_pad(u, h, cfg.padding), cfg)
  return entropy(_box_sum(kernels, cfg.patch_size, (1, 2)))[..., None]


def parzen_self_lmi(image: jax.Array, cfg: LMIConfig,
                    mask: jax.Array | None = None) -> jax.Array:
  """The estimator applied to the pair (A, A) at zero shift: the authors' self channel.

  Smoothing the joint of a patch with itself spreads it off the diagonal, so this lies
  below `self_lmi` and, unlike it, is not an upper bound of every cross map.
  Returns (B, H, W, 1).
  """
  no_search = dataclasses.replace(cfg, radius=0)
  return cross_lmi(image, image, no_search, mask).value


_REFERENCE_ONLY = {"self": self_lmi, "self_parzen": parzen_self_lmi}


def reference_channels(reference: jax.Array, cfg: LMIConfig,
                       mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """The feature channels that depend on the reference alone, {name: (B, H, W, 1)}.

  A sampler computes them once per source image instead of once per step.
  """
  return {name: _REFERENCE_ONLY[name](reference, cfg, mask)
          for name in cfg.features if name in _REFERENCE_ONLY}


@functools.partial(jax.jit, static_argnames=("cfg",))
def features(reference: jax.Array, x: jax.Array, cfg: LMIConfig,
             mask: jax.Array | None = None,
             fixed: dict[str, jax.Array] | None = None) -> jax.Array:
  """Conditioning channels for the score network, in the order of `cfg.features`.

  cross: LMI(reference; x); self: local entropy of the reference; self_parzen: the
  authors' Parzen LMI(reference; reference); aligned: x at the arg-max shift.

  Args:
    reference: (B, H, W, 1) the clean image (F in training, the source G in sampling).
    x: (B, H, W, 1) the current sample x_t.
    fixed: `reference_channels(reference, cfg, mask)` when already computed.
  Returns:
    (B, H, W, len(cfg.features)) float32.
  """
  if fixed is None:
    fixed = reference_channels(reference, cfg, mask)
  if "cross" in cfg.features or "aligned" in cfg.features:
    cross = cross_lmi(reference, x, cfg, mask)
    fixed = dict(fixed, cross=cross.value)
    if "aligned" in cfg.features:
      fixed["aligned"] = align(x, cross.shift, cfg)
  return jnp.concatenate([fixed[name] for name in cfg.features], axis=-1)


def _check_pair(reference: jax.Array, moving: jax.Array) -> None:
  if reference.ndim != 4 or reference.shape[-1] != 1:
    raise ValueError(f"LMI expects (B, H, W, 1) images, got reference shape {reference.shape}.")
  if moving.shape != reference.shape:
    raise ValueError(f"LMI reference and moving shapes differ: {reference.shape} vs {moving.shape}.")
