"""GAN-inversion baseline of the paper's Table 1: a small StyleGAN2-ADA trained on target
slices only, an in-domain encoder (Zhu et al. 2020, the paper's ref. 27), and a translation
that inverts each source slice into the generator's W+ space.

Modules, in the order they build on each other: `layers` (equalised-learning-rate layers,
the modulated convolution, FIR resampling); `networks` (mapping, synthesis, discriminator,
encoder); `ada` (adaptive discriminator augmentation); `training` (the GAN's state, the four
lazily regularised phases and `train_gan`); `inversion` (the encoder's training and the W+
inversion); `api` (`check_config`, `train`, `load`, `translate`). The resumable,
time-limited loop (checkpoints in WORKDIR/stylegan[/encoder]/checkpoints, TensorBoard,
preview.png), fast PRNG keys and the msgpack export / load are `lmi_jax.baselines.common`'s.

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

from lmi_jax.baselines.stylegan.ada import ada_adjust, augment
from lmi_jax.baselines.stylegan.api import (EXPORT_NAME, check_config, inference_params, load,
                                            params_template, train, translate)
from lmi_jax.baselines.stylegan.inversion import (EncoderState, InversionLoss,
                                                  encoder_loss_weights, invert,
                                                  inversion_loss_weights, make_encoder_step,
                                                  make_inversion, reconstruct, train_encoder)
from lmi_jax.baselines.stylegan.layers import modulated_conv
from lmi_jax.baselines.stylegan.networks import (Nets, build_nets, encode, init_encoder,
                                                 init_gan, num_ws, synthesize)
from lmi_jax.baselines.stylegan.training import (GanSettings, GanState, create_gan_state,
                                                 gan_iteration, make_gan_steps, sample_images,
                                                 train_gan)

__all__ = [
    "EXPORT_NAME", "EncoderState", "GanSettings", "GanState", "InversionLoss", "Nets",
    "ada_adjust", "augment", "build_nets", "check_config", "create_gan_state", "encode",
    "encoder_loss_weights", "gan_iteration", "inference_params", "init_encoder", "init_gan",
    "invert", "inversion_loss_weights", "load", "make_encoder_step", "make_gan_steps",
    "make_inversion", "modulated_conv", "num_ws", "params_template", "reconstruct",
    "sample_images", "synthesize", "train", "train_encoder", "train_gan", "translate",
]
