"""The StyleGAN baseline as the harness calls it: `check_config`, `train` (the GAN, then the
encoder, then the export), `load` and `translate`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmi_jax.baselines import common
from lmi_jax.baselines.stylegan.inversion import EncoderState, invert, train_encoder
from lmi_jax.baselines.stylegan.networks import (Params, build_nets, init_encoder, init_gan,
                                                 resolutions)
from lmi_jax.baselines.stylegan.training import GanState, train_gan
from lmi_jax.data import load_dataset
from lmi_jax.errors import InputError, key_checker
from lmi_jax.models import count_params

EXPORT_NAME = "stylegan"  # WORKDIR/baselines/stylegan.msgpack and .json.


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
