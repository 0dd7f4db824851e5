"""`--mode=sample --input=`: scans as they come, translated one after another with one model.

An input is a NIfTI file (or any format nibabel reads: .mgz, Analyze), a folder of them, a
folder holding one DICOM series, or a glob; several may be given. Every scan is brought to a
brain (`prepare_scan`): a skull-stripped scan keeps its own, whatever its constant background;
a raw head has its brain extracted (`lmi_jax.brain_extraction`, data.brain_extraction). The
brain's axial slices are translated with `lmi`, written back on the input's grid and segmented
(sampling.scan_segmenter: by the model's K-means, or together with the source); a QC picture
shows all of it. The model is loaded and compiled once.

Outputs, in WORKDIR/samples/, for an input named <name> (its file name without extension, or
its folder's for DICOM; inputs of the same name get their parent folders' names in front):
<name>_translated.nii.gz, <name>_segmentation.nii.gz, <name>_brainmask.nii.gz,
<name>_qc.png, <name>_translated.json, and for DICOM <name>_source.nii.gz (the series as NIfTI,
the grid of every output).
"""

import dataclasses
import glob
import hashlib
import json
import os
import time
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import logging

from lmi_jax import (brain_extraction, figures, files, masks, methods, model_store, progress,
                     segmentation, translate)
from lmi_jax.data import dicom, nifti
from lmi_jax.data import slices as slicing
from lmi_jax.errors import InputError

_IMAGE_GLOBS = ("*.nii", "*.nii.gz", "*.mgz", "*.mgh", "*.hdr")
_OUTPUTS = ("_translated.nii.gz", "_segmentation.nii.gz", "_brainmask.nii.gz", "_qc.png",
            "_translated.json", "_source.nii.gz")
# A file name of at most 255 bytes must hold the longest output and a temporary prefix
# (files.temporary_sibling: ".tmp-<12 hex>-").
_MAX_NAME = 255 - max(len(o) for o in _OUTPUTS) - 18
# Fewer distinct values than this inside the brain: a label map or mask, not a scan.
_MIN_DISTINCT = 16
# Below this (10-90th percentile range over the median of the brain): one uniform object.
# Real brains here, every contrast: 0.34 (the ICBM152 PDw average) to 1.66.
_MIN_SPREAD = 0.1


@dataclasses.dataclass(frozen=True)
class Scan:
  """One input: a file, or a folder holding a DICOM series, and the name of its outputs."""
  path: str
  name: str
  is_dicom: bool


@dataclasses.dataclass(frozen=True)
class PreparedScan:
  """A scan brought to a brain, canonical (RAS), with where it came from."""
  reference: str  # The file whose grid the outputs take (the input, or the series as NIfTI).
  original: np.ndarray  # (X, Y, Z) float32: the scan as read.
  volume: np.ndarray  # (X, Y, Z) float32: the brain above 0, 0 outside (or the whole scan).
  affine: np.ndarray  # (4, 4) RAS.
  brain: np.ndarray  # (X, Y, Z) bool.
  brain_source: str  # "skull-stripped", "extracted" or "whole scan".


def output_stem(path: str) -> str:
  """The file or folder name of `path` without its image extension, as outputs are named."""
  return nifti.IMAGE_EXTENSION.sub("", os.path.basename(os.path.normpath(path))) or "scan"


def _short(name: str) -> str:
  """`name`, or its start and a hash of it when outputs named after it would be too long."""
  if len(name.encode()) <= _MAX_NAME:
    return name
  digest = hashlib.sha1(name.encode()).hexdigest()[:8]
  return name.encode()[:_MAX_NAME - 9].decode(errors="ignore") + "-" + digest


def unique_names(paths: Sequence[str]) -> list[str]:
  """An output name per input path, unique in the run: the stem, with as many parent folder
  names in front (joined by "_") as it takes to tell inputs of the same stem apart."""
  parts = [os.path.normpath(os.path.abspath(p)).split(os.sep) for p in paths]
  depth = [1] * len(paths)
  while True:
    names = ["_".join([*p[-depth[i]:-1], output_stem(p[-1])]) for i, p in enumerate(parts)]
    clashes = {n for n in names if names.count(n) > 1}
    grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
    if not grow:
      break
    for i in grow:
      depth[i] += 1
  names = [_short(n) for n in names]
  if len(set(names)) < len(names):
    raise InputError(f"--input: the same file is given twice ({paths}); give each scan once.")
  return names


