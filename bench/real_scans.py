"""Whole real volumes from other patients, sites and contrasts, translated as a user would
(`scans.sample_scans`, the path of `--mode=sample --input=`) and scored on each scan's own grid
against its true T1w, beside segmenting the source directly.

  python bench/real_scans.py --config=configs/real_t1.py --workdir=runs/real_scans \\
      --lowres_config=configs/brats_flair2t1.py

Sets (../shared/data, see its README for citations and licences):
- brats: the test patients of configs/brats_flair2t1.py's split (--brats_split=val: its
  validation patient), FLAIR -> T1w; "outside" scores outside the whole-tumour mask.
- ljubljana: 3 MS patients, T2w and FLAIR -> T1w; "outside" scores outside the lesions.
- icbm: the ICBM152 PDw average cut to the SPM priors' brain -> avg152T1; "labels" is Dice
  against the priors' arg-max.

Rows: lmi with --config (its workdir checkpoint, else its shipped model); lmi_joint (lmi's
translation segmented together with the source, `segmentation.segment_with_source`);
lmi_best_thresholds (lmi's translation cut at the two intensity thresholds that fit the true
T1w best, per volume, `evaluation.best_thresholds`: an upper bound that needs the truth, of
what any re-calibration of lmi's K-means could give, against what a new translation must); lmi with
--lowres_config alone (the 64 px model, enlarged: what users had); cyclegan and supervised
(the baselines shipped beside --lowres_config's model, at its size; supervised saw paired
FLAIR, so it is a ceiling for FLAIR only); source_kmeans (the source's own 3-class K-means,
clusters named by the contrast's textbook tissue order, ORDERS); source_kmeans_best (the same
clusters named the way that fits the true T1w best, per volume: an upper bound that needs the
truth); site_supervised (not zero-shot: a ceiling of what the source's local information can
give a translation, `site_supervised_volumes`); identity (the normalised source).

Scores inside the brain (truth and source non-zero): Dice of the three tissue classes between
a row's segmentation and the true T1w segmented by the same model's K-means (source_kmeans:
the --config model's); PSNR, SSIM and edge correlation (`metrics.edge_correlation`) per axial
slice against the normalised true T1w, averaged; through-plane ratio
(`metrics.through_plane_ratio`: 1 is as smooth across slices as the truth); seconds per
volume. Prints one Markdown table per set and writes WORKDIR/real_scans_<sets>.json.
"""

import dataclasses
import itertools
import json
import os
import platform
import time

import jax
import ml_collections
import nibabel as nib
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from lmi_jax import (evaluation, host, local_regression, methods, metrics, model_store, scans,
                     segmentation, translate)
from lmi_jax.data import dataset, nifti, pairs
from lmi_jax.data import slices as slicing
from lmi_jax.files import atomic_path

config_flags.DEFINE_config_file("config", None, "Config of the full-resolution model.",
                                lock_config=True)
config_flags.DEFINE_config_file("lowres_config", None, "Config of the 64 px model and the "
                                "baselines shipped beside it.", lock_config=True)
flags.DEFINE_string("workdir", None, "Outputs go to WORKDIR/<row>/samples.")
flags.DEFINE_string("data", "../shared/data", "The shared data folder.")
flags.DEFINE_list("sets", ["brats", "ljubljana", "icbm"], "Sets to run.")
flags.DEFINE_enum("brats_split", "test", ["val", "test"], "brats: the split's patients to run "
                  "(choices are made on val).")
flags.DEFINE_list("patients", [], "Ljubljana patients to run (folder names; empty: all).")
flags.DEFINE_list("contrasts", ["T2", "FLAIR"], "Ljubljana source contrasts to run.")
ROWS = ("lmi", "lmi_joint", "lmi_best_thresholds", "lmi_64px", "cyclegan", "supervised",
        "source_kmeans", "site_supervised", "identity")
flags.DEFINE_list("rows", [r for r in ROWS if r != "lmi_best_thresholds"],
                  "Rows to compute (lmi_joint and lmi_best_thresholds need lmi).")
