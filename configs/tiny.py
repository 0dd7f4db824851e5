"""The smallest configuration that runs every part of lmi_jax's pipeline, for tests and smoke runs.

Its network has one resolution level: no resampling, no pyramids, attention only at the
bottleneck. Compiling is most of a tiny run on a 2-core CPU, and one level compiles in 40% of
the time of two (training step 17 s instead of 42, its initialisation 12 s instead of 23). The
parts of a network with several levels are tested on their own (tests/test_models.py,
tests/test_layers.py) and through the shipped models.

Each section overrides a few keys of `configs/default.py`; add overrides under the section
they belong to.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()

  # --- data ---
  config.data.image_size = 32
  config.data.num_train_subjects = 4
  config.data.num_val_subjects = 1
  config.data.num_test_subjects = 2
  config.data.phantom.voxel_mm = 3.0  # A coarse anatomy builds the phantom in under a second.

  # --- score model: a few channels, one level (module docstring) ---
  model = config.model
  model.nf = 16
  model.ch_mult = (1,)
  model.num_res_blocks = 1
  model.attn_resolutions = ()
  model.fourier_scale = 4.0
  # XLA's own kernel gradient: a step with the host callback cannot be kept in the persistent
  # compilation cache that the tests share (tests/conftest.py), and compiling is most of a
  # tiny run. tests/test_layers.py checks that the callback gives the same gradients.
  model.host_kernel_grad = False

  # --- SDE: prior std at the scale of the largest distance between two 32x32 slices ---
  config.sde.sigma_max = 20.0

  # --- sampling ---
  config.sampling.num_steps = 8
  config.sampling.corrector_steps = 1

  # --- training: a few steps, a short EMA, frequent logs and a cheap preview ---
  training = config.training
  training.num_steps = 40
  training.warmup_steps = 5
  training.ema_decay = 0.9
  training.log_every = 10
  training.checkpoint_every = 20
  training.sample_every = 20
  training.sample_steps = 4
  training.num_samples = 2

  return config
