"""Baselines of the paper's Table 1 trained in the same harness as the score model.

Each module (`cyclegan`, `supervised`, ...) exposes `train(config, workdir)`,
`load(config, path) -> params` and `translate(config, params, source, key)`; `common` holds
the resumable training loop and the parameter export they share.
"""

from lmi_jax.baselines import cyclegan, stylegan, supervised

# The trained baselines by method name (`--config.training.method`, `eval.methods`).
BASELINES = {"cyclegan": cyclegan, "stylegan": stylegan, "supervised": supervised}
