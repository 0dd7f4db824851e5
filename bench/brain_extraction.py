"""Brain extraction (lmi_jax/brain_extraction.py) against known brain masks: Dice and time.

  python bench/brain_extraction.py --ixi=../shared/data/ixi_t1_heads_2mm \
      --icbm=../shared/data/icbm152_spm

IXI heads (sorted by name): the first --val are the validation heads on which the margin is
chosen (every margin of --margins is scored there), the rest are the test heads, scored with
the chosen margin only. ICBM152 PDw / T2w / T1w heads are scored against the brain of the tissue
priors (grey + white + CSF > 0.5, holes filled). Prints tables; writes nothing.
"""

import argparse
import glob
import os
import time

import numpy as np
from scipy import ndimage

from lmi_jax import brain_extraction, masks
from lmi_jax.data import nifti


def dice(a: np.ndarray, b: np.ndarray) -> float:
  return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def grown(brain: np.ndarray, affine: np.ndarray, margin_mm: float) -> np.ndarray:
  """The margin-0 mask grown as extract_brain grows it (so one registration serves all margins)."""
  if margin_mm <= 0:
    return brain
  return ndimage.binary_fill_holes(
      ndimage.distance_transform_edt(~brain, sampling=nifti.voxel_sizes(affine)) <= margin_mm)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ixi", required=True, help="Folder of <subject>/{T1,brainmask}.nii.gz.")
  parser.add_argument("--icbm", default="", help="Folder of avg152{PD,T2,T1}.nii and priors.")
  parser.add_argument("--val", type=int, default=10, help="Validation heads (the first ones).")
  parser.add_argument("--margins", default="0,2,3,4,5,6", help="Margins (mm) tried on validation.")
  args = parser.parse_args()
  margins = [float(m) for m in args.margins.split(",")]
  subjects = sorted(glob.glob(os.path.join(args.ixi, "*", "T1.nii.gz")))
  if not subjects:
    raise SystemExit(f"{args.ixi}: no <subject>/T1.nii.gz files.")
  scores, seconds = [], []
  for index, path in enumerate(subjects):
    head, affine = nifti.load_volume(path)
    truth = nifti.load_volume(os.path.join(os.path.dirname(path), "brainmask.nii.gz"))[0] > 0.5
    start = time.time()
    brain = brain_extraction.extract_brain(head, affine, margin_mm=0.0)
    seconds.append(time.time() - start)
    scores.append([dice(grown(brain, affine, m), truth) for m in margins])
    print(f"{index + 1}/{len(subjects)} {os.path.basename(os.path.dirname(path))}: "
          f"{seconds[-1]:.1f} s, Dice " + " ".join(f"{s:.3f}" for s in scores[-1]), flush=True)
  scores = np.array(scores)
  val, test = scores[:args.val], scores[args.val:]
  chosen = int(np.argmax(val.mean(0)))
  print("\n| margin (mm) | validation Dice (mean, min) |\n| --- | --- |")
  for j, m in enumerate(margins):
    mark = " (chosen)" if j == chosen else ""
    print(f"| {m:g}{mark} | {val[:, j].mean():.3f}, {val[:, j].min():.3f} |")
  print(f"\nTest heads ({len(test)}), margin {margins[chosen]:g} mm: Dice mean {test[:, chosen].mean():.3f}, "
        f"min {test[:, chosen].min():.3f}, max {test[:, chosen].max():.3f}; "
        f"registration {np.mean(seconds):.1f} s per head (max {np.max(seconds):.1f}).")
  if args.icbm:
    priors = [nifti.load_volume(os.path.join(args.icbm, f"{t}.nii"))[0] for t in ("grey", "white", "csf")]
    truth = ndimage.binary_fill_holes(
        masks.from_priors([p / 255.0 if p.max() > 1.5 else p for p in priors]))
    print(f"\n| ICBM152 head | Dice (margin {margins[chosen]:g} mm) | s |\n| --- | --- | --- |")
    for contrast in ("PD", "T2", "T1"):
      head, affine = nifti.load_volume(os.path.join(args.icbm, f"avg152{contrast}.nii"))
      start = time.time()
      brain = brain_extraction.extract_brain(head, affine, margin_mm=margins[chosen])
      print(f"| avg152{contrast} | {dice(brain, truth):.3f} | {time.time() - start:.1f} |")


if __name__ == "__main__":
  main()
