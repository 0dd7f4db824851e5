"""Data: the embedded phantom, IXI / paired NIfTI volumes, slicing, splits and the cache.

`load_dataset(config, workdir)` is the entry point; `nifti.load_slices` and
`nifti.write_translation` take whole volumes in and out of the slice representation.
"""

from lmi_jax.data.dataset import load_dataset

__all__ = ["load_dataset"]
