"""How well the zero-shot premise holds per LMI setting: prints the README's LMI-defaults table.

  python bench/lmi_defaults.py --workdir=workdir/lmi_defaults     # phantom val split, 64 x 64

For each patch size k and normalisation, on the validation slices of
configs/phantom_pd2t1_cpu.py (never the test split), over the brain pixels (ground-truth
labels > 0) of all slices pooled:
- r(s): the Pearson correlation between LMI(PD; x) and LMI(T1; x) for x = T1 + s z (z a
  fixed standard normal draw): whether the map the network sees at sampling time (from the
  PD source) looks like the one it saw in training (from the T1 target itself);
- LMI(PD;T1) and LMI(PD;noise): the mean cross map against the true T1 and against pure
  noise z: how far a sample that matches the source stands above one that does not.
"""

import argparse
import dataclasses
import itertools

import jax
import numpy as np

from configs import phantom_pd2t1_cpu
from lmi_jax import lmi, masks
from lmi_jax.data import load_dataset


def pearson(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdir/lmi_defaults", help="holds the data cache")
  parser.add_argument("--patch-sizes", type=int, nargs="+", default=[3, 5])
  parser.add_argument("--normalize", nargs="+", default=["none", "minmax", "percentile", "rank"])
  parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.5])
  args = parser.parse_args()

  config = phantom_pd2t1_cpu.get_config()
  data = load_dataset(config, args.workdir)["val"]
  pd, t1 = data["source"], data["target"]
  brain = masks.labelled(data["labels"])
  z = np.random.default_rng(0).standard_normal(t1.shape).astype(np.float32)
  base = lmi.from_config(config.lmi)
  print(f"{len(t1)} validation slices, {t1.shape[1]} x {t1.shape[2]}, {int(brain.sum())} brain "
        f"pixels; bins {base.num_bins}, r = {base.radius}; jax {jax.__version__}\n")
  noise_cols = " | ".join(f"r(s={s:g})" for s in args.noise)
  print(f"| k | normalize | {noise_cols} | LMI(PD;T1) | LMI(PD;noise) |")
  print("| --- | --- |" + " --- |" * len(args.noise) + " --- | --- |")
  for k, norm in itertools.product(args.patch_sizes, args.normalize):
    cfg = dataclasses.replace(base, patch_size=k, normalize=norm)
    cross = jax.jit(lambda a, b, cfg=cfg: lmi.cross_lmi(a, b, cfg).value)

    def lmi_map(a, b):
      return np.asarray(cross(a, b))[..., 0][brain]
    rs = [pearson(lmi_map(pd, t1 + s * z), lmi_map(t1, t1 + s * z)) for s in args.noise]
    cells = " | ".join(f"{r:.3f}" for r in rs)
    print(f"| {k} | {norm} | {cells} | {lmi_map(pd, t1).mean():.3f} | {lmi_map(pd, z).mean():.3f} |",
          flush=True)


if __name__ == "__main__":
  main()
