"""Real scans at their own resolution: a T1w prior at 1 mm trained on every real 1 mm T1w here.

The prior is fully convolutional and trains on 64 x 64 crops of 1 mm axial slices, so it
learns local T1w appearance (what LMI guidance needs), not one field of view's layout, and
runs on whole slices of any size. Training sees T1w only: the seven BraTS training patients
of configs/brats_flair2t1.py (the same subject split, so its validation and test patients
stay out) and 30 healthy OASIS adults (data.extra_targets). The 2 mm IXI heads are left out:
upsampled to 1 mm they would teach blur.

Licences: OASIS is CC BY-NC 3.0, so a model trained with this config is for non-commercial
use only; the BraTS data ask for the BraTS papers to be cited (../shared/data/README.md).

  python main.py --config=configs/real_t1.py --workdir=runs/real_t1 --mode=train \\
      --config.training.time_limit_min=70
"""

import ml_collections

from configs import brats_flair2t1


def get_config() -> ml_collections.ConfigDict:
  config = brats_flair2t1.get_config()
  data = config.data
  data.pixel_mm = 1.0
  data.image_size = 256  # The canvas: BraTS's 240 mm and most brains' fields of view fit at 1 mm.
  data.extra_targets = ("../shared/data/oasis_malf_t1/*/T1.nii.gz",)

  model = config.model
  model.attn_resolutions = ()
  model.mid_attention = False

  training = config.training
  training.crop_size = 64
  training.sample_every = 1000
  training.checkpoint_every = 200
  # Full resolution from the 64 px model's layout (bench/full_res_designs.py on the validation
  # patient, docs/results.md): the mean of 3 of its translations, enlarged, noised to t0 = 0.8
  # and taken down by this model with LMI at 1 mm (churn from t0 = 0.7 with 4 draws: Dice
  # +0.063 +- 0.011 over the enlarged mean).
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
  # A guided filter by the source as the last step (5 x 5 px windows): on the validation
  # patient Dice 0.539 -> 0.566 (per slice +0.025 +- 0.001), SSIM 0.348 -> 0.404, edge
  # correlation 0.650 -> 0.701. Segmenting with the source too (sampling.scan_segmenter=joint)
  # added only +0.010 +- 0.004 per slice there, so the model's K-means stays (docs/results.md,
  # "A guided filter by the source").
  sampling.finish_radius = 2
  sampling.finish_eps = 0.01
  # LMI guidance at 1 mm: the LMI-conditioned score weighted 2 against the unconditional one
  # (one more network call per evaluation, no more LMI). With the filter above, on 40
  # validation slices: Dice +0.019 +- 0.003, SSIM +0.023 +- 0.002, edge correlation -0.003;
  # scales 3 and 4 gained no more Dice. The same at 64 px added only +0.003 (docs/results.md,
  # "Guidance at 1 mm").
  sampling.guidance_scale = 2.0
  # The translation regressed on the source's local features, fitted per volume (zero-shot:
  # its target is the translation). On the whole validation volume (138 slices): Dice
  # 0.584 -> 0.627, SSIM 0.424 -> 0.468, edge correlation 0.700 -> 0.700; 18 s per volume.
  # Brain means up to 8 px and edges at 4 px as well gave 0.623 (docs/results.md, "The
  # translation regressed on its source").
  sampling.regress_on_source = True
  return config
