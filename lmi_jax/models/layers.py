"""Building blocks of NCSN++ (Song et al. 2021): resampling, residual and attention blocks,
noise-level embeddings. All activations are NHWC.

`init_scale` follows NCSN++: the layer that closes a residual branch (and the network's
output layer) starts at that scale of a fan-avg uniform init; 0 makes it zero, so every
block starts as the identity and the untrained network outputs 0.
"""

import concurrent.futures
import functools
import os
import threading
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl
from jax.experimental import buffer_callback


def variance_scaling(scale: float) -> nn.initializers.Initializer:
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


class _OneBlasThread:
  """Context in which NumPy's BLAS runs on one thread, however many callers are inside.

  `_kernel_grad_host` spreads its products over `_POOL` itself: OpenBLAS splitting each
  small product over its own threads ran them at half the speed, and those threads spinning
  between calls slowed the XLA ops around the callback (the default network trained at 0.6
  images/s that way, 0.73 this way). BLAS gets its thread count back when the last caller
  leaves; NumPy calls on other threads meanwhile get one thread too.
  """

  def __init__(self):
    self._controller = None  # Found on first use: scanning the loaded libraries takes time.
    self._lock = threading.Lock()
    self._inside = 0
    self._limits = None

  def __enter__(self):
    with self._lock:
      if not self._inside:
        self._controller = self._controller or threadpoolctl.ThreadpoolController()
        self._limits = self._controller.limit(limits=1, user_api="blas")
      self._inside += 1

  def __exit__(self, *exc_info):
    with self._lock:
      self._inside -= 1
      if not self._inside:
        self._limits.restore_original_limits()


_ONE_BLAS_THREAD = _OneBlasThread()
# The cores this process may run on (a container's share, not the host's count).
_WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
_POOL = concurrent.futures.ThreadPoolExecutor(_WORKERS)