def _folder_scans(folder: str) -> list[tuple[str, bool]]:
  images = sorted({f for pattern in _IMAGE_GLOBS for f in glob.glob(os.path.join(folder, pattern))})
  if images:
    return [(f, False) for f in images]
  if dicom.is_dicom_folder(folder):
    return [(folder, True)]
  raise InputError(f"{folder}: a folder with no NIfTI files (.nii, .nii.gz, .mgz, .hdr) and no "
                   "DICOM series; give a scan, a folder of scans, a DICOM series folder, or for "
                   f"one folder per patient a glob such as '{os.path.join(folder, '*', 'FLAIR.nii.gz')}'.")


def find_scans(inputs: Sequence[str]) -> list[Scan]:
  """Every scan the --input values name, in order, each once.

  Args:
    inputs: files, folders (their NIfTI files, or the DICOM series they hold) and globs.
  Raises:
    InputError: a value names nothing (a missing file or a glob matching none).
  """
  found: list[tuple[str, bool]] = []
  for value in inputs:
    if not value:
      raise InputError("--input is empty; give a scan, a folder or a glob.")
    if os.path.isdir(value):
      found += _folder_scans(value)
    elif os.path.exists(value) or not glob.has_magic(value):
      found.append((value, False))  # Missing files are reported, with the others going on.
    else:
      matches = sorted(glob.glob(value))
      if not matches:
        raise InputError(f"--input={value}: no file matches this pattern; check the folder and "
                         "the wildcards.")
      for match in matches:
        found += _folder_scans(match) if os.path.isdir(match) else [(match, False)]
  unique = list(dict.fromkeys(found))
  names = unique_names([p for p, _ in unique])
  return [Scan(p, n, d) for (p, d), n in zip(unique, names)]


def check_not_taken(scan: Scan, out_dir: str) -> None:
  """Raise InputError when the outputs named like `scan` belong to another input."""
  record = os.path.join(out_dir, f"{scan.name}_translated.json")
  if not os.path.isfile(record):
    return
  with open(record) as f:
    earlier = json.load(f).get("input", "")
  if os.path.abspath(earlier) != os.path.abspath(scan.path):
    raise InputError(f"{scan.path}: {out_dir} already holds outputs named {scan.name!r} of "
                     f"another input ({earlier}); give another --workdir or rename the file.")


def _reference(scan: Scan, data: ml_collections.ConfigDict, out_dir: str) -> str:
  """The NIfTI file of `scan`: the file itself, or its DICOM series written as NIfTI."""
  if not scan.is_dicom:
    return scan.path
  series = dicom.choose_series(scan.path, dicom.find_series(scan.path), str(data.dicom_series))
  image = dicom.read_series(scan.path, series)
  path = os.path.join(out_dir, f"{scan.name}_source.nii.gz")
  with files.atomic_path(path) as temporary:
    image.to_filename(temporary)
  return path


def prepare_scan(scan: Scan, data: ml_collections.ConfigDict, out_dir: str) -> PreparedScan:
  """`scan` read, checked and brought to a brain.

  With a model of skull-stripped brains (data.mask="nonzero"), a skull-stripped scan keeps its
  brain (`brain_extraction.stripped_brain`) and a raw head's brain is extracted
  (data.brain_extraction "auto"; "on" extracts from every scan, "off" refuses heads); the
  brain's voxels are shifted so that the background level is 0, and kept above 0. With other
  models the scan is taken whole unless data.brain_extraction is "on".
  """
  reference = _reference(scan, data, out_dir)
  volume, affine = nifti.load_volume(reference)
  mode = str(data.brain_extraction)
  skull_stripped_model = data.mask == "nonzero"
  if not skull_stripped_model and mode != "on":
    return PreparedScan(reference, volume, volume, affine, slicing.brain(volume, data.mask),
                        "whole scan")
  level, background = brain_extraction.background_level(volume)
  stripped = (brain_extraction.stripped_brain(volume, affine, background) if mode != "on"
              else None)
  if stripped is not None:
    brain, how = stripped, "skull-stripped"
  elif mode != "off":
    start = time.time()
    brain = brain_extraction.extract_brain(volume, affine, float(data.brain_margin_mm),
                                           seed=int(data.seed))
    how = "extracted"
    logging.info("%s: not skull-stripped; brain extracted by registration of the MNI152 brain "
                 "(%.1f L) in %.1f s.", scan.path, brain.sum() * np.prod(nifti.voxel_sizes(affine)) / 1e6,
                 time.time() - start)
  else:
    nifti.check_skull_stripped(volume, scan.path, data)  # Raises: a head, extraction off.
    brain, how = masks.nonzero(volume), "skull-stripped"
  return PreparedScan(reference, volume, brain_extraction.zero_background(volume, brain, level),
                      affine, brain, how)


