"""The dataset entry point: subjects -> subject-level split -> normalised slice pairs, cached.

Splits are by subject, never by slice. The subject list (sorted) is permuted with data.seed;
the first data.num_test_subjects form "test", the next data.num_val_subjects "val" and the next
data.num_train_subjects "train" (-1: all that remain; files only). Validation subjects are thus
in addition to the training and test subjects: the defaults 100 / 10 / 25 keep the paper's
100 training and 25 test subjects (300 / 75 slices). The phantom makes exactly as many
subjects as the split asks for; subject i is `phantom_subject(subject_seed(data.seed, i), ...)`.

Per subject: the target volume fixes the grid; data.slices_per_subject axial slices are spread
over data.slice_range of its z extent, or (data.slice_select="brain", files only) over the
slices whose brain area is at least data.min_brain_fraction of the largest slice's. Each volume is normalised to [0, 1] on its own grid
(lmi_jax.data.slices.normalize); a source on another grid is resampled onto the target's slices
(lmi_jax.data.nifti). The phantom simulates only the slab of axial slices that holds the
chosen ones and normalises on that slab. The result is cached as workdir/cache/<hash>.npz, the
hash covering the whole data config, a pipeline version and the input files' sizes and times.
"""

import functools
import glob
import hashlib
import json
import os
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
from absl import logging

from lmi_jax import brain_extraction, files
from lmi_jax.data import nifti, pairs, phantom, registration
from lmi_jax.data import slices as slicing
from lmi_jax.errors import InputError, key_checker
from lmi_jax.progress import Progress

DATASETS = ("phantom", "ixi", "nifti")
SLICE_SELECTS = ("range", "brain")
SPLITS = ("train", "val", "test")
_VERSION = 2  # Bump whenever the pipeline's output changes, so stale caches are not reused.
_PROGRESS_EVERY = (10, 30.0)  # A progress line after this many subjects or seconds, whichever first.
EXTRA_SUBJECT_ID = 100_000  # Subject id of the first data.extra_targets volume.
_MIN_COVERAGE = 0.95  # Share of a target slice's foreground the source must cover.

Pair = dict[str, object]
Subject = tuple[int, str, Callable[[], Pair]]


def check_data_config(data: ml_collections.ConfigDict) -> None:
  """Raise InputError naming the first `data.*` key with an unusable value."""
  require = key_checker("data", data)
  require(data.dataset in DATASETS, "dataset", f"choose one of {DATASETS}")
  require(data.image_size >= 8, "image_size", "use at least 8 pixels")
  require(data.pixel_mm >= 0, "pixel_mm", "use a pixel size in mm, or 0 to fit the canvas")
  require(isinstance(data.extra_targets, (tuple, list)) and
          all(isinstance(p, str) and p for p in data.extra_targets), "extra_targets",
          "give a tuple of file globs, e.g. ('oasis/*/T1.nii.gz',)")
  require(data.slices_per_subject >= 1, "slices_per_subject", "take at least one slice")
  lo, hi = data.slice_range
  require(0.0 <= lo <= hi <= 1.0, "slice_range", "give (lo, hi) with 0 <= lo <= hi <= 1")
  require(0.0 <= data.p_lo < data.p_hi <= 100.0, "p_hi", "need 0 <= data.p_lo < data.p_hi <= 100")
  require(data.mask in slicing.MASKS, "mask", f"choose one of {slicing.MASKS}")
  require(data.slice_select in SLICE_SELECTS, "slice_select", f"choose one of {SLICE_SELECTS}")
  require(0.0 < data.min_brain_fraction <= 1.0, "min_brain_fraction", "use a fraction in (0, 1]")
  require(data.missing in ("error", "skip"), "missing", "choose 'error' or 'skip'")
  require(data.brain_extraction in brain_extraction.MODES, "brain_extraction",
          f"choose one of {brain_extraction.MODES}")
  margin = data.brain_margin_mm
  require(isinstance(margin, (int, float)) and not isinstance(margin, bool) and 0 <= margin <= 30,
          "brain_margin_mm", "use a number of millimetres in [0, 30]")
  require(isinstance(data.dicom_series, str), "dicom_series", "give a series description or UID")
  require(data.num_test_subjects >= 0, "num_test_subjects", "use a count >= 0")
  require(data.num_val_subjects >= 0, "num_val_subjects", "use a count >= 0")
  if data.dataset == "phantom":
    require(data.num_train_subjects >= 0, "num_train_subjects", "the phantom needs a count >= 0")
    for role in ("source", "target"):
      require(data[role] in phantom.CONTRASTS, role, f"the phantom has {phantom.CONTRASTS}")
    require(data.slice_select == "range", "slice_select", "the phantom simulates a slab: use 'range'")
    require(not data.exclude_glob, "exclude_glob", "the phantom has no masks to exclude: use ''")
  else:
    require(data.num_train_subjects >= -1, "num_train_subjects",
            "use a count >= 0, or -1 for all the rest")


