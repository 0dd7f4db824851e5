"""Real PDw -> T1w on the ICBM152 averages, through the same path as `--mode=sample --input=`.

  python bench/icbm_pd2t1.py --config=configs/brats_flair2t1.py --workdir=runs/icbm_brats
  python bench/icbm_pd2t1.py --config=configs/phantom_pd2t1_cpu.py --workdir=runs/icbm_phantom

The averages carry skull; the brain is where the SPM tissue priors (grey + white + csf) sum
to more than 0.5, and both avg152PD and avg152T1 are cut to it, as a skull-stripping tool
would. avg152PD is translated with each config's model (its workdir checkpoint, else the
shipped one) and segmented by the model's own K-means (`scans.sample_scans`, as --mode=sample --input). Scores,
inside the brain: PSNR and SSIM against avg152T1 normalised as the model's data are (axial
slices that hold brain, SSIM masked to the brain), and Dice of the segmentation against the
priors' arg-max (1 CSF, 2 GM, 3 WM), mean over the three classes. Rows `identity` (the
normalised PDw segmented by the same K-means) and `T1w` (the true avg152T1 so segmented: what
K-means can reach) frame the translation. Prints one Markdown table.
"""

import os
import platform
import time

import jax
import nibabel as nib
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from lmi_jax import figures, host, masks, metrics, model_store, sampling, scans, segmentation
from lmi_jax.data import slices as slicing
from lmi_jax.files import atomic_path

config_flags.DEFINE_config_file("config", None, "Config of the model (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder: its checkpoint, else the shipped model; "
                    "outputs go to WORKDIR/samples.")
flags.DEFINE_string("icbm", "../shared/data/icbm152_spm", "Folder of avg152*.nii and the priors.")
flags.mark_flags_as_required(["config", "workdir"])


def dice_3d(labels: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> float:
  """Mean Dice over classes 1..3 of two label volumes, counted inside `brain`."""
  return metrics.dice(labels[brain], truth[brain], (1, 2, 3))[1]


def scores(image: np.ndarray, labels: np.ndarray, t1: np.ndarray, truth: np.ndarray,
           brain: np.ndarray) -> dict:
  """Dice vs the priors' labels, PSNR / SSIM vs T1w over the axial slices holding brain."""
  zs = np.flatnonzero(brain.sum((0, 1)) > 0)
  psnr = [metrics.psnr(image[:, :, z], t1[:, :, z], 1.0, brain[:, :, z]) for z in zs]
  ssim = [metrics.ssim(image[:, :, z], t1[:, :, z], 1.0, brain[:, :, z]) for z in zs]
  return {"dice": dice_3d(labels, truth, brain), "psnr": float(np.nanmean(psnr)),
          "ssim": float(np.nanmean(ssim))}


def main(argv: list[str]) -> None:
  del argv
  config, workdir, folder = flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.icbm
  host.split_host(int(config.host_devices))
  read = lambda name: nib.load(os.path.join(folder, f"{name}.nii"))
  pd_image = read("avg152PD")
  priors = np.stack([read(n).get_fdata() for n in ("csf", "grey", "white")])
  brain = masks.from_priors(priors)
  truth = np.where(brain, 1 + np.argmax(priors, 0), 0)
  os.makedirs(workdir, exist_ok=True)
  pd_path = os.path.join(workdir, "avg152PD_brain.nii.gz")
  with atomic_path(pd_path) as temporary:
    nib.save(nib.Nifti1Image((pd_image.get_fdata() * brain).astype(np.float32), pd_image.affine),
             temporary)
  start = time.time()
  outputs = scans.sample_scans(config, workdir, [pd_path])[0]["outputs"]
  out_path, seg_path = outputs["translated.nii.gz"], outputs["segmentation.nii.gz"]
  seconds = time.time() - start
  normalise = lambda image: slicing.normalize(image * brain, config.data.p_lo, config.data.p_hi,
                                              "nonzero")
  t1, pd = normalise(read("avg152T1").get_fdata()), normalise(pd_image.get_fdata())
  segmenter = model_store.stored_segmenter(config, workdir)
  rows = [("lmi", scores(nib.load(out_path).get_fdata(),
                         nib.load(seg_path).get_fdata().astype(int), t1, truth, brain), seconds)]
  for what, image in (("identity (PDw)", pd), ("T1w itself (what K-means can reach)", t1)):
    seg = segmentation.segment(segmenter, image[..., None], brain & masks.above(image, 0.0))
    rows.append((what, scores(image, seg, t1, truth, brain), 0.0))
  print(f"ICBM152 avg152PD -> T1w with the model of {config_flags.get_config_filename(flags.FLAGS['config'])} "
        f"({config.sampling.method}, NFE {sampling.network_evaluations(config.sampling)}); "
        f"2 mm, {int(brain.sum())} brain voxels; {jax.devices()[0].device_kind} x "
        f"{len(jax.devices())}, {platform.machine()}, JAX {jax.__version__}\n")
  translation = nib.load(out_path).get_fdata()
  picked = np.linspace(*np.flatnonzero(brain.any((0, 1)))[[0, -1]], 8)[1:-1].astype(int)
  axial = lambda volume: np.stack([np.rot90(volume[..., z]) for z in picked])[..., None]
  figure = os.path.join(workdir, "icbm_pd_to_t1.png")
  figures.plot_rows({"PDw": axial(pd), "lmi": axial(translation), "T1w": axial(t1)}, figure)
  print(f"(figure: {figure}, axial slices {picked.tolist()})\n")
  print("| output | Dice vs priors | PSNR vs T1w | SSIM vs T1w | s / volume |")
  print("| --- | ---: | ---: | ---: | ---: |")
  for what, s, secs in rows:
    print(f"| {what} | {s['dice']:.3f} | {s['psnr']:.2f} | {s['ssim']:.3f} | "
          + (f"{secs:.0f} |" if secs else "- |"))


if __name__ == "__main__":
  app.run(main)
