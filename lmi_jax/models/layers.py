"""Building blocks of NCSN++ (Song et al. 2021): resampling, residual and attention blocks,
noise-level embeddings. All activations are NHWC.

`init_scale` follows NCSN++: the layer that closes a residual branch (and the network's
output layer) starts at that scale of a fan-avg uniform init; 0 makes it zero, so every
block starts as the identity and the untrained network outputs 0.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def variance_scaling(scale: float) -> nn.initializers.Initializer:
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def conv(features: int, kernel: int = 3, stride: int = 1, init_scale: float = 1.0,
         padding: str = "SAME") -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=padding,
                 kernel_init=variance_scaling(init_scale))


def dense(features: int, init_scale: float = 1.0) -> nn.Dense:
  return nn.Dense(features, kernel_init=variance_scaling(init_scale))


def group_norm(x: jax.Array) -> jax.Array:
  """GroupNorm with min(C // 4, 32) groups, as in NCSN++; x (B, H, W, C)."""
  return nn.GroupNorm(num_groups=min(x.shape[-1] // 4, 32), epsilon=1e-6)(x)


def _fir_2d(taps: Sequence[int], gain: float) -> np.ndarray:
  """Separable 2-D FIR kernel (K, K) from 1-D taps, summing to `gain`."""
  k = np.outer(taps, taps).astype(np.float32)
  return k * (gain / k.sum())


def _depthwise(x: jax.Array, k: np.ndarray, stride: int, dilation: int,
               pad: tuple[int, int]) -> jax.Array:
  """Filters every channel of x (B, H, W, C) with the same 2-D kernel k (true convolution)."""
  c = x.shape[-1]
  w = jnp.tile(jnp.asarray(k[::-1, ::-1])[:, :, None, None], (1, 1, 1, c))
  return jax.lax.conv_general_dilated(
      x, w.astype(x.dtype), (stride, stride), (pad, pad), lhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def upsample(x: jax.Array, fir: bool, taps: Sequence[int]) -> jax.Array:
  """(B, H, W, C) -> (B, 2H, 2W, C): FIR interpolation of zero-stuffed x, or nearest."""
  if not fir:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  p = len(taps) - 2
  # lhs_dilation stuffs zeros only between samples; the extra 1 on the right stands for the
  # trailing zero of a factor-2 upsampling, so the output is exactly 2H.
  return _depthwise(x, _fir_2d(taps, 4.0), 1, 2, ((p + 1) // 2 + 1, p // 2 + 1))


def downsample(x: jax.Array, fir: bool, taps: Sequence[int]) -> jax.Array:
  """(B, H, W, C) -> (B, H/2, W/2, C): FIR low-pass then every second pixel, or 2x2 mean."""
  if not fir:
    return nn.avg_pool(x, (2, 2), (2, 2))
  p = len(taps) - 2
  return _depthwise(x, _fir_2d(taps, 1.0), 2, 1, ((p + 1) // 2, p // 2))


class Upsample(nn.Module):
  """2x upsampling, optionally followed by a 3x3 conv to out_ch channels."""

  out_ch: int | None = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, 2H, 2W, out_ch or C)."""
    h = upsample(x, self.fir, self.fir_kernel)
    if self.with_conv:
      h = conv(self.out_ch or x.shape[-1])(h)
    return h


class Downsample(nn.Module):
  """2x downsampling; with_conv makes it a stride-2 3x3 conv to out_ch channels."""

  out_ch: int | None = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H/2, W/2, out_ch or C)."""
    out_ch = self.out_ch or x.shape[-1]
    if not self.with_conv:
      return downsample(x, self.fir, self.fir_kernel)
    if not self.fir:
      return conv(out_ch, stride=2)(x)
    # Low-pass at full resolution (padded for the 3x3 conv), then the strided conv samples it.
    p = len(self.fir_kernel)
    h = _depthwise(x, _fir_2d(self.fir_kernel, 1.0), 1, 1, ((p + 1) // 2, p // 2))
    return conv(out_ch, stride=2, padding="VALID")(h)


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

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None, train: bool) -> jax.Array:
    """(B, H, W, C), temb (B, E) or None -> (B, H', W', out_ch), H' = 2H (up), H/2 (down), H."""
    h = nn.swish(group_norm(x))
    if self.up:
      h, x = (upsample(v, self.fir, self.fir_kernel) for v in (h, x))
    elif self.down:
      h, x = (downsample(v, self.fir, self.fir_kernel) for v in (h, x))
    h = conv(self.out_ch)(h)
    h = _add_time(h, temb)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.swish(group_norm(h)))
    h = conv(self.out_ch, init_scale=self.init_scale)(h)
    if x.shape[-1] != self.out_ch or self.up or self.down:
      x = conv(self.out_ch, kernel=1)(x)
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

  @nn.compact
  def __call__(self, y: jax.Array, h: jax.Array) -> jax.Array:
    """-> (B, H, W, C) for 'sum', (B, H, W, 2C) for 'cat'."""
    y = conv(h.shape[-1], kernel=1)(y)
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