def subject_seed(seed: int, subject: int) -> int:
  """Independent 32-bit seed of one phantom subject."""
  return int(np.random.SeedSequence([seed, subject]).generate_state(1)[0])


def split_subjects(subjects: Sequence[Subject],
                   data: ml_collections.ConfigDict) -> dict[str, list[Subject]]:
  """Seeded subject-level split (see the module docstring); each split sorted by id."""
  order = np.random.default_rng(data.seed).permutation(len(subjects))
  counts = {"test": data.num_test_subjects, "val": data.num_val_subjects}
  counts["train"] = (len(subjects) - sum(counts.values()) if data.num_train_subjects == -1
                     else data.num_train_subjects)
  if counts["train"] < 0 or sum(counts.values()) > len(subjects):
    raise InputError(
        f"data.root={data.root!r} has {len(subjects)} usable subjects but data.num_train_subjects, "
        f"num_val_subjects and num_test_subjects ask for {counts['train']}, {counts['val']} and "
        f"{counts['test']}; lower them (num_train_subjects=-1 takes all that remain).")
  splits, start = {}, 0
  for split in ("test", "val", "train"):
    chosen = order[start:start + counts[split]]
    splits[split] = sorted((subjects[i] for i in chosen), key=lambda s: s[0])
    start += counts[split]
  return splits


def _phantom_subjects(data: ml_collections.ConfigDict) -> tuple[list[Subject], list]:
  total = data.num_train_subjects + data.num_val_subjects + data.num_test_subjects
  shape, _ = phantom.phantom_grid(data.phantom.voxel_mm)
  indices = slicing.slice_indices(shape[2], data.slice_range, data.slices_per_subject)
  slab = (int(indices[0]), int(indices[-1]) + 1)  # Only the slices' slab is simulated: 5-10x faster.
  roles = (data.source, data.target)

  def pair(index: int) -> Pair:
    volumes = phantom.phantom_subject(subject_seed(data.seed, index), data, roles, slab)
    name = f"phantom subject {index}"
    return {"source": volumes[data.source], "target": volumes[data.target],
            "source_affine": volumes["affine"], "target_affine": volumes["affine"],
            "labels": volumes["labels"], "indices": indices - slab[0],
            "source_name": name, "target_name": name}
  return [(i, f"phantom{i}", lambda i=i: pair(i)) for i in range(total)], []


def choose_slices(target: np.ndarray, data: ml_collections.ConfigDict, name: str) -> np.ndarray:
  """The target's axial indices to take, by data.slice_select (see the module docstring)."""
  if data.slice_select == "brain":
    return slicing.brain_slices(slicing.brain(target, data.mask), data.slices_per_subject,
                                data.min_brain_fraction, name)
  return slicing.slice_indices(target.shape[2], data.slice_range, data.slices_per_subject)


def _load_exclude(path: str, target_shape: tuple[int, ...], target_affine: np.ndarray) -> np.ndarray:
  """The (X, Y, Z) bool mask of `path` (non-zero voxels), required on the target's grid."""
  mask, affine = nifti.load_volume(path, allow_constant=True)
  if not nifti.same_grid(mask.shape, affine, target_shape, target_affine):
    raise InputError(f"{path}: grid {mask.shape} does not match its target's {tuple(target_shape)} "
                     "(or the affines differ); data.exclude_glob masks must lie on the target's grid.")
  return mask != 0


def skull_stripped(volume: np.ndarray, affine: np.ndarray, path: str,
                   data: ml_collections.ConfigDict) -> np.ndarray:
  """With data.mask="nonzero", `volume` checked to be a skull-stripped brain, its background
  moved to 0 when it is another constant (`brain_extraction.stripped_brain`: e.g. 0.02 after
  rescaling); a background of 0 leaves the volume as it is."""
  # Most skull-stripped volumes have a background of 0 and pass the check at once; only the
  # others pay for finding their background level.
  if data.mask == "nonzero" and not nifti.mostly_zero(volume):
    level, background = brain_extraction.background_level(volume)
    brain = brain_extraction.stripped_brain(volume, affine, background)
    if brain is not None:
      volume = brain_extraction.zero_background(volume, brain, level)
  nifti.check_skull_stripped(volume, path, data)
  return volume


