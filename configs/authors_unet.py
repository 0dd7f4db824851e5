"""configs/default.py with the authors' UNet layout, for like-for-like speed comparisons.

Their network is a DDPM UNet (ch 64, ch_mult (1, 2, 2, 2), 2 residual blocks, attention at
16 x 16, 8.95M parameters); within NCSN++'s options that is DDPM residual blocks, plain
resampling and no input/output pyramids: 8.83M parameters at 128 x 128.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.resblock_type = "ddpm"
  config.model.fir = False
  config.model.progressive = "none"
  config.model.progressive_input = "none"
  return config