def _kernel_grad_host(ctx: buffer_callback.ExecutionContext, out: buffer_callback.Buffer,
                      xq: buffer_callback.Buffer, gq: buffer_callback.Buffer, *,
                      window: tuple[int, int], strides: tuple[int, int]) -> None:
  """`_kernel_grad` on the buffers it lays out: xq (..., sh, sw, B, Hq, Wq, Ci) the stride
  phases of padded x, gq (..., B, Hq, Wq, Co) the output cotangent zero-padded to the phase
  grid; writes out (..., kh, kw, Ci, Co), one kernel gradient per leading index.

  With a phase's pixels flattened to rows, tap (i, j) reads its input a fixed number of rows
  after the output pixel, so its gradient is one matrix product of two contiguous slices,
  which BLAS takes as they are (the transposed one too). g's zero padding is what pairs with
  the rows that wrap into the next grid row or image.
  """
  del ctx
  (kh, kw), (sh, sw) = window, strides
  out, xq, gq = np.asarray(out), np.asarray(xq), np.asarray(gq)
  *_, b, hq, wq, co = gq.shape
  ci = xq.shape[-1]
  rows = b * hq * wq
  xq = xq.reshape(-1, sh, sw, rows, ci)
  gq = gq.reshape(-1, rows, co)
  out = out.reshape(-1, kh, kw, ci, co)

  def tap(n, i, j):
    offset = (i // sh) * wq + j // sw
    np.matmul(xq[n, i % sh, j % sw, offset:].T, gq[n, :rows - offset], out=out[n, i, j])

  taps = [(n, i, j) for n in range(len(gq)) for i in range(kh) for j in range(kw)]
  shares = [taps[k::_WORKERS] for k in range(_WORKERS)]
  with _ONE_BLAS_THREAD:
    list(_POOL.map(lambda share: [tap(*t) for t in share], shares))


def _kernel_grad(x: jax.Array, g: jax.Array, window: tuple[int, int],
                 strides: tuple[int, int], pads: Sequence[tuple[int, int]]) -> jax.Array:
  """Gradient of a convolution's loss w.r.t. its kernel: x (B, H, W, Ci), output cotangent
  g (B, Ho, Wo, Co) -> (kh, kw, Ci, Co).

  Computed by OpenBLAS in a host callback (`_kernel_grad_host`): XLA CPU's dot ran this
  contraction of every pixel into a small (kh kw Ci, Co) result at 50-90 GFLOP/s in every
  form tried (its own kernel-gradient convolution at 25-40), the callback at 130-240 within
  a training step. It is a buffer_callback, which reads XLA's buffers in place: pure_callback
  copied its inputs, and lost most of the gain. Under vmap (the loss maps the network over
  examples) one call takes every example. The callback has no derivative of its own, so the
  kernel gradient cannot be differentiated again.
  """
  (kh, kw), (sh, sw) = window, strides
  b, ho, wo, co = g.shape
  _, hgt, wid, ci = x.shape
  # The phase grid: tap (i, j) reads phase (i % sh, j % sw) at (i // sh, j // sw) past the
  # output pixel, so it must reach that far beyond the last one; x is padded or cropped to it.
  hq, wq = ho + (kh - 1) // sh, wo + (kw - 1) // sw
  xq = jax.lax.pad(x, jnp.zeros((), x.dtype),
                   [(0, 0, 0), (pads[0][0], sh * hq - hgt - pads[0][0], 0),
                    (pads[1][0], sw * wq - wid - pads[1][0], 0), (0, 0, 0)])
  xq = xq.reshape(b, hq, sh, wq, sw, ci).transpose(2, 4, 0, 1, 3, 5)
  gq = jnp.pad(g, ((0, 0), (0, hq - ho), (0, wq - wo), (0, 0)))
  result = jax.ShapeDtypeStruct((kh, kw, ci, co), jnp.result_type(x, g))
  host = functools.partial(_kernel_grad_host, window=window, strides=strides)
  return buffer_callback.buffer_callback(host, result, vmap_method="broadcast_all")(xq, gq)


def _lax_conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int],
                pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """x (B, H, W, Ci), w (kh, kw, Ci, Co) -> (B, Ho, Wo, Co), explicit padding."""
  return jax.lax.conv_general_dilated(x, w, strides, pads,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv2d_fwd(x, w, strides, pads):
  return _lax_conv2d(x, w, strides, pads), (x, w)


def _conv2d_bwd(strides, pads, residuals, g):
  x, w = residuals
  _, input_grad = jax.vjp(lambda v: _lax_conv2d(v, w, strides, pads), x)
  return input_grad(g)[0], _kernel_grad(x, g, w.shape[:2], strides, pads)


# `_lax_conv2d` with the kernel gradient of `_kernel_grad`.
_conv2d = jax.custom_vjp(_lax_conv2d, nondiff_argnums=(2, 3))
_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


# nn.Conv's 2-D layout: NHWC inputs, HWIO kernels, as lax.ConvDimensionNumbers.
_NHWC_HWIO = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]], lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                         precision=None, *, host_kernel_grad: bool = True) -> jax.Array:
  """`lax.conv_general_dilated` for nn.Conv's NHWC/HWIO 2-D case, with the kernel gradient
  of `_kernel_grad` on CPU when `host_kernel_grad` (lax's own elsewhere or when off).

  Only what nn.Conv passes for an undilated, ungrouped 2-D convolution at the default
  precision is supported; anything else raises NotImplementedError rather than being
  computed differently from what was asked.
  """
  unsupported = []
  if any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
    unsupported.append("dilation")
  if feature_group_count != 1:
    unsupported.append(f"feature_group_count={feature_group_count}")
  if dimension_numbers is not None and tuple(dimension_numbers) != tuple(_NHWC_HWIO):
    unsupported.append(f"dimension_numbers={dimension_numbers}")
  if precision is not None:
    unsupported.append(f"precision={precision}")
  if unsupported:
    raise NotImplementedError("layers.conv_general_dilated supports NHWC/HWIO 2-D convolution "
                              "at the default precision only, not " + ", ".join(unsupported))
  strides = tuple(window_strides)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  pads = tuple(tuple(p) for p in padding)
  # cuDNN's kernel gradient is fast, and a host callback would copy through the host.
  use_host = host_kernel_grad and jax.default_backend() == "cpu"
  return (_conv2d if use_host else _lax_conv2d)(lhs, rhs, strides, pads)


def conv(features: int, kernel: int = 3, stride: int = 1, init_scale: float = 1.0,
         padding: str = "SAME", host_kernel_grad: bool = True) -> nn.Conv:
  """A 2-D convolution layer; `host_kernel_grad`: see `conv_general_dilated`."""
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=padding,
                 kernel_init=variance_scaling(init_scale),
                 conv_general_dilated=functools.partial(conv_general_dilated,
                                                        host_kernel_grad=host_kernel_grad))


def dense(features: int, init_scale: float = 1.0) -> nn.Dense:
  return nn.Dense(features, kernel_init=variance_scaling(init_scale))


