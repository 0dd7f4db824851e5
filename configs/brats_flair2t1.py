"""Real scans: FLAIR -> T1w on skull-stripped BraTS 2018 volumes, 64 x 64, trained on a CPU.

Layout (the `nifti` dataset): one folder per subject under data.root, holding T1.nii.gz (the
target, the only contrast training sees), FLAIR.nii.gz (the source) and GT_W.nii.gz (the
whole-tumour mask; evaluation scores the brain with and without it). The developers' copy lies
beside the repository, hence the default root; point it elsewhere on the command line:

  python main.py --config=configs/brats_flair2t1.py --workdir=runs/brats --mode=eval \\
      --config.data.root=/path/to/cases

Your own data laid out the same way works as it is; other file names take
--config.data.source_glob='*/flair_reg.nii.gz' (and target_glob / exclude_glob; exclude_glob=''
when there are no tumour masks). Volumes must be skull-stripped (the brain is the non-zero
voxels) and each source on its target's grid or with headers that align them.

Ten subjects are split 7 train / 1 validation / 2 test (data.seed fixes which); each gives 40
axial slices spread over the slices whose brain area is at least 30% of the largest one's.
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
  data.source_order = (1, 3, 2)  # FLAIR's usual CSF < WM < GM (the best order for 5 of the 7 training patients; docs/results.md).
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
  # The translation regressed on the source's local features (lmi_jax/local_regression.py).
  # On the 40 validation slices: Dice 0.624 -> 0.667, SSIM 0.589 -> 0.671, edge correlation
  # 0.789 -> 0.866 (docs/results.md, "The regression on the phantom and at 64 px").
  config.sampling.regress_on_source = True
  # The model trained with this config ships in the repository (see its model.json).
  config.sampling.pretrained = "checkpoints/brats_t1"
  return config
