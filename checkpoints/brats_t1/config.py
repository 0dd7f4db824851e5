"""The config that trained the shipped real-brain T1w model: `configs/brats_flair2t1.py` as it
stood (below), on the 2-core CPU (JAX 0.10.2, two XLA host devices), from the repository root:

  python main.py --config=configs/brats_flair2t1.py --workdir=W --mode=train \\
      --config.training.time_limit_min=68
  python main.py --config=configs/brats_flair2t1.py --workdir=W --mode=train \\
      --config.training.time_limit_min=18     # resumed
  python -m lmi_jax.pretrained --config=configs/brats_flair2t1.py --workdir=W \\
      --out=checkpoints/brats_t1

3300 steps of 8 T1w slices (the 7 training subjects' 280 slices, never a FLAIR) in 86 minutes,
the CPU shared with benchmarks. model.json holds the K-means (3 classes) fitted on those
slices, which --mode=sample --input segments with.
"""

import ml_collections

from configs import cpu_model, default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  data = config.data
  data.dataset = "nifti"
  data.root = "../shared/data/brats2018_t1_flair"
  data.source = "FLAIR"
  data.target = "T1"
  data.exclude_glob = "*/GT_W.nii*"
  data.mask = "nonzero"
  data.slice_select = "brain"
  data.min_brain_fraction = 0.3
  data.slices_per_subject = 40
  data.num_train_subjects = -1
  data.num_val_subjects = 1
  data.num_test_subjects = 2

  cpu_model.apply(config)
  # The phantom's choice (docs/results.md), confirmed on the validation subject: EDM's
  # stochastic sampler, 35 network evaluations; em with 100 steps and a corrector is the reference.
  config.sampling.num_steps = 100
  config.sampling.corrector_steps = 1
  config.sampling.method = "churn"
  config.sampling.nfe = 35
  config.sampling.churn = 10.0
  config.sampling.batch_size = 40
  # The model trained with this config ships in the repository (see its model.json).
  config.sampling.pretrained = "checkpoints/brats_t1"
  return config
