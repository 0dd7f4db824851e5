"""lmi_jax: zero-shot cross-modality MR translation guided by local mutual information."""

__version__ = "0.2.0"  # As pyproject.toml.
