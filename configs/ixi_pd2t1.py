"""The paper's setup on IXI: PD -> T1, 128 x 128 axial slices, 100 training / 25 test subjects.

Set the folder on the command line: `--config.data.root=/path/to/IXI` holding the IXI-T1 and
IXI-PD files (flat, or one folder per modality). Raw IXI T1 (sagittal) and PD (axial) lie on
different grids: PD is resampled onto the T1 grid and rigidly registered to it.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  data = config.data
  data.dataset = "ixi"
  data.source = "PD"
  data.target = "T1"
  data.image_size = 128
  data.register = True
  data.missing = "skip"  # Some IXI subjects lack PD or T1; they are dropped and listed in the log.
  data.num_train_subjects = 100
  data.num_val_subjects = 10
  data.num_test_subjects = 25
  data.slices_per_subject = 3
  data.slice_range = (0.55, 0.65)  # IXI T1's field of view includes the neck: the ventricles sit higher.
  data.mask = "foreground"  # Zero the background noise around the head.
  return config
