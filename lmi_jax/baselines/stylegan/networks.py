"""The StyleGAN2-ADA networks (Karras et al. 2020) and the in-domain encoder, built from
`layers`, and the functions that apply them to parameter trees.

Mapping: z (z_dim) normalised, `mapping_layers` fully connected layers with learning-rate
multiplier `mapping_lr_mul` (0.01) -> w (w_dim). Synthesis: a learned 4 x 4 constant, per
resolution two 3 x 3 modulated / demodulated convolutions (the first after a bilinear 2x
up-sampling, which is StyleGAN's [1,3,3,1] FIR) with per-layer noise inputs of learned
strength, and a skip architecture of 1 x 1 toRGB outputs summed over up-sampled resolutions;
W+ has num_ws = 2 log2(image_size) - 2 rows. Discriminator: a ResNet (1 x 1 fromRGB, per
resolution a 3 x 3 conv, [1,3,3,1] down-sampling, a 3 x 3 conv, and a 1 x 1 skip, summed /
sqrt 2), minibatch standard deviation over groups of `mbstd_group`, a 3 x 3 conv and two
fully connected layers. Encoder (Zhu et al. 2020): the discriminator's trunk and a head to
W+ (w_avg plus a residual from a zero-initialised layer). All layers use equalised learning
rates. Channels at resolution r: min(channel_base / r, channel_max), in all networks.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmi_jax.baselines.stylegan.layers import (Conv, Dense, StyleConv, ToRGB, downsample2,
                                               upsample2)

Params = Any


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


def encode(nets: Nets, encoder: Params, images: jax.Array, w_avg: jax.Array) -> jax.Array:
  """E(images): (N, H, W, 1) in [-1, 1] -> W+ (N, num_ws, w_dim)."""
  return nets.encoder.apply({"params": encoder}, images, w_avg)
