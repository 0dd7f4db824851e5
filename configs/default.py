"""Every configuration key of lmi_jax, with its default and a one-line comment.

Experiment configs (`configs/*.py`) start from `get_config()` here and override a few keys.
The config is locked after loading, so a misspelt key is an error.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Root PRNG seed; every random stream is split from it.

  # --- data ------------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  data.image_size = 128  # Slices are resized to image_size x image_size.

  # --- local mutual information (lmi_jax/lmi.py) ------------------------------
  config.lmi = lmi = ml_collections.ConfigDict()
  lmi.patch_size = 3  # Odd k: MI is estimated from the k*k intensity pairs of a patch.
  lmi.radius = 1  # Search radius r: shifts s with |s|_inf <= r are tried, the best is kept.
  lmi.num_bins = 16  # Parzen histogram bins, evenly spaced over the normalised range.
  lmi.kernel_sigma = 0.8  # Gaussian Parzen kernel width, in bin spacings.
  lmi.levels = 0  # >0: intensities are scaled to 0..levels and truncated (authors: 255); 0: continuous.
  lmi.normalize = "rank"  # Per-image intensity map before binning: none | minmax | percentile | rank.
  lmi.p_lo = 1.0  # Lower percentile clipped to 0 by `percentile` normalisation.
  lmi.p_hi = 99.0  # Upper percentile clipped to 1 by `percentile` normalisation.
  lmi.nmi = True  # Normalised MI 2*MI/(H_a+H_b) (in [0, ~1]) instead of MI in bits.
  lmi.padding = "reflect"  # Border handling of patches and shifts: zero | edge | reflect.
  lmi.row_chunk = 0  # Rows per chunk to bound memory (0: chosen from the image size).
  lmi.features = ("cross", "self")  # Conditioning channels fed to the score network, in order.

  # --- score model (lmi_jax/models) -----------------------------------------
  config.model = model = ml_collections.ConfigDict()

  # --- SDE (lmi_jax/sde.py) --------------------------------------------------
  config.sde = sde = ml_collections.ConfigDict()

  # --- training (lmi_jax/train.py) -------------------------------------------
  config.training = training = ml_collections.ConfigDict()

  # --- sampling / translation (lmi_jax/sampling.py) ---------------------------
  config.sampling = sampling = ml_collections.ConfigDict()

  # --- evaluation (lmi_jax/evaluation.py) -------------------------------------
  config.eval = evaluation = ml_collections.ConfigDict()

  del data, lmi, model, sde, training, sampling, evaluation
  return config
