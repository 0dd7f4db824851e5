"""Scans as they come (lmi_jax/scans.py, brain_extraction.py, data/dicom.py): the brain of a
skull-stripped scan whatever its background, brain extraction from raw heads of several
contrasts and orientations, DICOM series, output names, and several inputs in one run with
one compilation."""

import json
import logging
import os

import jax
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from skimage import filters

from made_scans import save, write_dicom_series
from configs import default
from lmi_jax import brain_extraction, methods, scans, segmentation
from lmi_jax.data import dicom, phantom
from lmi_jax.errors import InputError


def dice(a: np.ndarray, b: np.ndarray) -> float:
  return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def brain_3mm():
  """A phantom subject at 3 mm (RAS, MNI-like anatomy): T1w and T2w brains and its brain."""
  data = default.get_config().data
  data.phantom.voxel_mm = 3.0
  subject = phantom.phantom_subject(5, data, ("T1", "T2"))
  brain = subject["labels"] > 0
  return subject["T1"] * brain, subject["T2"] * brain, brain


def raw_head(brain_image: np.ndarray, brain: np.ndarray, scalp: float, seed: int = 0) -> np.ndarray:
  """A head around a brain image (3 mm voxels): CSF rim, dark skull, a bright scalp, and noisy
  air (Rayleigh-like, as magnitude images have)."""
  rng = np.random.default_rng(seed)
  pad = 8
  brain = np.pad(brain, pad)
  image = np.pad(brain_image, pad)
  distance = ndimage.distance_transform_edt(~brain, sampling=3.0)
  top = float(np.percentile(image[brain], 99))
  head = image.copy()
  head[(distance > 0) & (distance <= 4)] = 0.15 * top  # CSF and meninges.
  head[(distance > 4) & (distance <= 9)] = 0.05 * top  # Skull.
  head[(distance > 9) & (distance <= 15)] = scalp * top  # Scalp and fat.
  air = np.abs(rng.normal(0, 0.03 * top, head.shape) + 1j * rng.normal(0, 0.03 * top, head.shape))
  return np.where(distance > 15, air, head).astype(np.float32), brain


