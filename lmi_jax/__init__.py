"""lmi_jax: zero-shot cross-modality MR translation guided by local mutual information."""

__version__ = "0.1.0"
