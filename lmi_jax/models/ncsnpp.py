"""NCSN++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs"), Flax linen.

A U-Net with a noise-level embedding, residual blocks (BigGAN or DDPM), self-attention at
chosen resolutions, optional FIR resampling and optional input/output pyramids
("progressive growing" skips). It is the bare architecture: how time, the LMI features and
the output scaling are fed to it lives in `lmi_jax.models.score`.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmi_jax.errors import InputError
from lmi_jax.models import layers

_CHOICES = {
    "resblock_type": ("biggan", "ddpm"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "embedding_type": ("fourier", "positional"),
}


class NCSNpp(nn.Module):
  """Score network on (B, H, W, C_in) inputs, H and W divisible by 2^(len(ch_mult) - 1)."""

  out_channels: int = 1  # Channels of the output (the score of x_t alone).
  nf: int = 64
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  mid_attention: bool = True  # Self-attention at the bottleneck (False, with no attn_resolutions: fully convolutional).
  dropout: float = 0.1
  resblock_type: str = "biggan"
  resamp_with_conv: bool = True
  fir: bool = True
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  progressive: str = "output_skip"
  progressive_input: str = "input_skip"
  progressive_combine: str = "sum"
  embedding_type: str = "fourier"
  fourier_scale: float = 16.0
  init_scale: float = 0.0
  conditional: bool = True
  host_kernel_grad: bool = True  # CPU only: kernel gradients by OpenBLAS (layers.conv_general_dilated).

  def check_options(self) -> None:
    """Raise InputError naming the first option (a `model.*` key) with an unknown value."""
    for key, allowed in _CHOICES.items():
      if getattr(self, key) not in allowed:
        raise InputError(f"model.{key} = {getattr(self, key)!r}: expected one of {allowed}.")

  def _check_size(self, x: jax.Array) -> None:
    factor = 2 ** (len(self.ch_mult) - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise InputError(
          f"image size {x.shape[1:3]} is not divisible by {factor}, which model.ch_mult "
          f"(len {len(self.ch_mult)}) needs; change data.image_size or model.ch_mult.")

  def _embed(self, noise_labels: jax.Array) -> jax.Array | None:
    """(B,) -> time embedding (B, 4 nf), or None for an unconditional network."""
    if not self.conditional:
      return None
    if self.embedding_type == "fourier":
      emb = layers.FourierEmbedding(self.nf, self.fourier_scale)(noise_labels)
    else:
      emb = layers.positional_embedding(noise_labels, self.nf)
    return layers.dense(4 * self.nf)(nn.swish(layers.dense(4 * self.nf)(emb)))

  @nn.compact
  def __call__(self, x: jax.Array, noise_labels: jax.Array, train: bool) -> jax.Array:
    """x (B, H, W, C_in), noise_labels (B,) -> (B, H, W, out_channels).

    noise_labels is what the embedding reads (log std for 'fourier', 999 t for
    'positional'); `train` switches dropout on and then needs rngs={'dropout': key}.
    """
    self._check_size(x)
    temb = self._embed(noise_labels)
    num_levels = len(self.ch_mult)
    res = functools.partial(layers.ResBlock, dropout=self.dropout, fir=self.fir,
                            fir_kernel=self.fir_kernel, skip_rescale=self.skip_rescale,
                            init_scale=self.init_scale, host_kernel_grad=self.host_kernel_grad)
    attn = functools.partial(layers.AttnBlock, skip_rescale=self.skip_rescale,
                             init_scale=self.init_scale)
    resample = dict(fir=self.fir, fir_kernel=self.fir_kernel,
                    host_kernel_grad=self.host_kernel_grad)

    # Encoder: every output is kept for the decoder's skip connections.
    hs = [layers.conv(self.nf, host_kernel_grad=self.host_kernel_grad)(x)]
    pyramid = x
    for level in range(num_levels):
      for _ in range(self.num_res_blocks):
        h = res(self.nf * self.ch_mult[level])(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)
        hs.append(h)
      if level == num_levels - 1:
        continue
      if self.resblock_type == "ddpm":
        h = layers.Downsample(with_conv=self.resamp_with_conv, **resample)(hs[-1])
      else:
        h = res(h.shape[-1], down=True)(hs[-1], temb, train)
      if self.progressive_input == "input_skip":
        pyramid = layers.Downsample(**resample)(pyramid)
        h = layers.Combine(self.progressive_combine,
                           host_kernel_grad=self.host_kernel_grad)(pyramid, h)
      elif self.progressive_input == "residual":
        pyramid = layers.Downsample(h.shape[-1], with_conv=True, **resample)(pyramid)
        h = pyramid = layers.residual_sum(pyramid, h, self.skip_rescale)
      hs.append(h)

    h = res(h.shape[-1])(hs[-1], temb, train)
    if self.mid_attention:
      h = attn()(h)
    h = res(h.shape[-1])(h, temb, train)

    # Decoder: one more block per level than the encoder, eating the skips in reverse.
    pyramid = None
    for level in reversed(range(num_levels)):
      for _ in range(self.num_res_blocks + 1):
        h = res(self.nf * self.ch_mult[level])(jnp.concatenate([h, hs.pop()], -1), temb, train)
      if h.shape[1] in self.attn_resolutions:
        h = attn()(h)
      if self.progressive == "output_skip":
        out = self._head(h, self.out_channels)
        pyramid = out if pyramid is None else layers.Upsample(**resample)(pyramid) + out
      elif self.progressive == "residual":
        if pyramid is None:
          pyramid = layers.conv(h.shape[-1], host_kernel_grad=self.host_kernel_grad)(
              nn.swish(layers.group_norm(h)))
        else:
          pyramid = layers.Upsample(h.shape[-1], with_conv=True, **resample)(pyramid)
          h = pyramid = layers.residual_sum(pyramid, h, self.skip_rescale)
      if level == 0:
        continue
      if self.resblock_type == "ddpm":
        h = layers.Upsample(with_conv=self.resamp_with_conv, **resample)(h)
      else:
        h = res(h.shape[-1], up=True)(h, temb, train)
    assert not hs, "every encoder activation feeds exactly one decoder block"

    if self.progressive == "output_skip":
      return pyramid
    return self._head(h, self.out_channels)

  def _head(self, h: jax.Array, channels: int) -> jax.Array:
    """GN-swish-conv3x3 to `channels`, the layer that writes the output."""
    return layers.conv(channels, init_scale=self.init_scale,
                       host_kernel_grad=self.host_kernel_grad)(nn.swish(layers.group_norm(h)))