def contrast_warning(prepared: PreparedScan, path: str) -> str:
  """A warning when the brain carries no brain contrast: too few distinct values (a label map,
  a mask), or one intensity with a little noise (one object, such as a water phantom); ""
  otherwise."""
  inside = prepared.volume[prepared.brain]
  distinct = np.unique(inside).size
  if distinct < _MIN_DISTINCT:
    return (f"{path}: only {distinct} distinct values inside the brain: it looks like a label map "
            "or mask, not an MR scan; its translation carries no anatomy.")
  p10, p50, p90 = np.percentile(inside, [10, 50, 90])
  spread = (p90 - p10) / max(abs(p50), np.finfo(np.float32).tiny)
  if spread < _MIN_SPREAD:
    return (f"{path}: its brain is one uniform intensity (10-90th percentile spread {spread:.0%} "
            "of the median): it looks like one object, not brain tissue; check that the right "
            "file was given.")
  return ""


@dataclasses.dataclass(frozen=True)
class LoadedScan:
  """A scan ready to translate: its brain and normalised axial slices, checked."""
  scan: Scan
  prepared: PreparedScan
  slices: np.ndarray  # (N, H, W, 1) float32 in [0, 1].
  geometry: nifti.SliceGeometry
  structure_score: float  # methods.stack_structure_score of the slices.
  structure: dict  # translate.source_structure's record.
  warning: str  # contrast_warning's, or "".


def load_scan(scan: Scan, config: ml_collections.ConfigDict, out_dir: str) -> LoadedScan:
  """Every check of one input, before any model is loaded: its outputs' names are free, it
  reads, it holds a brain with tissue structure (InputError otherwise)."""
  check_not_taken(scan, out_dir)
  prepared = prepare_scan(scan, config.data, out_dir)
  slices, geometry = nifti.volume_slices(prepared.volume, prepared.affine, prepared.reference,
                                         config.data, brain_only=True)
  score, structure = translate.source_structure(config, slices, scan.path)
  warning = contrast_warning(prepared, scan.path)
  if warning:
    logging.warning(warning)
  return LoadedScan(scan, prepared, slices, geometry, score, structure, warning)


def scan_labels(config: ml_collections.ConfigDict, segmenter: segmentation.KMeansSegmenter,
                prepared: PreparedScan, translated: np.ndarray, foreground: np.ndarray) -> np.ndarray:
  """Tissue labels of a scan's (X, Y, Z) translation on the input's grid, inside (X, Y, Z)
  `foreground`, by sampling.scan_segmenter: the model's K-means, or (joint) a K-means of the
  translation and the source together (`segmentation.segment_with_source`), the source
  normalised as the model's slices are (data.p_lo, data.p_hi). (X, Y, Z) int32."""
  if config.sampling.scan_segmenter == "model":
    return segmentation.segment(segmenter, translated[..., None], foreground)
  source = slicing.normalize(prepared.volume, float(config.data.p_lo), float(config.data.p_hi),
                             "nonzero")
  source = nifti.to_file_order(source, prepared.reference)
  return segmentation.segment_with_source(
      translated[..., None], source[..., None], foreground, segmenter.k, int(config.seed),
      int(config.eval.kmeans_max_pixels), int(config.eval.kmeans_n_init))


