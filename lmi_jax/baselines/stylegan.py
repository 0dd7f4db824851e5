"""GAN-inversion baseline of the paper's Table 1: a small StyleGAN2-ADA trained on target
slices only, an in-domain encoder (Zhu et al. 2020, the paper's ref. 27), and a translation
that inverts each source slice into the generator's W+ space.

Reads top to bottom: equalised-learning-rate layers and the modulated convolution; the
mapping, synthesis, discriminator and encoder networks; adaptive discriminator augmentation
(ADA); the four lazy-regularised training phases (G main, G path length, D main, D R1); the
encoder's training; the inversion; `train`, `load` and `translate`. The resumable,
time-limited loop (checkpoints in WORKDIR/stylegan[/encoder]/checkpoints, TensorBoard,
preview.png), fast PRNG keys and the msgpack export / load are `lmi_jax.baselines.common`'s.

Networks (Karras et al. 2020, StyleGAN2-ADA). Mapping: z (z_dim) normalised, `mapping_layers`
fully connected layers with learning-rate multiplier `mapping_lr_mul` (0.01) -> w (w_dim).
Synthesis: a learned 4 x 4 constant, per resolution two 3 x 3 modulated / demodulated
convolutions (the first after a bilinear 2x up-sampling, which is StyleGAN's [1,3,3,1] FIR)
with per-layer noise inputs of learned strength, and a skip architecture of 1 x 1 toRGB
outputs summed over up-sampled resolutions; W+ has num_ws = 2 log2(image_size) - 2 rows.
Modulation is applied to the activations and demodulation to the outputs (StyleGAN2's
non-fused path, the same function as the fused per-sample weights and far cheaper on a CPU).
Discriminator: a ResNet (1 x 1 fromRGB, per resolution a 3 x 3 conv, [1,3,3,1] down-sampling,
a 3 x 3 conv, and a 1 x 1 skip, summed / sqrt 2), minibatch standard deviation over groups of
`mbstd_group`, a 3 x 3 conv and two fully connected layers. All layers use equalised learning
rates. Channels at resolution r: min(channel_base / r, channel_max), in all three networks.

Training. Non-saturating logistic loss; lazy R1 on reals every `r1_interval` D steps
(weight r1_gamma / 2); path-length regularisation every `pl_interval` G steps on half the
batch (weight `pl_weight`, 0 turns it off); style mixing; Adam (0, 0.99) with lazy-regularisation
corrected rates; an EMA of the generator with a half-life of `ema_kimg` thousand images
(ramped up). ADA: x-flip, 90-degree rotation, integer translation (1/8 of the size,
reflected), brightness and contrast, each applied to reals and fakes with probability p; p
moves by sign(E[sign D(real)] - ada_target) * images / (ada_kimg * 1000) every
`ada_interval` steps.

In-domain inversion (Zhu et al. 2020). The encoder E maps an image to W+ (as w_avg plus a
residual from a zero-initialised head) and is trained on target training slices, with G and
D frozen, to minimise ||x - G(E(x))||^2 + feature_weight * F(x, G(E(x))) +
adv_weight * softplus(-D(G(E(x)))); F is the distance of the discriminator's first
`feature_blocks` + 1 feature maps, each unit-normalised over channels (the stand-in for a
pretrained perceptual network, which cannot be downloaded here). A translation starts from
w = E(source) and runs `inversion_steps` Adam steps on W+ for all slices at once (the
StyleGAN2 projector's rate schedule: 5% ramp-up, cosine ramp-down over the last 25%),
minimising the same pixel + feature loss to the source slice plus
domain_weight * ||w - E(G(w))||^2 (Zhu et al.'s domain-regularised objective, off by
default), with the generator's noise fixed, and returns G(w).

CPU sizes (configs/default.py; 64 x 64 phantom): z = w = 64, two mapping layers,
channel_base 1024 and channel_max 64 (64 channels at 4-16 px, 32 at 32 px, 16 at 64 px),
batch 8: generator 0.27M, discriminator 0.30M, encoder 0.66M parameters (4.9 MB exported).
Measured on the 2-core CPU while three other jobs shared it (load 7-11): 1.2-1.6 s per
training iteration (G, D, lazy R1 and path length; the path-length step takes 0.31 s every
4 iterations, about 5%, so it is kept), 1189 iterations (9.5 kimg) in 35 minutes; 0.4-0.9 s
per encoder step; the inversion costs 0.08 CPU-seconds per slice and step (30 slices: 2.3
CPU-s per step, about 40 minutes per 1000 steps), so the paper's 5000 steps for the 75 test
slices take about 8 CPU-hours here.
"""

import dataclasses
import functools
import itertools
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from lmi_jax import checkpoints
from lmi_jax.baselines import common
from lmi_jax.data import load_dataset
from lmi_jax.errors import InputError, key_checker

Params = Any
FOLDER = "stylegan"  # WORKDIR/stylegan: the GAN's checkpoints, TensorBoard events, preview.
ENCODER_FOLDER = "encoder"  # WORKDIR/stylegan/encoder: the same for the encoder.
EXPORT_NAME = "stylegan"  # WORKDIR/baselines/stylegan.msgpack and .json.
LRELU_GAIN = math.sqrt(2.0)
# ADA's augmentation strengths (Karras et al. 2020, augment.py defaults).
TRANSLATE_FRACTION = 0.125
BRIGHTNESS_STD = 0.2
CONTRAST_LOG2_STD = 0.5
PL_DECAY = 0.01  # EMA rate of the path-length target.
W_AVG_BETA = 0.995  # EMA rate of the tracked mean w (the inversion's and encoder's origin).


# --------------------------------------------------------------------------------------
# Layers


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
# ten times faster to compile (measured, forward and backward).
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


# --------------------------------------------------------------------------------------
# Networks