flags.DEFINE_bool("reuse", False, "Score the translations an earlier run left in the workdir "
                  "and translate only the missing ones (timed alone).")
flags.mark_flags_as_required(["config", "lowres_config", "workdir"])

ORDERS = {"FLAIR": (1, 3, 2), "T2": (3, 2, 1), "PD": (3, 2, 1)}  # data.source_order per contrast.


@dataclasses.dataclass(frozen=True)
class Case:
  set: str
  name: str
  contrast: str
  source: str
  truth: str
  outside: str = ""  # Mask of a region scored apart (tumour, lesions).
  labels: np.ndarray | None = None  # True tissue labels on the truth's canonical grid.


def brats_cases(root: str, lowres: ml_collections.ConfigDict, split: str) -> list[Case]:
  data = lowres.data.copy_and_resolve_references()
  data.root = os.path.join(root, "brats2018_t1_flair")
  found = pairs.glob_pairs(data)
  subjects = [(i, name, None) for i, name, _, _ in found]
  chosen = dataset.split_subjects(subjects, data)[split]
  return [Case("brats", f"brats_{name}", "FLAIR", os.path.join(data.root, name, "FLAIR.nii.gz"),
               os.path.join(data.root, name, "T1.nii.gz"), os.path.join(data.root, name, "GT_W.nii.gz"))
          for _, name, _ in chosen]


def ljubljana_cases(root: str, patients: list[str], contrasts: list[str]) -> list[Case]:
  folder = os.path.join(root, "ljubljana_ms_mni")
  return [Case("ljubljana", f"{p}_{c}", c, os.path.join(folder, p, f"{c}.nii.gz"),
               os.path.join(folder, p, "T1.nii.gz"), os.path.join(folder, p, "lesions.nii.gz"))
          for p in sorted(os.listdir(folder)) if not patients or p in patients
          for c in contrasts]


def icbm_cases(root: str, workdir: str) -> list[Case]:
  """avg152PD and avg152T1 cut to the priors' brain (as a skull-stripping tool would)."""
  folder = os.path.join(root, "icbm152_spm")
  read = lambda name: nib.load(os.path.join(folder, f"{name}.nii"))
  priors = np.stack([read(n).get_fdata() for n in ("csf", "grey", "white")])
  brain = priors.sum(0) > 0.5
  paths = {}
  for name in ("avg152PD", "avg152T1"):
    image = read(name)
    paths[name] = os.path.join(workdir, f"{name}_brain.nii.gz")
    with atomic_path(paths[name]) as temporary:
      nib.save(nib.Nifti1Image((image.get_fdata() * brain).astype(np.float32), image.affine),
               temporary)
  labels = np.where(brain, 1 + np.argmax(priors, 0), 0)
  canonical = nib.as_closest_canonical(nib.Nifti1Image(labels.astype(np.int16), read("avg152T1").affine))
  return [Case("icbm", "icbm_PD", "PD", paths["avg152PD"], paths["avg152T1"],
               labels=np.asarray(canonical.dataobj).astype(np.int32))]


def translated_volumes(config: ml_collections.ConfigDict, workdir: str,
                       cases: list[Case]) -> tuple[dict[str, np.ndarray], float]:
  """lmi of every case through `scans.sample_scans`: name -> canonical volume; s per volume
  translated here (None when --reuse found every translation of an earlier run in the workdir;
  with --reuse only the missing ones are translated, so an interrupted run goes on)."""
  found = {}
  if flags.FLAGS.reuse:
    names = [scan.name for scan in scans.find_scans([c.source for c in cases])]
    paths = [os.path.join(workdir, "samples", f"{n}_translated.nii.gz") for n in names]
    found = {c.name: p for c, p in zip(cases, paths) if os.path.isfile(p)}
  missing = [c for c in cases if c.name not in found]
  seconds = None
  if missing:
    start = time.time()
    # Output names come from the scans run together (`scans.find_scans`), so take them from
    # the records rather than from `paths`.
    records = scans.sample_scans(config, workdir, [c.source for c in missing])
    seconds = (time.time() - start) / len(missing)
    found.update({c.name: r["outputs"]["translated.nii.gz"] for c, r in zip(missing, records)})
  return {c.name: nifti.load_volume(found[c.name], allow_constant=True)[0] for c in cases}, seconds


