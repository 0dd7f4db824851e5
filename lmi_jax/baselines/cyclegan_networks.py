"""The CycleGAN's networks (Zhu et al. 2017): Johnson et al.'s ResNet generator and the
PatchGAN discriminator, instance norm throughout (sizes and their choice: the
`lmi_jax.baselines.cyclegan` docstring)."""

import flax.linen as nn
import jax
import jax.numpy as jnp


def reflect_pad(x: jax.Array, width: int) -> jax.Array:
  """(B, H, W, C) -> (B, H + 2 width, W + 2 width, C) by reflection."""
  return jnp.pad(x, ((0, 0), (width, width), (width, width), (0, 0)), mode="reflect")


def instance_norm() -> nn.Module:
  return nn.InstanceNorm(epsilon=1e-5)


class ResidualBlock(nn.Module):
  """Two reflection-padded 3x3 conv + instance norm layers with a skip; (B, H, W, C) kept."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    h = nn.relu(instance_norm()(nn.Conv(features, (3, 3), padding="VALID",
                                        use_bias=False)(reflect_pad(x, 1))))
    h = instance_norm()(nn.Conv(features, (3, 3), padding="VALID", use_bias=False)(
        reflect_pad(h, 1)))
    return x + h


class ResnetGenerator(nn.Module):
  """(B, H, W, 1) images in [0, 1] -> (B, H, W, 1) in [0, 1]; H and W divisible by 4."""
  features: int = 16
  num_blocks: int = 6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.features
    h = 2.0 * x - 1.0
    h = nn.relu(instance_norm()(nn.Conv(k, (7, 7), padding="VALID", use_bias=False)(
        reflect_pad(h, 3))))
    for mult in (2, 4):
      h = nn.relu(instance_norm()(nn.Conv(k * mult, (3, 3), strides=2, padding=((1, 1), (1, 1)),
                                          use_bias=False)(h)))
    for _ in range(self.num_blocks):
      h = ResidualBlock()(h)
    for mult in (2, 1):
      h = nn.relu(instance_norm()(nn.ConvTranspose(k * mult, (3, 3), strides=(2, 2),
                                                   padding="SAME", use_bias=False)(h)))
    h = nn.Conv(1, (7, 7), padding="VALID")(reflect_pad(h, 3))
    return 0.5 * (jnp.tanh(h) + 1.0)


class PatchDiscriminator(nn.Module):
  """(B, H, W, 1) images in [0, 1] -> (B, h, w, 1) realness scores of overlapping patches
  (h = H / 2^num_layers - 2)."""
  features: int = 32
  num_layers: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = ((1, 1), (1, 1))
    h = nn.leaky_relu(nn.Conv(self.features, (4, 4), strides=2, padding=pad)(2.0 * x - 1.0),
                      0.2)
    for n in range(1, self.num_layers + 1):
      stride = 2 if n < self.num_layers else 1
      h = nn.Conv(self.features * min(2 ** n, 8), (4, 4), strides=stride, padding=pad,
                  use_bias=False)(h)
      h = nn.leaky_relu(instance_norm()(h), 0.2)
    return nn.Conv(1, (4, 4), padding=pad)(h)