def channels(resolution: int, channel_base: int, channel_max: int) -> int:
  """Feature maps at a resolution: min(channel_base / resolution, channel_max)."""
  return max(1, min(channel_base // resolution, channel_max))


def resolutions(image_size: int) -> list[int]:
  """[4, 8, ..., image_size]."""
  return [2 ** i for i in range(2, int(round(math.log2(image_size))) + 1)]


def num_ws(image_size: int) -> int:
  """Rows of W+: one per modulated layer that takes its own w (2 log2(size) - 2)."""
  return 2 * len(resolutions(image_size))


def noise_sizes(image_size: int) -> list[int]:
  """Sizes of the synthesis network's noise maps, in layer order (one at 4, two per larger)."""
  return [4] + [r for r in resolutions(image_size)[1:] for _ in range(2)]


def random_noise(key: jax.Array, batch: int, image_size: int) -> list[jax.Array]:
  """Per-layer noise maps (batch, r, r, 1) drawn in one call (one PRNG graph compiles far
  faster than one per layer)."""
  sizes = noise_sizes(image_size)
  flat = jax.random.normal(key, (batch, sum(r * r for r in sizes)))
  offsets = np.cumsum([0] + [r * r for r in sizes])
  return [flat[:, offsets[i]:offsets[i + 1]].reshape(batch, r, r, 1)
          for i, r in enumerate(sizes)]


def fixed_noise(image_size: int) -> list[jax.Array]:
  """The constant noise maps (1, r, r, 1) used for inversion and samples (fixed seed)."""
  rng = np.random.default_rng(0)
  return [jnp.asarray(rng.standard_normal((1, r, r, 1)), jnp.float32)
          for r in noise_sizes(image_size)]


class Mapping(nn.Module):
  """z (N, z_dim) -> w (N, w_dim)."""
  w_dim: int
  num_layers: int
  lr_mul: float

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = z * jax.lax.rsqrt(jnp.mean(jnp.square(z), -1, keepdims=True) + 1e-8)
    for i in range(self.num_layers):
      x = Dense(self.w_dim, lr_mul=self.lr_mul, activate=True, name=f"fc{i}")(x)
    return x


class Synthesis(nn.Module):
  """W+ (N, num_ws, w_dim) -> images (N, image_size, image_size, 1), about [-1, 1]."""
  image_size: int
  channel_base: int
  channel_max: int

  @nn.compact
  def __call__(self, ws: jax.Array, noise: Sequence[jax.Array]) -> jax.Array:
    """ws: (N, num_ws, w_dim); noise: the maps of `random_noise` or `fixed_noise`."""
    ch = lambda r: channels(r, self.channel_base, self.channel_max)
    const = self.param("const", nn.initializers.normal(1.0), (4, 4, ch(4)))
    x = jnp.broadcast_to(const, (ws.shape[0],) + const.shape)
    x = StyleConv(ch(4), name="b4_conv")(x, ws[:, 0], noise[0])
    image = ToRGB(name="b4_torgb")(x, ws[:, 1])
    for i, res in enumerate(resolutions(self.image_size)[1:]):
      first = 2 * i + 1  # The toRGB of a block shares its w with the next block's first conv.
      x = StyleConv(ch(res), up=True, name=f"b{res}_conv0")(x, ws[:, first], noise[first])
      x = StyleConv(ch(res), name=f"b{res}_conv1")(x, ws[:, first + 1], noise[first + 1])
      image = upsample2(image) + ToRGB(name=f"b{res}_torgb")(x, ws[:, first + 2])
    return image


class ResNetTrunk(nn.Module):
  """fromRGB and residual down-sampling blocks from image_size to 4 x 4.

  Returns the feature maps after fromRGB and after each block (the last is 4 x 4), or only
  the first `depth` + 1 of them when depth is given (the later blocks are not run).
  """
  image_size: int
  channel_base: int
  channel_max: int

  @nn.compact
  def __call__(self, image: jax.Array, depth: int | None = None) -> list[jax.Array]:
    ch = lambda r: channels(r, self.channel_base, self.channel_max)
    x = Conv(ch(self.image_size), kernel_size=1, name="fromrgb")(image)
    features = [x]
    for res in resolutions(self.image_size)[:0:-1]:
      if depth is not None and len(features) > depth:
        break
      y = Conv(ch(res), name=f"b{res}_conv0")(x)
      y = Conv(ch(res // 2), name=f"b{res}_conv1")(downsample2(y))
      skip = Conv(ch(res // 2), kernel_size=1, use_bias=False, activate=False,
                  name=f"b{res}_skip")(downsample2(x))
      x = (y + skip) * math.sqrt(0.5)
      features.append(x)
    return features


def minibatch_stddev(x: jax.Array, group_size: int) -> jax.Array:
  """Appends the std over groups of samples, averaged over (H, W, C), as a channel.

  Sample n is grouped with samples n +- k * (N / group); (N, H, W, C) -> (N, H, W, C + 1).
  """
  n, h, w, c = x.shape
  group = min(group_size, n)
  if n % group:
    group = math.gcd(n, group)
  y = x.reshape(group, n // group, h, w, c)
  std = jnp.sqrt(jnp.var(y, axis=0) + 1e-8).mean(axis=(1, 2, 3))
  return jnp.concatenate([x, jnp.broadcast_to(jnp.tile(std, group)[:, None, None, None],
                                              (n, h, w, 1))], -1)


class Discriminator(nn.Module):
  """(N, H, W, 1) images -> (logits (N,), feature maps of the trunk).

  parts > 1: the batch is that many equal batches (fakes and reals) judged in one pass;
  the minibatch std groups samples within each part only, as separate calls would.
  """
  image_size: int
  channel_base: int
  channel_max: int
  mbstd_group: int

  @nn.compact
  def __call__(self, image: jax.Array, parts: int = 1) -> tuple[jax.Array, list[jax.Array]]:
    features = ResNetTrunk(self.image_size, self.channel_base, self.channel_max,
                           name="trunk")(image)
    c4 = channels(4, self.channel_base, self.channel_max)
    last = features[-1]
    x = jax.vmap(lambda part: minibatch_stddev(part, self.mbstd_group))(
        last.reshape((parts, -1) + last.shape[1:])).reshape(last.shape[:3] + (-1,))
    x = Conv(c4, name="epilogue_conv")(x)
    x = Dense(c4, activate=True, name="epilogue_fc")(x.reshape(x.shape[0], -1))
    return Dense(1, name="out")(x)[:, 0], features


class Encoder(nn.Module):
  """(N, H, W, 1) images in [-1, 1] -> W+ (N, num_ws, w_dim) = w_avg + a residual."""
  image_size: int
  channel_base: int
  channel_max: int
  w_dim: int

  @nn.compact
  def __call__(self, image: jax.Array, w_avg: jax.Array) -> jax.Array:
    x = ResNetTrunk(self.image_size, self.channel_base, self.channel_max, name="trunk")(image)[-1]
    x = Conv(channels(4, self.channel_base, self.channel_max), name="head_conv")(x)
    x = Dense(4 * self.w_dim, activate=True, name="head_fc")(x.reshape(x.shape[0], -1))
    rows = num_ws(self.image_size)
    # A zero head starts every image at w_avg, the generator's mean image.
    delta = nn.Dense(rows * self.w_dim, kernel_init=nn.initializers.zeros, name="head_out")(x)
    return w_avg + delta.reshape(-1, rows, self.w_dim)


@dataclasses.dataclass(frozen=True)
class Nets:
  """The four networks of a config (hashable, so it can close over jitted functions)."""
  mapping: Mapping
  synthesis: Synthesis
  discriminator: Discriminator
  encoder: Encoder
  z_dim: int
  w_dim: int
  num_ws: int
  image_size: int


def build_nets(config: ml_collections.ConfigDict) -> Nets:
  """The networks of config.stylegan at config.data.image_size."""
  sg, size = config.stylegan, int(config.data.image_size)
  base, cmax = int(sg.channel_base), int(sg.channel_max)
  return Nets(
      mapping=Mapping(int(sg.w_dim), int(sg.mapping_layers), float(sg.mapping_lr_mul)),
      synthesis=Synthesis(size, base, cmax),
      discriminator=Discriminator(size, base, cmax, int(sg.mbstd_group)),
      encoder=Encoder(size, base, cmax, int(sg.w_dim)),
      z_dim=int(sg.z_dim), w_dim=int(sg.w_dim), num_ws=num_ws(size), image_size=size)


def init_gan(nets: Nets, key: jax.Array) -> dict[str, Params]:
  """{"g": {"mapping", "synthesis"}, "d": discriminator} parameters."""
  k_map, k_syn, k_d = jax.random.split(key, 3)
  size = nets.image_size
  ws = jnp.zeros((2, nets.num_ws, nets.w_dim))
  return {"g": {"mapping": nets.mapping.init(k_map, jnp.zeros((2, nets.z_dim)))["params"],
                "synthesis": nets.synthesis.init(k_syn, ws, fixed_noise(size))["params"]},
          "d": nets.discriminator.init(k_d, jnp.zeros((2, size, size, 1)))["params"]}


def init_encoder(nets: Nets, key: jax.Array) -> Params:
  """The encoder's parameters."""
  size = nets.image_size
  return nets.encoder.init(key, jnp.zeros((2, size, size, 1)),
                           jnp.zeros((nets.w_dim,)))["params"]


def count_params(tree: Params) -> int:
  """Scalars in a pytree of arrays or shape structs."""
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def synthesize(nets: Nets, g: Params, ws: jax.Array, noise_key: jax.Array | None) -> jax.Array:
  """G(W+): ws (N, num_ws, w_dim) -> (N, H, W, 1); noise_key None fixes the noise."""
  if noise_key is None:
    noise = fixed_noise(nets.image_size)
  else:
    noise = random_noise(noise_key, ws.shape[0], nets.image_size)
  return nets.synthesis.apply({"params": g["synthesis"]}, ws, noise)


def sample_ws(nets: Nets, g: Params, key: jax.Array, batch: int,
              mixing_prob: float) -> jax.Array:
  """W+ of random z (N, num_ws, w_dim); with probability mixing_prob the rows from a random
  cutoff on come from a second z (style mixing regularisation)."""
  k_z, k_z2, k_cut, k_mix = jax.random.split(key, 4)
  w = nets.mapping.apply({"params": g["mapping"]}, jax.random.normal(k_z, (batch, nets.z_dim)))
  ws = jnp.broadcast_to(w[:, None], (batch, nets.num_ws, nets.w_dim))
  if mixing_prob <= 0:
    return ws
  w2 = nets.mapping.apply({"params": g["mapping"]}, jax.random.normal(k_z2, (batch, nets.z_dim)))
  cutoff = jax.random.randint(k_cut, (batch,), 1, nets.num_ws)
  cutoff = jnp.where(jax.random.uniform(k_mix, (batch,)) < mixing_prob, cutoff, nets.num_ws)
  return jnp.where(jnp.arange(nets.num_ws)[None, :, None] < cutoff[:, None, None], ws,
                   w2[:, None])


def discriminate(nets: Nets, d: Params, images: jax.Array,
                 parts: int = 1) -> tuple[jax.Array, list[jax.Array]]:
  """D(images): (N, H, W, 1) -> (logits (N,), feature maps); see Discriminator's parts."""
  return nets.discriminator.apply({"params": d}, images, parts)


def d_features(nets: Nets, d: Params, images: jax.Array, depth: int) -> list[jax.Array]:
  """The discriminator's first depth + 1 feature maps (fromRGB and `depth` blocks)."""
  return ResNetTrunk(nets.image_size, nets.discriminator.channel_base,
                     nets.discriminator.channel_max).apply(
                         {"params": d["trunk"]}, images, depth)


def feature_distance(features_a: Sequence[jax.Array],
                     features_b: Sequence[jax.Array]) -> jax.Array:
  """Per-sample mean over layers of the spatial mean of ||a - b||^2, each feature vector
  unit-normalised over channels (as LPIPS, without learned weights); (N,)."""
  def unit(f):
    return f * jax.lax.rsqrt(jnp.sum(jnp.square(f), -1, keepdims=True) + 1e-10)
  per_layer = [jnp.mean(jnp.sum(jnp.square(unit(a) - unit(b)), -1), (1, 2))
               for a, b in zip(features_a, features_b)]
  return jnp.mean(jnp.stack(per_layer), 0)


def encode(nets: Nets, encoder: Params, images: jax.Array, w_avg: jax.Array) -> jax.Array:
  """E(images): (N, H, W, 1) in [-1, 1] -> W+ (N, num_ws, w_dim)."""
  return nets.encoder.apply({"params": encoder}, images, w_avg)


# --------------------------------------------------------------------------------------
# Adaptive discriminator augmentation


def augment(images: jax.Array, p: jax.Array, key: jax.Array) -> jax.Array:
  """ADA's differentiable pipeline; each transform applies to a sample with probability p.

  x-flip, rotation by a random multiple of 90 degrees, integer translation by up to 1/8 of
  the size (reflected at the border), brightness + N(0, 0.2), contrast x 2^N(0, 0.5) (about
  0, the middle of [-1, 1]).
  Args:
    images: (N, H, W, C), square; p: scalar in [0, 1].
  """
  n, h, w, _ = images.shape
  keys = jax.random.split(key, 10)
  apply = lambda k: jax.random.uniform(k, (n,)) < p
  per_sample = lambda mask: mask[:, None, None, None]

  flip = apply(keys[0]) & jax.random.bernoulli(keys[1], 0.5, (n,))
  images = jnp.where(per_sample(flip), images[:, :, ::-1], images)

  turns = jnp.where(apply(keys[2]), jax.random.randint(keys[3], (n,), 0, 4), 0)
  rotated = images
  for k in range(1, 4):
    rotated = jnp.where(per_sample(turns == k), jnp.rot90(images, k, axes=(1, 2)), rotated)
  images = rotated

  shift = jnp.round(jax.random.uniform(keys[4], (n, 2), minval=-TRANSLATE_FRACTION,
                                       maxval=TRANSLATE_FRACTION) * jnp.array([h, w]))
  shift = jnp.where(apply(keys[5])[:, None], shift, 0).astype(jnp.int32)

  def reflect(index, size):
    index = jnp.abs(index)
    return (size - 1) - jnp.abs((size - 1) - index)
  rows = reflect(jnp.arange(h)[None, :] - shift[:, :1], h)
  cols = reflect(jnp.arange(w)[None, :] - shift[:, 1:], w)
  images = images[jnp.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]

  bright = jnp.where(apply(keys[6]), jax.random.normal(keys[7], (n,)) * BRIGHTNESS_STD, 0.0)
  contrast = jnp.where(apply(keys[8]),
                       jnp.exp2(jax.random.normal(keys[9], (n,)) * CONTRAST_LOG2_STD), 1.0)
  return (images + per_sample(bright)) * per_sample(contrast)


def ada_adjust(p: jax.Array, sign_mean: jax.Array, num_images: int, target: float,
               ada_kimg: float) -> jax.Array:
  """ADA's update of p: up when E[sign D(real)] (the overfitting heuristic r_t) exceeds the
  target, down otherwise, by num_images / (ada_kimg * 1000), kept in [0, 1]."""
  step = jnp.sign(sign_mean - target) * num_images / (ada_kimg * 1000.0)
  return jnp.clip(p + step, 0.0, 1.0)


# --------------------------------------------------------------------------------------
# GAN training phases


@dataclasses.dataclass(frozen=True)
class GanSettings:
  """Static settings of the GAN's training phases."""
  batch_size: int
  g_lr: float
  d_lr: float
  r1_gamma: float
  r1_interval: int
  pl_weight: float
  pl_interval: int
  style_mixing: float
  ema_kimg: float
  ema_rampup: float

  @classmethod
  def from_config(cls, sg: ml_collections.ConfigDict) -> "GanSettings":
    """The settings of config.stylegan."""
    return cls(batch_size=int(sg.batch_size), g_lr=float(sg.g_lr), d_lr=float(sg.d_lr),
               r1_gamma=float(sg.r1_gamma), r1_interval=int(sg.r1_interval),
               pl_weight=float(sg.pl_weight), pl_interval=int(sg.pl_interval),
               style_mixing=float(sg.style_mixing), ema_kimg=float(sg.ema_kimg),
               ema_rampup=float(sg.ema_rampup))


def lazy_adam(lr: float, interval: int, regularised: bool) -> optax.GradientTransformation:
  """Adam (beta1 0, beta2 0.99) with StyleGAN2's correction for lazy regularisation."""
  ratio = interval / (interval + 1) if regularised else 1.0
  return optax.adam(lr * ratio, b1=0.0, b2=0.99 ** ratio, eps=1e-8)


def gan_optimizers(s: GanSettings) -> tuple[optax.GradientTransformation,
                                             optax.GradientTransformation]:
  """(G optimizer, D optimizer)."""
  return (lazy_adam(s.g_lr, s.pl_interval, s.pl_weight > 0),
          lazy_adam(s.d_lr, s.r1_interval, s.r1_gamma > 0))


@flax.struct.dataclass
class GanState:
  """The GAN's training state. key: the raw data of a `common.fast_key`; pl_mean: the
  path-length target; ada_sum / ada_count: D's mean sign on reals since ADA's last update;
  ada_rt, pl_penalty, r1_penalty: their latest values, for the logs."""
  step: jax.Array
  key: jax.Array
  g: Params
  d: Params
  g_ema: Params
  g_opt: Any
  d_opt: Any
  w_avg: jax.Array
  pl_mean: jax.Array
  ada_p: jax.Array
  ada_sum: jax.Array
  ada_count: jax.Array
  ada_rt: jax.Array
  pl_penalty: jax.Array
  r1_penalty: jax.Array


def create_gan_state(nets: Nets, s: GanSettings, key: jax.Array) -> GanState:
  """The state at step 0 (G's EMA starts as G; w_avg, p and the statistics at zero)."""
  k_init, k_run = jax.random.split(key)
  params = init_gan(nets, k_init)
  g_opt, d_opt = gan_optimizers(s)
  zero = jnp.zeros((), jnp.float32)
  return GanState(step=jnp.zeros((), jnp.int32), key=jax.random.key_data(k_run),
                  g=params["g"], d=params["d"], g_ema=params["g"],
                  g_opt=g_opt.init(params["g"]), d_opt=d_opt.init(params["d"]),
                  w_avg=jnp.zeros((nets.w_dim,), jnp.float32), pl_mean=zero, ada_p=zero,
                  ada_sum=zero, ada_count=zero, ada_rt=zero, pl_penalty=zero, r1_penalty=zero)


def phase_key(state: GanState, phase: int) -> jax.Array:
  """The key of one phase (0 G, 1 G reg, 2 D, 3 D reg) of the state's step."""
  key = common.wrap_fast_key(state.key)
  return jax.random.fold_in(jax.random.fold_in(key, state.step), phase)


def real_batch(images: jax.Array, key: jax.Array, batch: int) -> jax.Array:
  """`batch` slices drawn with replacement from images (N, H, W, 1)."""
  return images[jax.random.randint(key, (batch,), 0, images.shape[0])]


def d_main_loss(nets: Nets, d: Params, fakes: jax.Array, reals: jax.Array, p: jax.Array,
                key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """softplus(D(aug fake)) + softplus(-D(aug real)), and D's outputs for logs and ADA.
  Fakes and reals (equal batches) go through D in one pass of two parts."""
  logits = discriminate(nets, d, augment(jnp.concatenate([fakes, reals]), p, key), parts=2)[0]
  logits_fake, logits_real = jnp.split(logits, 2)
  loss = jnp.mean(jax.nn.softplus(logits_fake)) + jnp.mean(jax.nn.softplus(-logits_real))
  return loss, {"d_real": jnp.mean(logits_real), "d_fake": jnp.mean(logits_fake),
                "real_sign": jnp.mean(jnp.sign(logits_real))}


def g_main_loss(nets: Nets, g: Params, d: Params, p: jax.Array, key: jax.Array,
                s: GanSettings) -> tuple[jax.Array, jax.Array]:
  """softplus(-D(aug G(z))) (non-saturating) and the mean w of the batch."""
  k_ws, k_noise, k_aug = jax.random.split(key, 3)
  ws = sample_ws(nets, g, k_ws, s.batch_size, s.style_mixing)
  logits, _ = discriminate(nets, d, augment(synthesize(nets, g, ws, k_noise), p, k_aug))
  return jnp.mean(jax.nn.softplus(-logits)), jnp.mean(ws[:, 0], 0)


def r1_loss(nets: Nets, d: Params, reals: jax.Array, p: jax.Array, key: jax.Array) -> jax.Array:
  """Mean over samples of ||d D(aug x) / d x||^2 at reals (the R1 penalty, unweighted)."""
  grads = jax.grad(lambda x: jnp.sum(discriminate(nets, d, augment(x, p, key))[0]))(reals)
  return jnp.mean(jnp.sum(jnp.square(grads), (1, 2, 3)))


def path_length_loss(nets: Nets, g: Params, pl_mean: jax.Array, key: jax.Array,
                     batch: int) -> tuple[jax.Array, jax.Array]:
  """StyleGAN2's path-length penalty mean (|J_w^T y| - a)^2, y ~ N(0, I / (H W)), and the
  updated target a (an EMA of the lengths)."""
  k_ws, k_noise, k_y = jax.random.split(key, 3)
  ws = sample_ws(nets, g, k_ws, batch, 0.0)
  size = nets.image_size
  y = jax.random.normal(k_y, (batch, size, size, 1)) / size
  grads = jax.grad(lambda w: jnp.sum(synthesize(nets, g, w, k_noise) * y))(ws)
  lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), -1), -1))
  new_mean = pl_mean + PL_DECAY * (jax.lax.stop_gradient(jnp.mean(lengths)) - pl_mean)
  return jnp.mean(jnp.square(lengths - new_mean)), new_mean


def ema_beta(step: jax.Array, s: GanSettings) -> jax.Array:
  """G's EMA decay per step: half-life ema_kimg thousand images, at most ema_rampup times
  the images seen so far."""
  seen = step.astype(jnp.float32) * s.batch_size
  half_life = jnp.minimum(s.ema_kimg * 1000.0, jnp.maximum(seen * s.ema_rampup, 1e-8))
  return 0.5 ** (s.batch_size / half_life)


def make_gan_steps(nets: Nets, s: GanSettings) -> dict[str, Callable]:
  """Jitted phases, each (state, images (N, H, W, 1) in [-1, 1]) -> (state, metrics):
  "g" (main G step, EMA and w_avg update), "g_reg" (path length), "d" (main D step, ADA's
  sign accumulator), "d_reg" (R1). None of them advances the step: `gan_iteration` does."""
  g_opt, d_opt = gan_optimizers(s)

  def g_step(state, images):
    del images
    grad_fn = jax.value_and_grad(lambda g: g_main_loss(nets, g, state.d, state.ada_p,
                                                       phase_key(state, 0), s), has_aux=True)
    (loss, w_mean), grads = grad_fn(state.g)
    updates, g_opt_state = g_opt.update(grads, state.g_opt, state.g)
    g = optax.apply_updates(state.g, updates)
    beta = ema_beta(state.step, s)
    g_ema = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, state.g_ema, g)
    w_avg = state.w_avg + (1 - W_AVG_BETA) * (w_mean - state.w_avg)
    return state.replace(g=g, g_opt=g_opt_state, g_ema=g_ema, w_avg=w_avg), {"loss_g": loss}

  def g_reg_step(state, images):
    del images
    batch = max(1, s.batch_size // 2)

    def loss_fn(g):
      penalty, new_mean = path_length_loss(nets, g, state.pl_mean, phase_key(state, 1), batch)
      return penalty * s.pl_weight * s.pl_interval, (penalty, new_mean)
    (_, (penalty, new_mean)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g)
    updates, g_opt_state = g_opt.update(grads, state.g_opt, state.g)
    return state.replace(g=optax.apply_updates(state.g, updates), g_opt=g_opt_state,
                         pl_mean=new_mean, pl_penalty=penalty), {}

  def d_step(state, images):
    k_reals, k_ws, k_noise, k_loss = jax.random.split(phase_key(state, 2), 4)
    reals = real_batch(images, k_reals, s.batch_size)
    ws = sample_ws(nets, state.g, k_ws, s.batch_size, s.style_mixing)
    fakes = jax.lax.stop_gradient(synthesize(nets, state.g, ws, k_noise))
    grad_fn = jax.value_and_grad(
        lambda d: d_main_loss(nets, d, fakes, reals, state.ada_p, k_loss), has_aux=True)
    (loss, aux), grads = grad_fn(state.d)
    updates, d_opt_state = d_opt.update(grads, state.d_opt, state.d)
    return state.replace(d=optax.apply_updates(state.d, updates), d_opt=d_opt_state,
                         ada_sum=state.ada_sum + aux["real_sign"],
                         ada_count=state.ada_count + 1.0), {"loss_d": loss, **aux}

  def d_reg_step(state, images):
    k_reals, k_aug = jax.random.split(phase_key(state, 3))
    reals = real_batch(images, k_reals, s.batch_size)

    def loss_fn(d):
      penalty = r1_loss(nets, d, reals, state.ada_p, k_aug)
      return penalty * (s.r1_gamma / 2) * s.r1_interval, penalty
    (_, penalty), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d)
    updates, d_opt_state = d_opt.update(grads, state.d_opt, state.d)
    return state.replace(d=optax.apply_updates(state.d, updates), d_opt=d_opt_state,
                         r1_penalty=penalty), {}

  return {"g": jax.jit(g_step), "g_reg": jax.jit(g_reg_step), "d": jax.jit(d_step),
          "d_reg": jax.jit(d_reg_step)}


def gan_iteration(steps: dict[str, Callable], state: GanState, images: jax.Array,
                  s: GanSettings, sg: ml_collections.ConfigDict) -> tuple[GanState, dict]:
  """One training iteration at state.step: G, its lazy path-length step, D, its lazy R1
  step, ADA's p update every ada_interval steps; returns the state of the next step and
  the same metrics every step (the lazy ones at their latest values)."""
  step = int(state.step)
  state, g_metrics = steps["g"](state, images)
  if s.pl_weight > 0 and step % s.pl_interval == 0:
    state, _ = steps["g_reg"](state, images)
  state, d_metrics = steps["d"](state, images)
  if s.r1_gamma > 0 and step % s.r1_interval == 0:
    state, _ = steps["d_reg"](state, images)
  if (step + 1) % int(sg.ada_interval) == 0:
    sign_mean = state.ada_sum / jnp.maximum(state.ada_count, 1.0)
    p = ada_adjust(state.ada_p, sign_mean, s.batch_size * int(sg.ada_interval),
                   float(sg.ada_target), float(sg.ada_kimg))
    zero = jnp.zeros((), jnp.float32)
    state = state.replace(ada_p=p, ada_sum=zero, ada_count=zero, ada_rt=sign_mean)
  metrics = {**g_metrics, **d_metrics, "ada_p": state.ada_p, "ada_rt": state.ada_rt,
             "pl_mean": state.pl_mean, "pl_penalty": state.pl_penalty,
             "r1_penalty": state.r1_penalty}
  return state.replace(step=state.step + 1), metrics


# --------------------------------------------------------------------------------------
# Encoder and inversion


@dataclasses.dataclass(frozen=True)
class InversionLoss:
  """Weights of the reconstruction loss shared by the encoder and the inversion."""
  feature_weight: float
  feature_blocks: int
  adv_weight: float = 0.0
  domain_weight: float = 0.0


def reconstruction_loss(nets: Nets, model: dict[str, Params], ws: jax.Array,
                        targets: jax.Array, target_features: Sequence[jax.Array],
                        weights: InversionLoss) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-sample loss of G(ws) against targets (N, H, W, 1) in [-1, 1]: pixel MSE +
  feature_weight * D-feature distance (+ adv_weight * softplus(-D(G(ws))) + domain_weight *
  mean (ws - E(G(ws)))^2 when those are > 0). model: {"g", "d", "encoder", "w_avg"}
  (the encoder only for the domain term). Returns ((N,), per-sample parts)."""
  images = synthesize(nets, model["g"], ws, None)
  pixel = jnp.mean(jnp.square(images - targets), (1, 2, 3))
  feats = d_features(nets, model["d"], images, weights.feature_blocks)
  parts = {"pixel": pixel, "feature": feature_distance(feats, target_features)}
  loss = pixel + weights.feature_weight * parts["feature"]
  if weights.adv_weight > 0:
    parts["adv"] = jax.nn.softplus(-discriminate(nets, model["d"], images)[0])
    loss = loss + weights.adv_weight * parts["adv"]
  if weights.domain_weight > 0:
    reencoded = encode(nets, model["encoder"], images, model["w_avg"])
    parts["domain"] = jnp.mean(jnp.square(ws - reencoded), (1, 2))
    loss = loss + weights.domain_weight * parts["domain"]
  return loss, parts


def encoder_loss_weights(sg: ml_collections.ConfigDict) -> InversionLoss:
  """The encoder's loss weights from config.stylegan."""
  return InversionLoss(float(sg.encoder_feature_weight), int(sg.feature_blocks),
                       adv_weight=float(sg.encoder_adv_weight))


def inversion_loss_weights(sg: ml_collections.ConfigDict) -> InversionLoss:
  """The inversion's loss weights from config.stylegan."""
  return InversionLoss(float(sg.inversion_feature_weight), int(sg.feature_blocks),
                       domain_weight=float(sg.inversion_domain_weight))


@flax.struct.dataclass
class EncoderState:
  """The encoder's training state; gan_step: the GAN step it is trained against."""
  step: jax.Array
  gan_step: jax.Array
  key: jax.Array
  params: Params
  opt: Any


def make_encoder_step(nets: Nets, weights: InversionLoss, lr: float,
                      batch: int) -> tuple[Callable, optax.GradientTransformation]:
  """Jitted (state, images in [-1, 1], frozen {"g", "d", "w_avg"}) -> (state, metrics),
  one Adam step on a batch drawn (and x-flipped) from the state's key and step, and its
  optimizer."""
  optimizer = optax.adam(lr)

  def step(state, images, frozen):
    key = jax.random.fold_in(common.wrap_fast_key(state.key), state.step)
    k_batch, k_flip = jax.random.split(key)
    x = real_batch(images, k_batch, batch)
    x = jnp.where(jax.random.bernoulli(k_flip, 0.5, (batch, 1, 1, 1)), x[:, :, ::-1], x)
    target_features = d_features(nets, frozen["d"], x, weights.feature_blocks)

    def loss_fn(params):
      ws = encode(nets, params, x, frozen["w_avg"])
      loss, parts = reconstruction_loss(nets, frozen, ws, x, target_features, weights)
      return jnp.mean(loss), jax.tree.map(jnp.mean, parts)
    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt = optimizer.update(grads, state.opt, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt=opt), {"loss_e": loss, **parts}

  return jax.jit(step), optimizer


def inversion_lr_scale(step: jax.Array, total: jax.Array) -> jax.Array:
  """The StyleGAN2 projector's learning-rate schedule: a linear ramp-up over the first 5% of
  the steps and a cosine ramp-down over the last 25% (so the latent settles)."""
  t = (step.astype(jnp.float32) + 1.0) / total
  down = 0.5 - 0.5 * jnp.cos(jnp.pi * jnp.minimum(1.0, (1.0 - t) / 0.25))
  return down * jnp.minimum(1.0, t / 0.05)


def make_inversion(nets: Nets, weights: InversionLoss,
                   lr: float) -> tuple[Callable, Callable, Callable]:
  """Jitted (start, run, render): start(model, targets) -> carry; run(model, carry, first,
  num_steps, total) -> (carry, per-sample loss, pixel MSE) after Adam steps first ..
  first + num_steps - 1 of `total` (one lax.fori_loop; the rate follows
  `inversion_lr_scale`); render(model, ws) -> G(ws) in [0, 1].
  carry = (ws (N, num_ws, w_dim), Adam state, targets, target features)."""
  adam = optax.scale_by_adam()

  def start(model, targets):
    ws = encode(nets, model["encoder"], targets, model["w_avg"])
    return ws, adam.init(ws), targets, d_features(nets, model["d"], targets,
                                                  weights.feature_blocks)

  def loss_fn(model, ws, targets, target_features):
    loss, parts = reconstruction_loss(nets, model, ws, targets, target_features, weights)
    return jnp.sum(loss), (loss, parts["pixel"])

  def run(model, carry, first, num_steps, total):
    ws, opt, targets, target_features = carry

    def body(step, state):
      ws, opt, _, _ = state
      (_, (loss, pixel)), grads = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(
          model, ws, targets, target_features)
      direction, opt = adam.update(grads, opt, ws)
      return ws - lr * inversion_lr_scale(step, total) * direction, opt, loss, pixel
    zeros = jnp.zeros(targets.shape[0])
    ws, opt, loss, pixel = jax.lax.fori_loop(first, first + num_steps, body,
                                             (ws, opt, zeros, zeros))
    return (ws, opt, targets, target_features), loss, pixel

  def render(model, ws):
    return jnp.clip((synthesize(nets, model["g"], ws, None) + 1.0) / 2.0, 0.0, 1.0)

  return jax.jit(start), jax.jit(run, static_argnums=3), jax.jit(render)


def invert(config: ml_collections.ConfigDict, params: dict[str, Params], targets: np.ndarray,
           num_steps: int | None = None, log: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Inverts images into W+: start at E(x), `num_steps` (default stylegan.inversion_steps)
  Adam steps on the inversion loss, all images at once.

  Args:
    params: the exported parameters ({"g", "d", "encoder", "w_avg"}, see `load`).
    targets: (N, H, W, 1) in [0, 1].
  Returns:
    (ws (N, num_ws, w_dim), G(ws) (N, H, W, 1) in [0, 1]).
  """
  sg = config.stylegan
  nets = build_nets(config)
  num_steps = int(sg.inversion_steps if num_steps is None else num_steps)
  # At least ten progress lines: an inversion of a whole split runs for minutes on a CPU.
  chunk = max(1, min(int(sg.inversion_log_every), -(-num_steps // 10)))
  start, run, render = make_inversion(nets, inversion_loss_weights(sg), float(sg.inversion_lr))
  model = jax.device_put(params)
  carry = jax.block_until_ready(start(model, jnp.asarray(targets, jnp.float32) * 2.0 - 1.0))
  done, began = 0, time.perf_counter()
  while done < num_steps:
    todo = min(chunk, num_steps - done)
    carry, loss, pixel = run(model, carry, jnp.asarray(done), todo, jnp.asarray(num_steps))
    done += todo
    if log:
      loss, pixel = float(loss.mean()), float(pixel.mean())  # Waits for the chunk to finish.
      elapsed = time.perf_counter() - began
      logging.info("StyleGAN inversion of %d slices: step %d/%d, loss %.4g, pixel MSE %.4g, "
                   "%.1f s, ETA %.0f s", targets.shape[0], done, num_steps, loss, pixel,
                   elapsed, elapsed / done * (num_steps - done))
  return np.asarray(carry[0]), np.asarray(render(model, carry[0]), np.float32)


# --------------------------------------------------------------------------------------
# Config, checkpoints, samples, export


def check_config(config: ml_collections.ConfigDict) -> None:
  """InputError naming the first stylegan.* key (or data.image_size) that cannot work."""
  sg = config.stylegan
  size = int(config.data.image_size)
  if size < 8 or size & (size - 1):
    raise InputError(f"data.image_size={size}: the StyleGAN baseline needs a power of two "
                     ">= 8.")
  require = key_checker("stylegan", sg)
  for key in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "mbstd_group",
              "batch_size", "r1_interval", "pl_interval", "ada_interval", "log_every",
              "checkpoint_every", "encoder_batch_size", "inversion_log_every"):
    require(int(sg[key]) >= 1, key, "must be a positive integer")
  for key in ("num_steps", "encoder_steps", "inversion_steps", "preview_every", "feature_blocks"):
    require(int(sg[key]) >= 0, key, "must be >= 0")
  require(int(sg.feature_blocks) < len(resolutions(size)), "feature_blocks",
          f"must be below the {len(resolutions(size)) - 1} blocks of the discriminator")
  require(0.0 <= float(sg.ada_target) <= 1.0, "ada_target", "must be in [0, 1]")
  require(0.0 <= float(sg.style_mixing) <= 1.0, "style_mixing", "must be in [0, 1]")
  for key in ("g_lr", "d_lr", "encoder_lr", "inversion_lr", "ema_kimg", "ada_kimg",
              "mapping_lr_mul"):
    require(float(sg[key]) > 0, key, "must be > 0")
  for key in ("r1_gamma", "pl_weight", "ema_rampup", "encoder_feature_weight",
              "encoder_adv_weight", "inversion_feature_weight", "inversion_domain_weight",
              "time_limit_min", "encoder_time_limit_min"):
    require(float(sg[key]) >= 0, key, "must be >= 0")


@functools.partial(jax.jit, static_argnums=0)
def sample_images(nets: Nets, g: Params, z: jax.Array) -> jax.Array:
  """G(z) with fixed noise: z (N, z_dim) -> (N, H, W, 1) in [0, 1]."""
  w = nets.mapping.apply({"params": g["mapping"]}, z)
  ws = jnp.broadcast_to(w[:, None], (z.shape[0], nets.num_ws, nets.w_dim))
  return jnp.clip((synthesize(nets, g, ws, None) + 1) / 2, 0, 1)


@functools.partial(jax.jit, static_argnums=0)
def reconstruct(nets: Nets, encoder: Params, g: Params, w_avg: jax.Array,
                images: jax.Array) -> jax.Array:
  """G(E(x)) with fixed noise: (N, H, W, 1) in [0, 1] -> (N, H, W, 1) in [0, 1]."""
  ws = encode(nets, encoder, images * 2.0 - 1.0, w_avg)
  return jnp.clip((synthesize(nets, g, ws, None) + 1) / 2, 0, 1)


def train_gan(config: ml_collections.ConfigDict, workdir: str,
              images: np.ndarray) -> common.LoopResult:
  """Trains (resuming) the GAN in workdir/stylegan (checkpoints, TensorBoard, preview.png of
  G_ema samples above training slices) until stylegan.num_steps or time_limit_min.
  images: (N, H, W, 1) in [0, 1]."""
  sg = config.stylegan
  nets, s = build_nets(config), GanSettings.from_config(sg)
  state = jax.jit(create_gan_state, static_argnums=(0, 1))(nets, s,
                                                           common.fast_key(int(config.seed)))
  logging.info("StyleGAN: G %d, D %d parameters, %d training slices", count_params(state.g),
               count_params(state.d), images.shape[0])
  steps = make_gan_steps(nets, s)
  data = jnp.asarray(images, jnp.float32) * 2.0 - 1.0
  sample_z = jax.random.normal(common.fast_key(int(config.seed) + 1), (8, nets.z_dim))
  reals = images[np.linspace(0, len(images) - 1, 8).astype(int)]
  schedule = common.LoopSchedule(
      num_steps=int(sg.num_steps), log_every=int(sg.log_every),
      checkpoint_every=int(sg.checkpoint_every), preview_every=int(sg.preview_every),
      time_limit_min=float(sg.time_limit_min))
  return common.train_loop(
      lambda state, batch: gan_iteration(steps, state, batch, s, sg),
      lambda start: itertools.repeat(data), state, os.path.join(workdir, FOLDER), schedule,
      lambda state: {"samples": sample_images(nets, state.g_ema, sample_z), "real": reals})


def train_encoder(config: ml_collections.ConfigDict, workdir: str, images: np.ndarray,
                  gan: GanState) -> common.LoopResult:
  """Trains (resuming) the encoder against the GAN state `gan` in workdir/stylegan/encoder
  until encoder_steps or encoder_time_limit_min; a checkpoint trained against another GAN
  step is discarded."""
  sg = config.stylegan
  nets = build_nets(config)
  folder = os.path.join(workdir, FOLDER, ENCODER_FOLDER)
  checkpoint_folder = os.path.join(folder, common.CHECKPOINT_DIR)
  gan_step = int(gan.step)
  previous = checkpoints.latest_step(checkpoint_folder)
  if previous is not None:
    stored = checkpoints.manager(checkpoint_folder, create=False).restore(
        previous, args=ocp.args.StandardRestore())
    trained_against = int(np.asarray(stored["state"]["gan_step"]))
    if trained_against != gan_step:
      logging.warning("StyleGAN encoder: %s was trained against GAN step %d, not %d; "
                      "training it afresh.", folder, trained_against, gan_step)
      shutil.rmtree(checkpoint_folder)
  batch = int(sg.encoder_batch_size)
  step_fn, optimizer = make_encoder_step(nets, encoder_loss_weights(sg), float(sg.encoder_lr),
                                         batch)
  params = jax.jit(init_encoder, static_argnums=0)(nets, common.fast_key(int(config.seed) + 2))
  logging.info("StyleGAN encoder: %d parameters", count_params(params))
  state = EncoderState(step=jnp.zeros((), jnp.int32), gan_step=jnp.asarray(gan_step, jnp.int32),
                       key=jax.random.key_data(common.fast_key(int(config.seed) + 3)),
                       params=params, opt=optimizer.init(params))
  frozen = jax.device_put({"g": gan.g_ema, "d": gan.d, "w_avg": gan.w_avg})
  data = jnp.asarray(images, jnp.float32) * 2.0 - 1.0
  shown = images[np.linspace(0, len(images) - 1, 8).astype(int)]
  schedule = common.LoopSchedule(
      num_steps=int(sg.encoder_steps), log_every=int(sg.log_every),
      checkpoint_every=int(sg.checkpoint_every), preview_every=int(sg.preview_every),
      time_limit_min=float(sg.encoder_time_limit_min))
  return common.train_loop(
      lambda state, batch: step_fn(state, batch, frozen), lambda start: itertools.repeat(data),
      state, folder, schedule,
      lambda state: {"target": shown, "reconstruction": reconstruct(
          nets, state.params, frozen["g"], frozen["w_avg"], shown)})


def inference_params(gan: GanState, encoder: EncoderState) -> dict[str, Params]:
  """What translation needs: G's EMA, D (its features), the encoder and w_avg."""
  return jax.device_get({"g": gan.g_ema, "d": gan.d, "encoder": encoder.params,
                         "w_avg": gan.w_avg})


def params_template(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Shapes of the exported parameters for `config` (jax.ShapeDtypeStruct leaves)."""
  nets = build_nets(config)

  def make(key):
    gan = init_gan(nets, key)
    return {"g": gan["g"], "d": gan["d"], "encoder": init_encoder(nets, key),
            "w_avg": jnp.zeros((nets.w_dim,))}
  return jax.eval_shape(make, common.fast_key(0))


# --------------------------------------------------------------------------------------
# API


def train(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Trains the GAN, then the encoder, on the target training slices, resuming from
  workdir/stylegan/checkpoints and workdir/stylegan/encoder/checkpoints, and exports the
  inference parameters to workdir/baselines/stylegan.msgpack (+ stylegan.json)."""
  check_config(config)
  images = load_dataset(config, workdir)["train"]["target"]
  gan = train_gan(config, workdir, images)
  encoder = train_encoder(config, workdir, images, gan.state)
  params = inference_params(gan.state, encoder.state)
  sg = config.stylegan
  common.export(workdir, EXPORT_NAME, params, {
      "method": "stylegan", "gan_steps": int(gan.state.step),
      "gan_kimg": int(gan.state.step) * int(sg.batch_size) / 1000.0,
      "gan_wall_s": gan.wall_s, "gan_finished": gan.finished, "ada_p": float(gan.state.ada_p),
      "encoder_steps": int(encoder.state.step), "encoder_wall_s": encoder.wall_s,
      "encoder_finished": encoder.finished,
      "num_params_by_part": {k: count_params(v) for k, v in params.items()},
      "image_size": int(config.data.image_size), "config": sg.to_dict()})


def load(config: ml_collections.ConfigDict, path: str) -> dict[str, Params]:
  """The exported parameters at `path` ({"g", "d", "encoder", "w_avg"}, float32 host arrays).

  Raises InputError naming the path when it is missing, unreadable, or does not fit the
  networks of config.stylegan at config.data.image_size.
  """
  return common.load_params(
      path, params_template(config),
      "stylegan.* or data.image_size differ from training; use the config it was trained "
      "with (see the stylegan.json beside it)")


def translate(config: ml_collections.ConfigDict, params: dict[str, Params], source: np.ndarray,
              key: jax.Array) -> np.ndarray:
  """GAN-inversion translation: each source slice inverted into the target generator's W+
  (`invert`), and the generator's image of that latent.

  Args:
    source: (N, H, W, 1) float32 in [0, 1].
    key: unused; the inversion is deterministic (fixed noise, encoder start).
  Returns:
    (N, H, W, 1) float32 in [0, 1].
  """
  del key
  source = np.asarray(source, np.float32)
  if source.ndim != 4 or source.shape[1:] != (config.data.image_size,) * 2 + (1,):
    raise InputError(f"source of shape {source.shape}: the StyleGAN baseline translates "
                     f"(N, {config.data.image_size}, {config.data.image_size}, 1) slices.")
  return invert(config, params, source)[1]