def baseline_volumes(config: ml_collections.ConfigDict, workdir: str, name: str,
                     cases: list[Case]) -> tuple[dict[str, np.ndarray], float]:
  """A baseline of `config`'s shipped folder on each case's brain slices at the config's
  size, written back on the case's grid: name -> canonical volume; s per volume."""
  ctx = translate.make_context(config, workdir, None, with_model=False)
  ctx = model_store.load_baselines(ctx, config, workdir, (name,))
  out, start = {}, time.time()
  for case in cases:
    volume, affine = nifti.load_volume(case.source)
    slices, geometry = nifti.volume_slices(volume, affine, case.source, config.data, brain_only=True)
    translated = methods.METHODS[name](ctx, slices, jax.random.key(0))
    translated = methods.inside_source_brain(config, slices, translated)
    path = os.path.join(workdir, f"{case.name}_{name}.nii.gz")
    os.makedirs(workdir, exist_ok=True)
    nifti.write_translation(translated[..., 0], geometry, path, keep=nifti.to_file_order(volume != 0, case.source))
    out[case.name] = nifti.load_volume(path, allow_constant=True)[0]
  return out, (time.time() - start) / len(cases)


def case_arrays(case: Case, config: ml_collections.ConfigDict
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A case's source and true T1w, canonical (X, Y, Z) and normalised as `config` normalises
  slices, and the brain both cover (bool)."""
  source, _ = nifti.load_volume(case.source)
  truth, _ = nifti.load_volume(case.truth)
  norm = lambda v: slicing.normalize(v, config.data.p_lo, config.data.p_hi, "nonzero")
  return norm(source), norm(truth), (source != 0) & (truth != 0)


def site_supervised_volumes(cases: list[Case], arrays: dict[str, tuple], seed: int
                            ) -> tuple[dict[str, np.ndarray], float]:
  """A supervised translator per case, fitted on the other volumes of its set and contrast
  (leave one volume out; a set with one volume is split at its left-right midline and each
  half predicted by a fit on the other, which flatters a symmetric average): the regression of
  `local_regression` (boosted trees on the source's per-slice local features) fitted to the
  normalised true T1w instead of a translation, as REPLICA does with random forests (Jog et
  al., Medical Image Analysis 2017). Not zero-shot: it sees true T1w of the same site and
  contrast, so it bounds what the source's local appearance can give a translation.
  name -> canonical volume (0 outside the brain); s per volume."""
  start, out = time.time(), {}
  axial = lambda v: np.moveaxis(v, 2, 0)
  features = {c.name: local_regression.local_features(axial(arrays[c.name][0]),
                                                      axial(arrays[c.name][2])) for c in cases}
  targets = {c.name: axial(arrays[c.name][1])[axial(arrays[c.name][2])] for c in cases}
  for case in cases:
    brain = axial(arrays[case.name][2])
    others = [c.name for c in cases if c.set == case.set and c.contrast == case.contrast
              and c.name != case.name]
    values = np.zeros(int(brain.sum()), np.float32)
    if others:
      model = local_regression.fit_regressor(np.concatenate([features[n] for n in others]),
                                             np.concatenate([targets[n] for n in others]), seed)
      values[:] = model.predict(features[case.name])
    else:
      left = (np.indices(brain.shape)[1] < brain.shape[1] // 2)[brain]
      for half in (left, ~left):
        model = local_regression.fit_regressor(features[case.name][~half],
                                               targets[case.name][~half], seed)
        values[half] = model.predict(features[case.name][half])
    predicted = np.zeros(brain.shape, np.float32)
    predicted[brain] = values
    out[case.name] = np.moveaxis(predicted, 0, 2)
  return out, (time.time() - start) / len(cases)


def score(volume: np.ndarray | None, labels: np.ndarray, truth: np.ndarray,
          truth_labels: np.ndarray, brain: np.ndarray, outside: np.ndarray | None,
          true_tissue: np.ndarray | None) -> dict:
  """One row's scores on one case (see the module docstring)."""
  dice = lambda region: metrics.dice(labels[region], truth_labels[region], (1, 2, 3))[1]
  out = {"dice": dice(brain)}
  if outside is not None:
    out["dice_outside"] = dice(brain & ~outside)
  if true_tissue is not None:
    out["dice_labels"] = metrics.dice(labels[brain], true_tissue[brain], (1, 2, 3))[1]
  if volume is not None:
    zs = [z for z in range(brain.shape[2]) if brain[:, :, z].sum() >= 50]
    per = lambda fn: float(np.nanmean([fn(volume[:, :, z], truth[:, :, z], brain[:, :, z]) for z in zs]))
    out["psnr"] = per(lambda x, t, m: metrics.psnr(x, t, 1.0, m))
    out["ssim"] = per(lambda x, t, m: metrics.ssim(x, t, 1.0, m))
    out["edge_corr"] = per(metrics.edge_correlation)
    out["through_plane"] = metrics.through_plane_ratio(volume, truth, brain)
  return out


def main(argv: list[str]) -> None:
  del argv
  args = flags.FLAGS
  config, lowres = args.config, args.lowres_config
  unknown = sorted(set(args.rows) - set(ROWS))
  if unknown:
    raise app.UsageError(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}.")
  for needs_lmi in ("lmi_joint", "lmi_best_thresholds"):
    if needs_lmi in args.rows and "lmi" not in args.rows:
      raise app.UsageError(f"--rows: {needs_lmi} segments lmi's translation; add lmi.")
  host.split_host(int(config.host_devices))
  os.makedirs(args.workdir, exist_ok=True)
  makers = {"brats": lambda: brats_cases(args.data, lowres, args.brats_split),
            "ljubljana": lambda: ljubljana_cases(args.data, args.patients, args.contrasts),
            "icbm": lambda: icbm_cases(args.data, args.workdir)}
  cases = [c for s in args.sets for c in makers[s]()]
  row_dir = lambda row: os.path.join(args.workdir, row)
  volumes, seconds, segmenters = {}, {}, {}
  for row, row_config in (("lmi", config), ("lmi_64px", lowres)):
    if row in args.rows:
      volumes[row], seconds[row] = translated_volumes(row_config, row_dir(row), cases)
      segmenters[row] = model_store.stored_segmenter(row_config, row_dir(row))
  for row in ("cyclegan", "supervised"):
    if row in args.rows:
      volumes[row], seconds[row] = baseline_volumes(lowres, row_dir(row), row, cases)
      segmenters[row] = model_store.stored_segmenter(lowres, row_dir("lmi_64px"))
  full_segmenter = model_store.stored_segmenter(config, row_dir("lmi"))
  arrays = {c.name: case_arrays(c, config) for c in cases}
  if "site_supervised" in args.rows:
    volumes["site_supervised"], seconds["site_supervised"] = site_supervised_volumes(
        cases, arrays, int(config.seed))
    segmenters["site_supervised"] = full_segmenter
  results = []
  for case in cases:
    source_n, truth_n, brain = arrays[case.name]
    outside = None
    if case.outside:
      outside = nifti.load_volume(case.outside, allow_constant=True)[0] != 0
    seg = lambda segmenter, volume: segmentation.segment(segmenter, volume[..., None], brain)
    entry = {"set": case.set, "case": case.name, "contrast": case.contrast, "rows": {}}
    for row, segmenter in segmenters.items():
      volume = volumes[row][case.name]
      entry["rows"][row] = score(volume, seg(segmenter, volume), truth_n, seg(segmenter, truth_n),
                                 brain, outside, case.labels)
      entry["rows"][row]["seconds"] = seconds[row]
    truth_labels = seg(full_segmenter, truth_n)
    if "source_kmeans" in args.rows:
      start = time.time()
      labels = segmentation.segment_by_order(np.moveaxis(source_n, 2, 0)[..., None],
                                             np.moveaxis(brain, 2, 0), ORDERS[case.contrast],
                                             int(config.seed))
      labels = np.moveaxis(labels, 0, 2)
      entry["rows"]["source_kmeans"] = score(None, labels, truth_n, truth_labels, brain, outside,
                                             case.labels)
      entry["rows"]["source_kmeans"]["seconds"] = time.time() - start
      ranks = segmentation.segment_by_order(np.moveaxis(source_n, 2, 0)[..., None],
                                            np.moveaxis(brain, 2, 0), (1, 2, 3), int(config.seed))
      ranks = np.moveaxis(ranks, 0, 2)
      named = [evaluation.rename(ranks, naming) for naming in itertools.permutations((1, 2, 3))]
      best = max(named, key=lambda n: metrics.dice(n[brain], truth_labels[brain], (1, 2, 3))[1])
      entry["rows"]["source_kmeans_best"] = score(None, best, truth_n, truth_labels, brain,
                                                  outside, case.labels)
    if "lmi_joint" in args.rows:
      start = time.time()
      labels = segmentation.segment_with_source(
          np.moveaxis(volumes["lmi"][case.name], 2, 0)[..., None],
          np.moveaxis(source_n, 2, 0)[..., None], np.moveaxis(brain, 2, 0),
          int(config.eval.kmeans_clusters), int(config.seed))
      entry["rows"]["lmi_joint"] = score(None, np.moveaxis(labels, 0, 2), truth_n, truth_labels,
                                         brain, outside, case.labels)
      entry["rows"]["lmi_joint"]["seconds"] = (None if seconds["lmi"] is None
                                               else seconds["lmi"] + time.time() - start)
    if "lmi_best_thresholds" in args.rows:
      values = volumes["lmi"][case.name][brain]
      thresholds = evaluation.best_thresholds(values, truth_labels[brain])
      labels = np.zeros(brain.shape, np.int32)
      labels[brain] = evaluation.threshold_labels(values, thresholds)
      entry["rows"]["lmi_best_thresholds"] = score(None, labels, truth_n, truth_labels, brain,
                                                   outside, case.labels)
      entry["rows"]["lmi_best_thresholds"]["thresholds"] = thresholds
    if "identity" in args.rows:
      entry["rows"]["identity"] = score(source_n, seg(full_segmenter, source_n), truth_n,
                                        truth_labels, brain, outside, case.labels)
    results.append(entry)
  with atomic_path(os.path.join(args.workdir, f"real_scans_{'_'.join(args.sets)}.json")) as temporary:
    with open(temporary, "w") as f:
      json.dump(results, f, indent=1)
  print(f"{jax.devices()[0].device_kind} x {len(jax.devices())}, {platform.machine()}, "
        f"JAX {jax.__version__}; lmi: {config_flags.get_config_filename(args['config'])}\n")
  columns = ("dice", "dice_outside", "dice_labels", "psnr", "ssim", "edge_corr",
             "through_plane", "seconds")
  for name in args.sets:
    for contrast in sorted({e["contrast"] for e in results if e["set"] == name}):
      chosen = [e for e in results if e["set"] == name and e["contrast"] == contrast]
      print(f"\n{name}, {contrast} -> T1w ({len(chosen)} volumes; mean over volumes)\n")
      print("| row | " + " | ".join(columns) + " |")
      print("| --- |" + " ---: |" * len(columns))
      for row in chosen[0]["rows"]:
        cells = []
        for column in columns:
          values = [e["rows"][row].get(column) for e in chosen]
          cells.append("-" if None in values else f"{np.mean(values):.3f}")
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  app.run(main)
