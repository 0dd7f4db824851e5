"""The smallest configuration that runs every part of lmi_jax, for tests and smoke runs.

Each section overrides a few keys of `configs/default.py`; add overrides under the section
they belong to.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()

  # --- data ---
  config.data.image_size = 32

  # --- score model: a few channels, two levels, every option path that costs little ---
  model = config.model
  model.nf = 16
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (16,)
  model.fourier_scale = 4.0

  # --- SDE: prior std at the scale of the largest distance between two 32x32 slices ---
  config.sde.sigma_max = 20.0

  # --- sampling ---
  config.sampling.num_steps = 8
  config.sampling.corrector_steps = 1

  return config