def translate_scan(ctx: methods.Context, segmenter: segmentation.KMeansSegmenter,
                   loaded: LoadedScan, out_dir: str) -> dict:
  """One loaded scan translated, segmented and written (see the module docstring); returns
  its record (also written as <name>_translated.json)."""
  config, scan, prepared, slices = ctx.config, loaded.scan, loaded.prepared, loaded.slices
  geometry, report, warning = loaded.geometry, loaded.structure, loaded.warning
  logging.info("%s: translating the %d axial slices that hold brain.", scan.path, len(slices))
  chosen = methods.lmi_model(dataclasses.replace(ctx, structure_score=loaded.structure_score), slices)
  translated = methods.translate_lmi(chosen, slices, methods.method_key(config, "lmi"))
  translated = methods.inside_source_brain(config, slices, translated)
  if not np.all(np.isfinite(translated)):
    raise InputError(f"{scan.path}: the translation is not finite; check the sampling.* and "
                     "sde.* settings (configs/default.py gives sound values).")
  out = {kind: os.path.join(out_dir, f"{scan.name}_{kind}")
         for kind in ("translated.nii.gz", "segmentation.nii.gz", "brainmask.nii.gz", "qc.png")}
  brain_file = nifti.to_file_order(prepared.brain, prepared.reference)
  if config.data.mask == "nonzero" or prepared.brain_source == "extracted":
    volume = nifti.write_translation(translated[..., 0], geometry, out["translated.nii.gz"],
                                     keep=brain_file)
    foreground = brain_file & masks.above(volume, 0.0)
  else:
    volume = nifti.write_translation(translated[..., 0], geometry, out["translated.nii.gz"])
    foreground = masks.above(volume, segmenter.background_threshold)
  labels = scan_labels(config, segmenter, prepared, volume, foreground)
  nifti.write_like(labels, prepared.reference, out["segmentation.nii.gz"], np.uint8)
  nifti.write_like(brain_file, prepared.reference, out["brainmask.nii.gz"], np.uint8)
  figures.plot_qc(prepared.original, prepared.brain, nifti.to_canonical(volume, prepared.reference),
                  nifti.to_canonical(labels, prepared.reference),
                  nifti.voxel_sizes(prepared.affine), out["qc.png"], title=scan.path)
  record = {"input": os.path.abspath(scan.path), "source_nifti": prepared.reference,
            "brain": prepared.brain_source, "slices": len(slices), "model": chosen.model_folder,
            "model_step": chosen.step, "segmenter": config.sampling.scan_segmenter, **report,
            "contrast_warning": warning}
  if ctx.lowres is not None:
    record.update(lowres_model=ctx.lowres.model_folder, lowres_refine=config.sampling.lowres_refine,
                  pixel_mm=float(config.data.pixel_mm))
  files.atomic_write(os.path.join(out_dir, f"{scan.name}_translated.json"),
                     json.dumps(record, indent=2).encode())
  logging.info("Wrote %s, %s, %s and %s (%d slices translated).", *out.values(), len(slices))
  return {**record, "outputs": out}


def _failed(scan: Scan, error: InputError, alone: bool) -> None:
  """A scan's failure: the run's error when it is the only scan, else logged (others go on)."""
  if alone:
    raise error
  logging.error("%s: failed: %s", scan.path, error)


def sample_scans(config: ml_collections.ConfigDict, workdir: str,
                 inputs: Sequence[str]) -> list[dict]:
  """`--mode=sample --input=...`: every scan of `inputs` (`find_scans`) through
  `translate_scan` with one loaded model, compiled once; a scan that fails is reported and the
  others go on.

  Returns:
    One record per scan translated.
  Raises:
    InputError: a single input failed (its own message), or some of several did (a summary).
  """
  scans = find_scans(inputs)
  out_dir = os.path.join(workdir, "samples")
  ctx, segmenter = None, None
  done, failed, reporter = [], [], progress.Progress(len(scans))
  for index, scan in enumerate(scans):
    try:
      loaded = load_scan(scan, config, out_dir)
    except InputError as error:
      loaded = _failed(scan, error, alone=len(scans) == 1)
    if loaded is not None:
      if ctx is None:  # Once an input has passed its checks; a model that fails ends the run.
        ctx = methods.keeping_runners(translate.make_context(config, workdir, None))
        segmenter = model_store.stored_segmenter(config, workdir)
      try:
        done.append(translate_scan(ctx, segmenter, loaded, out_dir))
      except InputError as error:
        loaded = _failed(scan, error, alone=len(scans) == 1)
    if loaded is None:
      failed.append(scan.path)
    report = reporter.update(index + 1, force=True)
    logging.info("Volume %d/%d (%s) %s; %.0f s elapsed, about %.0f s left for all.", index + 1,
                 len(scans), scan.name, "done" if loaded is not None else "failed",
                 report.elapsed_s, report.eta_s)
  if failed:
    raise InputError(f"{len(failed)} of {len(scans)} inputs failed ({', '.join(failed)}); the "
                     "log above gives each reason, the others' outputs are in "
                     f"{out_dir}.")
  return done
