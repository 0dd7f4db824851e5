"""The phantom PD -> T1 setup at 64 x 64 with a small model, for training on a 2-core CPU.

Same data split as `phantom_pd2t1` (300 / 75 slices, 30 for validation) at half the
resolution; a 0.5M-parameter NCSN++ and 100 sampling steps keep training and evaluation
within hours on a CPU. The VE prior std follows Song et al.'s rule: the largest distance
between two training slices, 23.8 at 64 x 64.
"""

import ml_collections

from configs import phantom_pd2t1


def get_config() -> ml_collections.ConfigDict:
  config = phantom_pd2t1.get_config()
  config.data.image_size = 64

  model = config.model
  model.nf = 16
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (16,)

  config.sde.sigma_max = 24.0

  training = config.training
  training.batch_size = 8
  training.num_steps = 20_000
  training.warmup_steps = 500
  training.ema_decay = 0.999
  training.log_every = 50
  training.checkpoint_every = 250
  training.sample_every = 2000
  training.sample_steps = 50

  # Chosen on the validation split (docs/results.md, `python -m lmi_jax.ablation`): one
  # Langevin corrector move per step beat guidance 2-3 and beat 200 steps at the same cost.
  config.sampling.num_steps = 100
  config.sampling.corrector_steps = 1
  config.sampling.batch_size = 25
  # Two XLA devices on a 2-core CPU translate two halves of a batch side by side: 14%
  # faster than one device using both cores (10 validation slices, 76 -> 66 s).
  config.host_devices = 2
  # The model trained with this config ships in the repository (see its model.json);
  # sample and eval use it when their workdir has no checkpoint of its own.
  config.sampling.pretrained = "checkpoints/phantom_pd2t1"
  return config