def test_a_skull_stripped_brain_is_found_whatever_its_constant_background(brain_3mm):
  t1, _, brain = brain_3mm
  affine = np.diag([3.0, 3.0, 3.0, 1.0])
  filled = ndimage.binary_fill_holes(brain)
  for background in (0.0, 0.02, -5.0):
    volume = np.where(brain, t1 + 1.0, background)
    np.testing.assert_array_equal(brain_extraction.stripped_brain(volume, affine), filled)
  # Interpolation leaves tiny negative values around 0 outside, and exact zeros inside.
  ringing = np.where(brain, t1 + 1.0, -1e-6 * np.random.default_rng(0).random(brain.shape))
  ringing[tuple(np.argwhere(brain)[len(np.argwhere(brain)) // 2])] = 0.0
  np.testing.assert_array_equal(brain_extraction.stripped_brain(ringing, affine), filled)


def test_a_raw_head_is_not_taken_for_a_skull_stripped_brain(brain_3mm):
  t1, _, brain = brain_3mm
  head, _ = raw_head(t1, brain, scalp=0.9)
  assert brain_extraction.stripped_brain(head, np.diag([3.0, 3.0, 3.0, 1.0])) is None
  # Exact zeros in the air (as IXI's uint8 heads have) do not make it one either.
  zeroed = np.where(head < np.percentile(head, 30), 0.0, head)
  assert brain_extraction.stripped_brain(zeroed, np.diag([3.0, 3.0, 3.0, 1.0])) is None


@pytest.mark.parametrize("contrast", ["T1", "T2"])
def test_brain_extraction_of_raw_heads_in_any_orientation(brain_3mm, contrast):
  t1, t2, brain = brain_3mm
  head, truth = raw_head(t1 if contrast == "T1" else t2, brain, scalp=0.9 if contrast == "T1" else 0.5)
  # Stored sagittally (PSR, as IXI's heads) with its origin far from the brain's centre.
  stored = np.transpose(head, (1, 2, 0))[::-1]
  affine = np.array([[0, 0, 3.0, -60], [-3.0, 0, 0, 90], [0, 3.0, 0, -40], [0, 0, 0, 1]])
  affine[:3, 3] += [7.0, -11.0, 25.0]
  extracted = brain_extraction.extract_brain(stored, affine, margin_mm=0.0)
  back = np.transpose(extracted[::-1], (2, 0, 1))
  # The margin-0 mask is the MNI152 brain itself: the phantom's brain, moved and resampled.
  assert dice(back, truth) > 0.9, dice(back, truth)
  grown = brain_extraction.extract_brain(stored, affine, margin_mm=6.0)
  assert grown.sum() > extracted.sum() and np.all(grown >= extracted)


def test_output_names_are_unique_and_keep_dots():
  assert scans.output_stem("/d/patient.niigata_01.nii.gz") == "patient.niigata_01"
  assert scans.output_stem("/d/scan.MGZ") == "scan" and scans.output_stem("/d/plain") == "plain"
  assert scans.output_stem("/data/dicom/series_7/") == "series_7"
  names = scans.unique_names(["/a/p1/FLAIR.nii.gz", "/a/p2/FLAIR.nii.gz", "/a/p3/T2.nii"])
  assert names == ["p1_FLAIR", "p2_FLAIR", "T2"]
  deeper = scans.unique_names(["/x/site1/p/FLAIR.nii.gz", "/x/site2/p/FLAIR.nii.gz"])
  assert deeper == ["site1_p_FLAIR", "site2_p_FLAIR"]
  long = scans.unique_names(["/d/" + "a" * 300 + ".nii.gz"])[0]
  assert len((".tmp-0123456789ab-" + long + "_segmentation.nii.gz").encode()) <= 255
  assert long != scans.unique_names(["/d/" + "a" * 299 + "b.nii.gz"])[0]


def test_inputs_are_files_folders_and_globs(tmp_path):
  for name in ("p1/FLAIR.nii.gz", "p2/FLAIR.nii.gz", "p2/T2.nii", "other/notes.txt"):
    os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
    (tmp_path / name).write_bytes(b"")
  found = scans.find_scans([str(tmp_path / "p*" / "FLAIR.nii.gz"), str(tmp_path / "p2")])
  assert [(os.path.relpath(s.path, tmp_path), s.name) for s in found] == [
      ("p1/FLAIR.nii.gz", "p1_FLAIR"), ("p2/FLAIR.nii.gz", "p2_FLAIR"), ("p2/T2.nii", "T2")]
  with pytest.raises(InputError, match="no file matches"):
    scans.find_scans([str(tmp_path / "q*" / "*.nii.gz")])
  with pytest.raises(InputError, match="other: a folder with no NIfTI files"):
    scans.find_scans([str(tmp_path / "other")])
  # A missing file is a scan that fails later, with the others going on.
  assert scans.find_scans([str(tmp_path / "gone.nii.gz")])[0].name == "gone"


def test_a_dicom_series_keeps_the_patients_geometry(tmp_path, brain_3mm):
  _, t2, _ = brain_3mm
  volume = t2[:, :, 10:30]
  affine = np.array([[-3.0, 0, 0, 90], [0, 0, 3.0, -50], [0, -3.0, 0, 60], [0, 0, 0, 1]])  # Coronal.
  folder = str(tmp_path / "series")
  write_dicom_series(volume, affine, folder)
  (series,) = dicom.find_series(folder)
  assert series.description == "t2_tse_tra" and len(series.files) == volume.shape[2]
  # The reader orders slices along their normal: the voxel order may differ from the
  # volume's, the world position of every voxel may not.
  image = nib.as_closest_canonical(dicom.read_series(folder, series))
  written = nib.as_closest_canonical(nib.Nifti1Image(volume, affine))
  np.testing.assert_allclose(image.affine, written.affine, atol=1e-3)
  read, want = image.get_fdata(), written.get_fdata()
  # int16 storage of values rescaled to 0..4000: the same image up to the scale.
  np.testing.assert_allclose(read / read.max(), want / want.max(), atol=2e-3)
  # Two series in one folder: the error lists both; data.dicom_series picks one.
  write_dicom_series(volume[::-1], affine, folder, "flair_tra", "1.2.826.0.1.3680043.2.1125.2")
  found = dicom.find_series(folder)
  with pytest.raises(InputError, match=r"2 series: .*t2_tse_tra.*flair_tra|2 series: .*flair_tra.*t2_tse_tra"):
    dicom.choose_series(folder, found, "")
  assert dicom.choose_series(folder, found, "flair_tra").description == "flair_tra"
  with pytest.raises(InputError, match="no series is named 'dwi'"):
    dicom.choose_series(folder, found, "dwi")


def test_several_scans_in_one_run_compile_once(trained_on_cases, cases, tmp_path, brain_3mm,
                                               monkeypatch, caplog):
  """Two patients' FLAIR.nii.gz (same name), a raw head and a DICOM series through
  sample_scans: one pmapped sampler built, outputs apart, each on its input's grid."""
  config, workdir = trained_on_cases
  config = config.copy_and_resolve_references()
  config.data.brain_extraction = "auto"
  config.data.brain_margin_mm = 4.0
  config.data.dicom_series = ""
  inputs = tmp_path / "inputs"
  for patient, case in (("p1", "case_2"), ("p2", "case_3")):
    os.makedirs(inputs / patient)
    image = nib.load(cases / case / "FLAIR.nii.gz")
    nib.save(image, str(inputs / patient / "FLAIR.nii.gz"))
  _, t2, brain = brain_3mm
  head, truth = raw_head(200.0 * t2, brain, scalp=0.5)
  head_path = save(inputs / "raw" / "head.nii.gz", head, np.diag([3.0, 3.0, 3.0, 1.0]))
  write_dicom_series(200.0 * t2 * brain, np.diag([-3.0, -3.0, 3.0, 1.0]), str(inputs / "dicom_p4"))
  built = []
  real_pmap = jax.pmap
  monkeypatch.setattr(jax, "pmap", lambda *a, **k: built.append(1) or real_pmap(*a, **k))
  with caplog.at_level(logging.INFO):
    records = scans.sample_scans(config, workdir, [str(inputs / "p*" / "FLAIR.nii.gz"), head_path,
                                                   str(inputs / "dicom_p4")])
  assert len(built) == 1  # One sampler for all four volumes (and batches of one shape).
  assert [os.path.basename(r["outputs"]["translated.nii.gz"]) for r in records] == [
      "p1_FLAIR_translated.nii.gz", "p2_FLAIR_translated.nii.gz", "head_translated.nii.gz",
      "dicom_p4_translated.nii.gz"]
  assert [r["brain"] for r in records] == ["skull-stripped", "skull-stripped", "extracted",
                                           "skull-stripped"]
  for record in records:
    out = record["outputs"]
    reference = nib.load(record["source_nifti"])
    translated = nib.load(out["translated.nii.gz"])
    mask = nib.load(out["brainmask.nii.gz"]).get_fdata() > 0
    assert translated.shape == reference.shape
    np.testing.assert_allclose(translated.affine, reference.affine)
    assert np.all(translated.get_fdata()[~mask] == 0) and translated.get_fdata()[mask].max() > 0
    assert os.path.getsize(out["qc.png"]) > 10_000
    with open(out["translated.nii.gz"].replace(".nii.gz", ".json")) as f:
      assert json.load(f)["input"] == os.path.abspath(record["input"])
  # The head's extracted brain is the phantom's brain (grown by the margin).
  extracted = nib.load(records[2]["outputs"]["brainmask.nii.gz"]).get_fdata() > 0
  assert dice(extracted, truth) > 0.85
  assert nib.load(records[3]["source_nifti"]).shape == t2.shape
  progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Volume ")]
  assert len(progress) == 4 and "Volume 4/4 (dicom_p4) done" in progress[-1]
  # A later run may not overwrite another input's outputs of the same name.
  other = save(tmp_path / "elsewhere" / "p1" / "FLAIR.nii.gz", head)
  taken = scans.Scan(other, "p1_FLAIR", False)
  with pytest.raises(InputError, match="already holds outputs named 'p1_FLAIR' of another input"):
    scans.check_not_taken(taken, os.path.join(workdir, "samples"))


def test_inputs_without_brain_contrast_warn(brain_3mm):
  t1, t2, brain = brain_3mm
  affine = np.diag([3.0, 3.0, 3.0, 1.0])
  prepared = lambda volume: scans.PreparedScan("f", volume, volume, affine, brain, "skull-stripped")
  for scan in (t1, t2):
    assert scans.contrast_warning(prepared(np.where(brain, scan + 0.01, 0.0)), "x") == ""
  labels = np.where(brain, np.round(t1 * 3 / t1.max()) + 1, 0.0)
  assert "looks like a label map" in scans.contrast_warning(prepared(labels), "x")
  noise = np.random.default_rng(0).normal(0, 0.02, brain.shape)
  ball = np.where(brain, 1.0 + noise, 0.0)  # A water phantom: one intensity, 2% noise.
  assert "one uniform intensity" in scans.contrast_warning(prepared(ball), "x")


def test_a_scan_segmented_jointly_takes_its_sources_boundaries(tmp_path):
  """sampling.scan_segmenter: a soft, noisy T1w-like translation beside its sharp T2w-like
  source (WM < GM < CSF). The model's K-means of the translation alone mislabels the blurred
  boundaries; clustered with the source, the true tissues come back, in T1w order."""
  radius = np.linalg.norm(np.mgrid[:24, :24, :8].transpose(1, 2, 3, 0) - (11.5, 11.5, 3.5), axis=-1)
  labels = np.select([radius < 4, radius < 7, radius < 10], [3, 2, 1], 0)
  rng = np.random.default_rng(0)
  source = np.where(labels > 0, np.array((0, 0.9, 0.55, 0.3))[labels] + 0.01 * rng.standard_normal(labels.shape), 0)
  soft = ndimage.gaussian_filter(np.array((0, 0.25, 0.5, 0.7))[labels], 1.0)
  translation = np.clip(soft + 0.04 * rng.standard_normal(labels.shape), 0, 1) * (labels > 0)
  affine = np.diag([1.0, 1.0, 1.0, 1.0])
  path = save(tmp_path / "t2.nii.gz", source, affine)
  prepared = scans.PreparedScan(path, source, source, affine, labels > 0, "skull-stripped")
  config = default.get_config()
  config.eval.kmeans_n_init = 3
  segmenter = segmentation.KMeansSegmenter((0.25, 0.5, 0.7), 0.05)
  brain = labels > 0
  right = {}
  for name in ("model", "joint"):
    config.sampling.scan_segmenter = name
    found = scans.scan_labels(config, segmenter, prepared, translation, brain)
    np.testing.assert_array_equal(found[~brain], 0)
    right[name] = np.mean(found[brain] == labels[brain])
  assert right["joint"] > 0.97 and right["model"] < right["joint"] - 0.05, right


@pytest.mark.parametrize("mask", ["none", "foreground"])
def test_a_whole_scan_is_translated_with_its_background(brain_3mm, tmp_path, monkeypatch, mask):
  """With a model of whole scans (data.mask "none" or "foreground", not skull-stripped), a raw
  head is translated whole: every axial slice holding at least 1% of the largest slice's
  Otsu foreground, normalised to [0, 1] from the scan's minimum to the 99.5th percentile of
  that foreground ("foreground": zero outside the head, its largest region with holes
  filled), written back on the input's grid with nothing masked, and segmented by the
  nearest K-means centroid above the background threshold. The translation is a stand-in
  (1 - x, which lights up the background) so that every voxel written can be predicted:
  the reference here is computed with NumPy, scikit-image and SciPy."""
  t1, _, brain = brain_3mm
  head, _ = raw_head(200.0 * t1, brain, scalp=0.9)
  path = save(tmp_path / "head.nii.gz", head, np.diag([3.0, 3.0, 3.0, 1.0]))  # RAS already.
  config = default.get_config()
  config.data.mask, config.data.brain_extraction = mask, "auto"
  config.data.image_size = max(head.shape[:2])  # One pixel per voxel: nothing is resized.
  monkeypatch.setattr(methods, "translate_lmi", lambda ctx, source, key: 1.0 - source)
  ctx = methods.Context(model=None, variables={}, sde=None, lmi_cfg=None, config=config,
                          target_reference=np.zeros(1, np.float32))
  segmenter = segmentation.KMeansSegmenter((0.3, 0.6, 0.9), 0.05)
  out_dir = str(tmp_path / "samples")
  loaded = scans.load_scan(scans.Scan(path, "head", False), config, out_dir)
  record = scans.translate_scan(ctx, segmenter, loaded, out_dir)

  foreground = head > filters.threshold_otsu(head)
  area = foreground.sum((0, 1))
  translated_z = np.flatnonzero(area >= 0.01 * area.max())
  lo, hi = head.min(), np.percentile(head[foreground], config.data.p_hi)
  normalised = np.clip((head - lo) / (hi - lo), 0.0, 1.0)
  if mask == "foreground":
    regions, _ = ndimage.label(foreground)
    largest = regions == 1 + np.argmax(np.bincount(regions.ravel())[1:])
    normalised *= ndimage.binary_fill_holes(largest)
  want = np.zeros(head.shape)
  want[..., translated_z] = 1.0 - normalised[..., translated_z]
  assert record["brain"] == "whole scan" and record["slices"] == len(translated_z)
  written = nib.load(record["outputs"]["translated.nii.gz"]).get_fdata()
  np.testing.assert_allclose(written, want, atol=1e-5)
  background = ~foreground
  background[..., np.setdiff1d(np.arange(head.shape[2]), translated_z)] = False
  assert written[background].min() > 0.5  # Translated too, not masked to 0.
  labels = nib.load(record["outputs"]["segmentation.nii.gz"]).get_fdata()
  nearest = 1 + np.argmin(np.abs(written[..., None] - np.array(segmenter.centroids)), axis=-1)
  np.testing.assert_array_equal(labels, np.where(written > 0.05, nearest, 0))
  mask_file = nib.load(record["outputs"]["brainmask.nii.gz"]).get_fdata()
  np.testing.assert_array_equal(mask_file > 0, foreground)
