"""Skull-stripped paired volumes with tumour masks (the BraTS layout), on tiny files the tests
write: slice choice by brain area, normalisation inside the brain, scoring with and without
the masked region, and `--mode=sample --input=` writing a translation and a segmentation."""

import json
import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from made_scans import brats_like, save
from lmi_jax import methods, model_store, segmentation, translate
from lmi_jax.data import load_dataset
from lmi_jax.data import slices as slicing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_brain_slices_spread_over_the_slices_with_enough_brain():
  tissue = np.zeros((4, 4, 12), bool)
  areas = [0, 1, 3, 8, 12, 16, 16, 12, 9, 4, 2, 0]  # Pixels of brain per axial slice.
  for z, a in enumerate(areas):
    tissue.reshape(16, 12)[:a, z] = True
  # Slices with >= half of the largest area (8 of 16): 3..8; four spread from 3 to 8.
  np.testing.assert_array_equal(slicing.brain_slices(tissue, 4, 0.5, "v"), [3, 5, 6, 8])
  np.testing.assert_array_equal(slicing.brain_slices(tissue, 0, 0.5, "v"), [3, 4, 5, 6, 7, 8])
  with pytest.raises(ValueError, match="data.min_brain_fraction"):
    slicing.brain_slices(tissue, 7, 0.5, "v")


def test_normalisation_inside_the_brain_keeps_the_background_zero():
  rng = np.random.default_rng(0)
  volume = np.zeros((20, 20, 5))
  volume[5:15, 5:15] = rng.uniform(100, 500, (10, 10, 5))
  out = slicing.normalize(volume, 0.0, 99.0, "nonzero")
  assert np.all(out[volume == 0] == 0)
  inside = volume[volume != 0]
  # 1 is the 99th percentile of the brain, not of the whole (mostly empty) field of view.
  np.testing.assert_allclose(np.mean(out[volume != 0] >= 1.0), 0.01, atol=0.003)
  np.testing.assert_allclose(out[volume != 0], np.clip(inside / np.percentile(inside, 99), 0, 1),
                             rtol=1e-5)


def test_dataset_takes_brain_slices_and_the_masks(cases, tmp_path):
  config = brats_like(cases)
  data = load_dataset(config, str(tmp_path))
  for split, count in (("train", 8), ("val", 4), ("test", 4)):
    assert data[split]["target"].shape == (count, 32, 32, 1)
    assert data[split]["exclude"].shape == (count, 32, 32) and data[split]["exclude"].dtype == bool
  test = data["test"]
  assert test["exclude"].any()
  # Masks and images share the grid: the tumour lies inside the brain.
  assert np.all(test["target"][..., 0][test["exclude"]] > 0)
  # The brain fills each chosen slice: at least half the largest slice's area.
  areas = (data["train"]["target"][..., 0] > 0).sum((1, 2))
  assert areas.min() >= 0.4 * areas.max()


def test_a_raw_head_is_refused_as_not_skull_stripped(cases, tmp_path):
  head = np.random.default_rng(0).uniform(1, 100, (16, 16, 16))
  path = save(tmp_path / "raw.nii.gz", head)
  with pytest.raises(ValueError, match="raw.nii.gz: only 0.0% of its voxels are 0"):
    from lmi_jax.data import nifti
    nifti.load_slices(path, brats_like(cases).data, brain_only=True)


def test_eval_scores_the_brain_and_the_brain_outside_the_tumour(trained_on_cases, monkeypatch):
  """Skull-stripped data are scored inside the brain, and once more outside the tumour; every
  method's output is zero outside the source's brain (its background), as the input is, and
  the sampler's output inside it is kept as it was."""
  config, workdir = trained_on_cases
  masked = []  # (source, output as the method gave it, output as scored) per method.
  real_inside = methods.inside_source_brain

  def keep(config, source, translated):
    out = real_inside(config, source, translated)
    masked.append((np.array(source), np.array(translated), np.array(out)))
    return out

  monkeypatch.setattr(methods, "inside_source_brain", keep)
  report = translate.evaluate(config, workdir)
  data = load_dataset(config, workdir)["test"]
  outside = report["regions"]["outside_exclude"]
  assert report["masked_metrics"] and outside["masked_metrics"]
  # The identity row's PSNR, by hand, over the brain and over the brain less the tumour.
  source, target = data["source"][..., 0], data["target"][..., 0]
  for region, mask in ((report, target > 0), (outside, (target > 0) & ~data["exclude"])):
    want = [10 * np.log10(1 / np.mean((s[m] - t[m]) ** 2)) for s, t, m in zip(source, target, mask)]
    got = region["methods"]["identity"]["per_slice"]["psnr"]
    np.testing.assert_allclose(got, want, rtol=1e-6)
  text = open(os.path.join(workdir, "eval", "report.md")).read()
  assert "Outside the excluded regions" in text
  # Outputs are zero outside the source's brain, as the input's background is.
  assert len(masked) == len(config.eval.methods)
  for (given, raw, out), name in zip(masked, config.eval.methods):
    brain = given[..., 0] != 0
    np.testing.assert_array_equal(given, data["source"])
    assert np.all(out[..., 0][~brain] == 0), name
    np.testing.assert_array_equal(out[..., 0][brain], raw[..., 0][brain])
  lmi_raw, lmi_out = masked[config.eval.methods.index("lmi")][1:]
  brain = data["source"][..., 0] != 0
  assert np.abs(lmi_raw[..., 0][~brain]).mean() > 0.01  # The sampler's background is not 0 ...
  # ... and the lmi row scores the masked output: its PSNR over the brain, by hand.
  want = [10 * np.log10(1 / np.mean((o[m] - t[m]) ** 2))
          for o, t, m in zip(lmi_out[..., 0], target, target > 0)]
  np.testing.assert_allclose(report["methods"]["lmi"]["per_slice"]["psnr"], want, rtol=1e-6)


