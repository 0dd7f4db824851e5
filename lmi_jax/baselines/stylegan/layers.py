"""StyleGAN2's layers (Karras et al. 2020): equalised learning rates, the modulated
convolution, and the [1,3,3,1] FIR resampling of the networks in `networks`. All activations
are NHWC.

Modulation is applied to the activations and demodulation to the outputs (StyleGAN2's
non-fused path, the same function as the fused per-sample weights and far cheaper on a CPU).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LRELU_GAIN = math.sqrt(2.0)


def lrelu(x: jax.Array) -> jax.Array:
  """Leaky ReLU (slope 0.2) with StyleGAN's sqrt(2) gain that keeps unit variance."""
  return jax.nn.leaky_relu(x, 0.2) * LRELU_GAIN


def upsample_matrix(n: int) -> np.ndarray:
  """(2n, n): linear interpolation at half-pixel centres, the edge replicated (StyleGAN's
  [1,3,3,1] FIR up-sampling)."""
  m = np.zeros((2 * n, n), np.float32)
  for i in range(n):
    m[2 * i, max(i - 1, 0)] += 0.25
    m[2 * i, i] += 0.75
    m[2 * i + 1, i] += 0.75
    m[2 * i + 1, min(i + 1, n - 1)] += 0.25
  return m


def downsample_matrix(n: int) -> np.ndarray:
  """(n/2, n): the [1, 3, 3, 1] / 8 filter at every second pixel, the edge replicated."""
  m = np.zeros((n // 2, n), np.float32)
  for o in range(n // 2):
    for tap, weight in zip(range(2 * o - 1, 2 * o + 3), (1.0, 3.0, 3.0, 1.0)):
      m[o, min(max(tap, 0), n - 1)] += weight / 8.0
  return m


# Resampling as two small matrix products: as fast as slicing and shifting on a CPU, and
# ten times faster to compile (measured, forward and backward). Not lmi_jax.models.layers'
# FIR up/downsample: those pad with zeros where these replicate the edge, so the border
# pixels differ, and the shipped StyleGAN was trained with these.
def upsample2(x: jax.Array) -> jax.Array:
  """(N, H, W, C) -> (N, 2H, 2W, C), bilinear: StyleGAN's [1,3,3,1] FIR up-sampling."""
  return jnp.einsum("ph,nhwc,qw->npqc", upsample_matrix(x.shape[1]), x,
                    upsample_matrix(x.shape[2]))


def downsample2(x: jax.Array) -> jax.Array:
  """(N, H, W, C) -> (N, H/2, W/2, C), StyleGAN's [1,3,3,1] FIR down-sampling."""
  return jnp.einsum("ph,nhwc,qw->npqc", downsample_matrix(x.shape[1]), x,
                    downsample_matrix(x.shape[2]))


def conv2d(x: jax.Array, weight: jax.Array) -> jax.Array:
  """'SAME' stride-1 convolution of (N, H, W, Cin) with a (k, k, Cin, Cout) kernel."""
  return jax.lax.conv_general_dilated(x, weight, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def modulated_conv(x: jax.Array, weight: jax.Array, styles: jax.Array, demodulate: bool,
                   eps: float = 1e-8) -> jax.Array:
  """StyleGAN2's modulated convolution of each sample with its own style.

  The per-sample kernel is weight[..., i, o] * styles[n, i], divided (demodulation) by its
  norm over (kh, kw, i); computed as conv(x * styles) * (per-output coefficient).
  Args:
    x: (N, H, W, Cin); weight: (k, k, Cin, Cout); styles: (N, Cin).
  Returns:
    (N, H, W, Cout).
  """
  y = conv2d(x * styles[:, None, None, :], weight)
  if demodulate:
    squared = jnp.einsum("ni,io->no", jnp.square(styles), jnp.sum(jnp.square(weight), (0, 1)))
    y = y * jax.lax.rsqrt(squared + eps)[:, None, None, :]
  return y


class Dense(nn.Module):
  """Fully connected layer with equalised learning rate: weights N(0, 1/lr_mul^2) scaled at
  run time by lr_mul / sqrt(fan_in), so Adam's steps act lr_mul times slower."""
  features: int
  lr_mul: float = 1.0
  bias_init: float = 0.0
  activate: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", lambda k, s: jax.random.normal(k, s) / self.lr_mul,
                        (fan_in, self.features))
    # A float32 (not weakly typed) bias, so jitted steps see the same types every call.
    bias = self.param("bias", lambda k, s: jnp.full(s, self.bias_init / self.lr_mul,
                                                    jnp.float32), (self.features,))
    y = x @ (kernel * (self.lr_mul / math.sqrt(fan_in))) + bias * self.lr_mul
    return lrelu(y) if self.activate else y


class Conv(nn.Module):
  """Convolution with equalised learning rate; (N, H, W, Cin) -> (N, H, W, features)."""
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  activate: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, cin = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0), (k, k, cin, self.features))
    y = conv2d(x, kernel / math.sqrt(k * k * cin))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return lrelu(y) if self.activate else y


class StyleConv(nn.Module):
  """Modulated, demodulated 3 x 3 convolution, noise input, bias, leaky ReLU."""
  features: int
  up: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array, noise: jax.Array) -> jax.Array:
    """x: (N, H, W, Cin), w: (N, w_dim), noise: (N or 1, H', W', 1) -> (N, H', W', features)
    (H' = 2H if up)."""
    cin = x.shape[-1]
    styles = Dense(cin, bias_init=1.0, name="affine")(w)
    kernel = self.param("kernel", nn.initializers.normal(1.0), (3, 3, cin, self.features))
    if self.up:
      x = upsample2(x)
    y = modulated_conv(x, kernel, styles, demodulate=True)
    y = y + noise * self.param("noise_strength", nn.initializers.zeros, ())
    return lrelu(y + self.param("bias", nn.initializers.zeros, (self.features,)))


class ToRGB(nn.Module):
  """Modulated 1 x 1 convolution to one channel, without demodulation."""

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
    """x: (N, H, W, C), w: (N, w_dim) -> (N, H, W, 1)."""
    cin = x.shape[-1]
    styles = Dense(cin, bias_init=1.0, name="affine")(w) / math.sqrt(cin)
    kernel = self.param("kernel", nn.initializers.normal(1.0), (1, 1, cin, 1))
    return modulated_conv(x, kernel, styles, demodulate=False) + self.param(
        "bias", nn.initializers.zeros, (1,))
