"""The config that trained the shipped 1 mm T1w prior: `configs/real_t1.py` as it stood (below),
on the 2-core CPU (JAX 0.10.2, two XLA host devices), from the repository root:

  python main.py --config=configs/real_t1.py --workdir=W --mode=train \\
      --config.training.time_limit_min=75
  python -m lmi_jax.pretrained --config=configs/real_t1.py --workdir=W --out=checkpoints/real_t1

7350 steps of 8 random 64 x 64 crops of 1 mm T1w slices, centred on brain pixels, in 75
minutes, the CPU shared with tests and benchmarks about half the time. Training data (T1w
only, never a FLAIR): the 7 BraTS 2018 training patients of configs/brats_flair2t1.py's split
(280 slices) and 30 OASIS-1 adults (1200 slices). OASIS is CC BY-NC 3.0: this model is for
non-commercial use only. model.json holds the K-means (3 classes) fitted on the BraTS T1w
training slices at 1 mm, which --mode=sample --input segments with.
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
  data.source_order = (1, 3, 2)
  data.exclude_glob = "*/GT_W.nii*"
  data.mask = "nonzero"
  data.slice_select = "brain"
  data.min_brain_fraction = 0.3
  data.slices_per_subject = 40
  data.num_train_subjects = -1
  data.num_val_subjects = 1
  data.num_test_subjects = 2

  cpu_model.apply(config)
  config.sampling.num_steps = 100
  config.sampling.corrector_steps = 1
  config.sampling.method = "churn"
  config.sampling.nfe = 35
  config.sampling.churn = 10.0
  config.sampling.batch_size = 40

  data.pixel_mm = 1.0
  data.image_size = 256
  data.extra_targets = ("../shared/data/oasis_malf_t1/*/T1.nii.gz",)
  config.model.attn_resolutions = ()
  config.model.mid_attention = False
  training = config.training
  training.crop_size = 64
  training.sample_every = 1000
  training.checkpoint_every = 200

  sampling = config.sampling
  sampling.pretrained = "checkpoints/real_t1"
  sampling.lowres_model = "checkpoints/brats_t1"
  sampling.lowres_samples = 3
  sampling.lowres_refine = "diffusion"
  sampling.lowres_t0 = 0.8
  # One noise for every slice: neighbouring slices agree (validation patient: through-plane
  # 6.4 -> 1.2 x the true T1w's, Dice 0.505 -> 0.539 per volume; docs/results.md).
  sampling.shared_noise = True
  # 15 network evaluations at 1 mm (0.8 of 19 noise levels of DPM-Solver++(2M)) where EDM's
  # churn took 23 at t0 = 0.7: Dice -0.002 +- 0.003 and SSIM +0.000 +- 0.004 on the validation
  # patient; 3 averaged draws instead of 4: Dice -0.004 +- 0.004 (docs/results.md, "Fewer
  # network evaluations").
  sampling.method = "dpm2m"
  sampling.nfe = 19
  return config