def test_sample_input_writes_translation_and_segmentation_on_the_input_grid(
    trained_on_cases, cases, tmp_path):
  config, workdir = trained_on_cases
  source = str(cases / "case_3" / "FLAIR.nii.gz")
  flags = [f"--config.data.{k}={v}" for k, v in (
      ("dataset", "nifti"), ("root", str(cases)), ("source", "FLAIR"), ("target", "T1"),
      ("exclude_glob", "*/GT_W.nii*"), ("mask", "nonzero"), ("slice_select", "brain"),
      ("min_brain_fraction", 0.5), ("slices_per_subject", 4), ("num_train_subjects", 2),
      ("num_val_subjects", 1), ("num_test_subjects", 1))]
  done = subprocess.run(
      [sys.executable, "main.py", "--config=configs/tiny.py", f"--workdir={workdir}",
       "--mode=sample", f"--input={source}", "--config.sampling.num_steps=4", *flags],
      cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
      timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  # Progress from inside the jitted sampler: the first and the last step at least.
  assert re.search(r"lmi: batch 1/\d+, step 1/4 .* s elapsed, about \d+ s left", done.stderr)
  assert "step 4/4 (100% of all)" in done.stderr
  image_in = nib.load(source)
  out = nib.load(os.path.join(workdir, "samples", "FLAIR_translated.nii.gz"))
  seg = nib.load(os.path.join(workdir, "samples", "FLAIR_segmentation.nii.gz"))
  raw = image_in.get_fdata()
  for image in (out, seg):
    assert image.shape == image_in.shape
    np.testing.assert_allclose(image.affine, image_in.affine)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
  translated, labels = out.get_fdata(), seg.get_fdata()
  assert seg.get_data_dtype() == np.uint8
  # Where the input has no brain the outputs are 0; the brain's slices are translated.
  assert np.all(translated[raw == 0] == 0) and np.all(labels[raw == 0] == 0)
  holds_brain = (raw != 0).sum((0, 1)) > 0
  assert np.all((translated != 0).sum((0, 1))[holds_brain] > 0)
  assert set(np.unique(labels[raw != 0])) <= {0, 1, 2, 3} and (labels[raw != 0] > 0).mean() > 0.9
  # What was translated and how much structure the source showed, recorded beside it.
  with open(os.path.join(workdir, "samples", "FLAIR_translated.json")) as f:
    record = json.load(f)
  assert record["input"] == source and 0 < record["slices"] <= int(holds_brain.sum())
  assert record["model"] == os.path.join(workdir, "checkpoints")  # Its own, not a shipped one.
  low = record["structure_score"] < record["structure_threshold"]
  assert (record["structure_warning"] is not None) == low
  assert ("tissue structure score" in done.stderr) == low
  # The K-means used is the one fitted on the training targets, stored beside the model.
  stored = segmentation.read_segmenter(os.path.join(workdir, model_store.SEGMENTER_FILE))
  data = load_dataset(config, workdir)
  assert stored == segmentation.fit_segmenter(config, data["train"]["target"])


def test_a_constant_background_other_than_0_is_a_brain_with_a_background(cases, tmp_path):
  """The same skull-stripped cases with their background at a constant 7 (as a rescaled
  export gives) load as the same data set as with background 0."""
  shifted = tmp_path / "shifted"
  for path in cases.glob("case_*/*.nii.gz"):
    image = nib.load(path)
    volume = image.get_fdata()
    if path.name != "GT_W.nii.gz":
      volume = np.where(volume != 0, volume + 7.0, 7.0)
    save(shifted / path.parent.name / path.name, volume, image.affine)
  original = load_dataset(brats_like(cases), str(tmp_path / "a"))
  moved = load_dataset(brats_like(shifted), str(tmp_path / "b"))
  for split in ("train", "test"):
    for role in ("source", "target"):
      np.testing.assert_allclose(moved[split][role], original[split][role], atol=1e-5)