def _file_subjects(data: ml_collections.ConfigDict) -> tuple[list[Subject], list]:
  found = pairs.ixi_pairs(data) if data.dataset == "ixi" else pairs.glob_pairs(data)
  excludes = pairs.exclude_paths(data, [name for _, name, _, _ in found])

  def pair(name: str, source_path: str, target_path: str) -> Pair:
    source, source_affine = nifti.load_volume(source_path)
    target, target_affine = nifti.load_volume(target_path)
    source = skull_stripped(source, source_affine, source_path, data)
    target = skull_stripped(target, target_affine, target_path, data)
    out = {"source": source, "target": target, "source_affine": source_affine,
           "target_affine": target_affine, "indices": choose_slices(target, data, target_path),
           "source_name": source_path, "target_name": target_path}
    if name in excludes:
      out["exclude"] = _load_exclude(excludes[name], target.shape, target_affine)
    return out
  subjects = [(i, name, lambda n=name, s=s, t=t: pair(n, s, t)) for i, name, s, t in found]
  paths = [p for _, _, s, t in found for p in (s, t)] + sorted(excludes.values())
  fingerprint = [[p, os.path.getsize(p), os.path.getmtime(p)] for p in paths]
  return subjects, fingerprint


def extra_target_paths(data: ml_collections.ConfigDict) -> list[str]:
  """The files data.extra_targets' globs match, sorted; InputError for a glob matching none."""
  found = set()
  for pattern in data.extra_targets:
    matched = [p for p in glob.glob(pattern) if os.path.isfile(p)]
    if not matched:
      raise InputError(f"data.extra_targets: {pattern!r} matches no file; fix the glob (relative "
                       "to the working directory) or remove it.")
    found.update(matched)
  return sorted(found)


def target_only_slices(path: str, data: ml_collections.ConfigDict) -> np.ndarray:
  """(S, H, W, 1) float32 normalised target slices of a volume with no source
  (data.extra_targets), chosen and sampled as `pair_slices` chooses and samples a target's."""
  target, affine = nifti.load_volume(path)
  target = skull_stripped(target, affine, path, data)
  normalised = slicing.normalize(target, data.p_lo, data.p_hi, data.mask)
  return slicing.volume_to_slices(normalised, nifti.voxel_sizes(affine), data.image_size,
                                  choose_slices(target, data, path),
                                  pixel_mm=float(data.pixel_mm))[..., None]