class GroupNorm(nn.Module):
  """Group normalisation of NHWC activations with a per-channel scale and bias.

  Same parameters and result as nn.GroupNorm (it is named alike so checkpoints carry over),
  computed from per-channel sums over the pixels: XLA CPU reduces over H, W with C
  contiguous about twice as fast as over the (pixels, channels-in-group) axes nn.GroupNorm
  reduces, forward and backward.
  """

  num_groups: int
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H, W, C); C divisible by num_groups."""
    b, hgt, wid, c = x.shape
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    per_group = c // self.num_groups
    count = hgt * wid * per_group
    mean = jnp.sum(x, axis=(1, 2)).reshape(b, self.num_groups, per_group).sum(-1) / count
    mean_sq = jnp.sum(jnp.square(x), axis=(1, 2)).reshape(b, self.num_groups, per_group).sum(-1) / count
    inv_std = jax.lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + self.epsilon)
    gain = jnp.repeat(inv_std, per_group, axis=1) * scale
    shift = bias - jnp.repeat(mean, per_group, axis=1) * gain
    return x * gain[:, None, None, :] + shift[:, None, None, :]


def group_norm(x: jax.Array) -> jax.Array:
  """GroupNorm with min(C // 4, 32) groups, as in NCSN++; x (B, H, W, C)."""
  return GroupNorm(num_groups=min(x.shape[-1] // 4, 32))(x)


def _fir_1d(taps: Sequence[int], gain: float) -> np.ndarray:
  """1-D factor (K,) of the separable FIR kernel: its outer square sums to `gain`."""
  k = np.asarray(taps, np.float32)
  return k * (np.sqrt(gain) / k.sum())


def _fir(x: jax.Array, taps: Sequence[int], gain: float, stride: int, dilation: int,
         pad: tuple[int, int]) -> jax.Array:
  """Filters every channel of x (B, H, W, C) with the separable kernel of `taps` (a true
  convolution), after stuffing dilation - 1 zeros between samples and padding by `pad`.

  Written as shifted slices along H then W, which XLA fuses into elementwise loops: a
  grouped convolution on XLA CPU took as long as the rest of the network together.
  """
  k = _fir_1d(taps, gain)[::-1]
  for axis in (1, 2):
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (pad[0], pad[1], dilation - 1)
    xp = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
    n_out = (xp.shape[axis] - len(k)) // stride + 1
    x = sum(float(k[j]) * jax.lax.slice_in_dim(xp, j, j + (n_out - 1) * stride + 1, stride, axis)
            for j in range(len(k)))
  return x


def upsample(x: jax.Array, fir: bool, taps: Sequence[int]) -> jax.Array:
  """(B, H, W, C) -> (B, 2H, 2W, C): FIR interpolation of zero-stuffed x, or nearest."""
  if not fir:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  p = len(taps) - 2
  # lhs_dilation stuffs zeros only between samples; the extra 1 on the right stands for the
  # trailing zero of a factor-2 upsampling, so the output is exactly 2H.
  return _fir(x, taps, 4.0, 1, 2, ((p + 1) // 2 + 1, p // 2 + 1))


def downsample(x: jax.Array, fir: bool, taps: Sequence[int]) -> jax.Array:
  """(B, H, W, C) -> (B, H/2, W/2, C): FIR low-pass then every second pixel, or 2x2 mean."""
  if not fir:
    return nn.avg_pool(x, (2, 2), (2, 2))
  p = len(taps) - 2
  return _fir(x, taps, 1.0, 2, 1, ((p + 1) // 2, p // 2))


class Upsample(nn.Module):
  """2x upsampling, optionally followed by a 3x3 conv to out_ch channels."""

  out_ch: int | None = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  host_kernel_grad: bool = True  # CPU: kernel gradients by OpenBLAS (conv_general_dilated).

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, 2H, 2W, out_ch or C)."""
    h = upsample(x, self.fir, self.fir_kernel)
    if self.with_conv:
      h = conv(self.out_ch or x.shape[-1], host_kernel_grad=self.host_kernel_grad)(h)
    return h


class Downsample(nn.Module):
  """2x downsampling; with_conv makes it a stride-2 3x3 conv to out_ch channels."""

  out_ch: int | None = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  host_kernel_grad: bool = True  # CPU: kernel gradients by OpenBLAS (conv_general_dilated).

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H/2, W/2, out_ch or C)."""
    out_ch = self.out_ch or x.shape[-1]
    if not self.with_conv:
      return downsample(x, self.fir, self.fir_kernel)
    if not self.fir:
      return conv(out_ch, stride=2, host_kernel_grad=self.host_kernel_grad)(x)
    # Low-pass at full resolution (padded for the 3x3 conv), then the strided conv samples it.
    p = len(self.fir_kernel)
    h = _fir(x, self.fir_kernel, 1.0, 1, 1, ((p + 1) // 2, p // 2))
    return conv(out_ch, stride=2, padding="VALID", host_kernel_grad=self.host_kernel_grad)(h)


def _add_time(h: jax.Array, temb: jax.Array | None) -> jax.Array:
  """Adds a per-channel projection of the time embedding temb (B, E) to h (B, H, W, C)."""
  if temb is None:
    return h
  return h + dense(h.shape[-1])(nn.swish(temb))[:, None, None, :]


def residual_sum(x: jax.Array, h: jax.Array, skip_rescale: bool) -> jax.Array:
  return (x + h) / np.sqrt(2.0) if skip_rescale else x + h


class ResBlock(nn.Module):
  """Residual block: GN-swish-(resample)-conv, + time, GN-swish-dropout-conv, on a shortcut.

  With up or down it is BigGAN's block (resampling inside both branches); without, DDPM's.
  The shortcut is a 1x1 conv where the shape changes, else the identity.
  """

  out_ch: int
  up: bool = False
  down: bool = False
  dropout: float = 0.0
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0
  host_kernel_grad: bool = True  # CPU: kernel gradients by OpenBLAS (conv_general_dilated).

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None, train: bool) -> jax.Array:
    """(B, H, W, C), temb (B, E) or None -> (B, H', W', out_ch), H' = 2H (up), H/2 (down), H."""
    h = nn.swish(group_norm(x))
    if self.up:
      h, x = (upsample(v, self.fir, self.fir_kernel) for v in (h, x))
    elif self.down:
      h, x = (downsample(v, self.fir, self.fir_kernel) for v in (h, x))
    h = conv(self.out_ch, host_kernel_grad=self.host_kernel_grad)(h)
    h = _add_time(h, temb)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.swish(group_norm(h)))
    h = conv(self.out_ch, init_scale=self.init_scale, host_kernel_grad=self.host_kernel_grad)(h)
    if x.shape[-1] != self.out_ch or self.up or self.down:
      x = conv(self.out_ch, kernel=1, host_kernel_grad=self.host_kernel_grad)(x)
    return residual_sum(x, h, self.skip_rescale)


class AttnBlock(nn.Module):
  """Single-head self-attention over all pixels, with a residual connection."""

  skip_rescale: bool = True
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H, W, C)."""
    b, hgt, wid, c = x.shape
    h = group_norm(x).reshape(b, hgt * wid, c)
    q, k, v = (dense(c)(h) for _ in range(3))
    weights = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) / np.sqrt(c), axis=-1)
    h = dense(c, init_scale=self.init_scale)(jnp.einsum("bij,bjc->bic", weights, v))
    return residual_sum(x, h.reshape(x.shape), self.skip_rescale)


class Combine(nn.Module):
  """Merges an input-pyramid level y (B, H, W, Cy) into h (B, H, W, C): 1x1 conv, sum or cat."""

  method: str = "sum"
  host_kernel_grad: bool = True  # CPU: kernel gradients by OpenBLAS (conv_general_dilated).

  @nn.compact
  def __call__(self, y: jax.Array, h: jax.Array) -> jax.Array:
    """-> (B, H, W, C) for 'sum', (B, H, W, 2C) for 'cat'."""
    y = conv(h.shape[-1], kernel=1, host_kernel_grad=self.host_kernel_grad)(y)
    return h + y if self.method == "sum" else jnp.concatenate([y, h], axis=-1)


class FourierEmbedding(nn.Module):
  """Random Fourier features [sin 2 pi w s, cos 2 pi w s] of a scalar s, w ~ N(0, scale^2)."""

  size: int
  scale: float = 16.0

  @nn.compact
  def __call__(self, s: jax.Array) -> jax.Array:
    """s (B,) -> (B, 2 size)."""
    w = self.param("w", nn.initializers.normal(self.scale), (self.size,))
    # The frequencies are drawn once at init and kept fixed, as in Song et al.
    proj = 2.0 * np.pi * s[:, None] * jax.lax.stop_gradient(w)[None, :]
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def positional_embedding(s: jax.Array, size: int, max_period: float = 10000.0) -> jax.Array:
  """Transformer/DDPM sinusoidal embedding of s (B,) -> (B, size), size even."""
  half = size // 2
  freqs = jnp.exp(-np.log(max_period) * jnp.arange(half) / (half - 1))
  proj = s[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)