def pair_slices(pair: Pair, data: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Normalised source/target (and label) slices of one subject on the target's grid.

  Args:
    pair: "source", "target" volumes with their "source_affine", "target_affine"; "indices" of
      the target's axial slices to take; "source_name", "target_name" for messages; "labels"
      and "exclude" (bool) on the target grid if known.

  Returns:
    "source", "target": (S, H, W, 1) float32 in [0, 1]; "labels": (S, H, W) int32 and
    "exclude": (S, H, W) bool if the pair has them; S = data.slices_per_subject,
    H = W = data.image_size.
  """
  target, target_affine = pair["target"], pair["target_affine"]
  source, source_affine = pair["source"], pair["source_affine"]
  indices = pair["indices"]
  head = slicing.brain(target, data.mask)[:, :, indices]
  empty = [int(z) for z, n in zip(indices, head.sum((0, 1))) if n < 0.01 * head[..., 0].size]
  if empty:
    raise InputError(f"{pair['target_name']}: axial slices {empty} hold no anatomy; move "
                     f"data.slice_range={tuple(data.slice_range)} (fractions of the z extent, "
                     "0 = inferior).")
  target_n = slicing.normalize(target, data.p_lo, data.p_hi, data.mask)
  source_n = slicing.normalize(source, data.p_lo, data.p_hi, data.mask)
  if nifti.same_grid(source.shape, source_affine, target.shape, target_affine):
    planes = source_n[:, :, indices]
  else:
    world = (registration.rigid_registration(target, target_affine, source, source_affine, data.seed)
             if data.register else None)
    planes, inside = registration.resample_slices(source_n, source_affine, target.shape, target_affine,
                                           indices, world)
    coverage = (inside & head).sum((0, 1)) / head.sum((0, 1))
    if coverage.min() < _MIN_COVERAGE:
      z = int(indices[np.argmin(coverage)])
      how = "registration" if data.register else "alignment by the headers"
      raise InputError(
          f"{pair['source_name']}: after {how} it covers only {coverage.min():.0%} of the head in "
          f"axial slice {z} of {pair['target_name']}; check both headers (affines), set "
          "data.register=True, or narrow data.slice_range.")
  spacing = nifti.voxel_sizes(target_affine)
  to_slices = functools.partial(slicing.volume_to_slices, spacing=spacing, size=data.image_size,
                                pixel_mm=float(data.pixel_mm))
  out = {"source": to_slices(planes, indices=range(len(indices)))[..., None],
         "target": to_slices(target_n, indices=indices)[..., None]}
  if "labels" in pair:
    out["labels"] = to_slices(pair["labels"].astype(np.int32), indices=indices, order=0)
  if "exclude" in pair:
    out["exclude"] = to_slices(pair["exclude"], indices=indices, order=0)
  return out


def _build_split(subjects: Sequence[Subject], data: ml_collections.ConfigDict,
                 progress: Callable[[], None]) -> dict[str, np.ndarray]:
  parts = []
  for subject_id, _, load in subjects:
    slices = pair_slices(load(), data)
    slices["subject"] = np.full(data.slices_per_subject, subject_id, np.int32)
    parts.append(slices)
    progress()
  if parts:
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
  size = data.image_size
  empty = {"source": np.zeros((0, size, size, 1), np.float32),
           "target": np.zeros((0, size, size, 1), np.float32), "subject": np.zeros((0,), np.int32)}
  if data.dataset == "phantom":
    empty["labels"] = np.zeros((0, size, size), np.int32)
  if data.exclude_glob:
    empty["exclude"] = np.zeros((0, size, size), bool)
  return empty


def cache_path(data: ml_collections.ConfigDict, workdir: str, fingerprint: list) -> str:
  """workdir/cache/<hash of the data config, pipeline version and input files>.npz"""
  blob = json.dumps({"version": _VERSION, "data": data.to_dict(), "files": fingerprint},
                    sort_keys=True, default=str)
  return os.path.join(workdir, "cache", hashlib.sha256(blob.encode()).hexdigest()[:20] + ".npz")


def _save(path: str, dataset: dict[str, dict[str, np.ndarray]]) -> None:
  """Writes the npz through `files.atomic_path`: no half-written cache."""
  flat = {f"{split}.{key}": value for split, arrays in dataset.items() for key, value in arrays.items()}
  with files.atomic_path(path) as temporary:
    np.savez(temporary, **flat)


def _load(path: str) -> dict[str, dict[str, np.ndarray]]:
  dataset: dict[str, dict[str, np.ndarray]] = {}
  with np.load(path) as archive:
    for name in archive.files:
      split, key = name.split(".", 1)
      dataset.setdefault(split, {})[key] = archive[name]
  return dataset


def load_dataset(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, np.ndarray]]:
  """Source/target slice pairs by split, built once and then read from the workdir cache.

  Args:
    config: the whole config; only `config.data` is used.
    workdir: the run's folder; the cache lives in workdir/cache.
  Returns:
    {"train", "val", "test"} -> {"source", "target": (N, H, W, 1) float32 in [0, 1],
    "labels": (N, H, W) int32 (0 background, 1 CSF, 2 GM, 3 WM; phantom only),
    "exclude": (N, H, W) bool (data.exclude_glob only), "subject": (N,) int32}. source / target are the modalities data.source / data.target.
    With data.extra_targets also "extra" -> {"target", "subject"} (ids from EXTRA_SUBJECT_ID on):
    target-only slices of other subjects, which only the score model trains on.
  """
  data = config.data
  check_data_config(data)
  subjects, fingerprint = (_phantom_subjects if data.dataset == "phantom" else _file_subjects)(data)
  extras = extra_target_paths(data)
  fingerprint += [[p, os.path.getsize(p), os.path.getmtime(p)] for p in extras]
  path = cache_path(data, workdir, fingerprint)
  if os.path.exists(path):
    logging.info("Data: reading the cache %s", path)
    return _load(path)
  splits = split_subjects(subjects, data)
  reporter = Progress(sum(len(s) for s in splits.values()) + len(extras),
                      every=_PROGRESS_EVERY[0], every_s=_PROGRESS_EVERY[1])

  def progress() -> None:
    report = reporter.update(reporter.done + 1)
    if report is not None:
      logging.info("Data (%s): %d/%d subjects, %.1f s", data.dataset, report.done, report.total,
                   report.elapsed_s)
  dataset = {split: _build_split(splits[split], data, progress) for split in SPLITS}
  if extras:
    parts = []
    for extra in extras:
      parts.append(target_only_slices(extra, data))
      progress()
    dataset["extra"] = {"target": np.concatenate(parts),
                        "subject": np.repeat(EXTRA_SUBJECT_ID + np.arange(len(parts), dtype=np.int32),
                                             [len(p) for p in parts])}
  _save(path, dataset)
  logging.info("Data: cached %s", path)
  return dataset
