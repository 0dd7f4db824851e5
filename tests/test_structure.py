"""Tests of the source structure score and its warning (lmi_jax/structure.py)."""

import math

import numpy as np
import pytest

from configs import phantom_pd2t1_cpu
from lmi_jax import structure
from lmi_jax.data import dataset, phantom
from lmi_jax.data import slices as slicing
from lmi_jax.errors import InputError

SIZE = 64


def _disk(size: int = SIZE, radius: float = 26.0) -> np.ndarray:
  yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
  return xx ** 2 + yy ** 2 < radius ** 2


def _two_tissue(contrast: float, noise: float = 0.02, seed: int = 0) -> np.ndarray:
  """(H, W) brain disk at 0.6 with 3-pixel stripes of a second tissue at 0.6 + contrast,
  white Gaussian noise of std `noise` (the same draw for every contrast)."""
  brain = _disk()
  stripes = (np.arange(SIZE)[None, :] // 3) % 2 == 1
  image = np.where(brain, 0.6 + contrast * (stripes & brain), 0.0)
  return image + noise * np.random.default_rng(seed).standard_normal(image.shape)


def test_flat_source_scores_near_zero_and_warns_naming_file_and_figure():
  flat = _two_tissue(0.0)
  score = structure.structure_score(flat, _disk())
  assert 0.0 <= score < 0.3  # Pure noise: its variance is all accounted for by the estimate.
  warning = structure.check_structure(score, name="flat.nii.gz")
  assert warning is not None
  assert "flat.nii.gz" in warning and f"{score:.2f}" in warning


def test_score_grows_with_the_contrast_of_two_tissues():
  # From flat to 16 noise stds; a contrast below one noise std may score 0 like a flat one.
  contrasts = [0.0, 0.02, 0.04, 0.08, 0.16, 0.32]
  scores = [structure.structure_score(_two_tissue(c), _disk()) for c in contrasts]
  assert all(b > a for a, b in zip(scores, scores[1:])), scores
  # Far above the noise the structure std is proportional to the contrast.
  assert scores[-1] / scores[-2] == pytest.approx(2.0, rel=0.1)


def test_score_ignores_affine_intensity_changes_and_noise_free_structure_is_infinite():
  image = _two_tissue(0.05)
  mask = _disk()
  assert structure.structure_score(3.0 * image + 0.2, mask) == pytest.approx(
      structure.structure_score(image, mask), rel=1e-6)
  assert structure.structure_score(_two_tissue(0.05, noise=0.0), mask) == math.inf


def test_brain_mask_finds_the_disk_and_stacks_pool():
  image = _two_tissue(0.1)
  mask = structure.brain_mask(image)
  assert mask.shape == (SIZE, SIZE)
  assert np.mean(mask == _disk()) > 0.99
  stack = np.stack([image, image])[..., None]
  assert structure.brain_mask(stack).shape == (2, SIZE, SIZE)
  assert structure.structure_score(stack, structure.brain_mask(stack)) == pytest.approx(
      structure.structure_score(image, mask), rel=1e-6)


def test_phantom_pd_source_does_not_warn():
  # One validation-like subject through the data pipeline of the shipped 64 x 64 model.
  data = phantom_pd2t1_cpu.get_config().data
  shape, affine = phantom.phantom_grid(data.phantom.voxel_mm)
  indices = slicing.slice_indices(shape[2], data.slice_range, data.slices_per_subject)
  slab = (int(indices[0]), int(indices[-1]) + 1)
  volume = phantom.phantom_subject(dataset.subject_seed(data.seed, 5), data, ("PD",), slab)["PD"]
  normalised = slicing.normalize(volume, data.p_lo, data.p_hi, data.mask)
  spacing = np.linalg.norm(affine[:3, :3], axis=0)
  slices = slicing.volume_to_slices(normalised, spacing, data.image_size, indices - slab[0])
  score = structure.structure_score(slices, structure.brain_mask(slices))
  assert score > 2 * structure.THRESHOLD
  assert structure.check_structure(score, name="phantom PD") is None


def test_check_structure_names_the_worst_part_and_handles_no_brain():
  warning = structure.check_structure({"slice 3": 4.0, "slice 7": 0.4}, threshold=1.0, name="a.nii")
  assert warning is not None and "a.nii (slice 7)" in warning and "0.40" in warning
  assert structure.check_structure({"slice 3": 4.0}, threshold=1.0) is None
  empty = structure.structure_score(np.zeros((SIZE, SIZE)), np.zeros((SIZE, SIZE), bool))
  assert math.isnan(empty)
  assert "no brain" in structure.check_structure(empty, name="b.nii")


def test_mismatched_mask_is_an_input_error():
  with pytest.raises(InputError, match="brain_mask"):
    structure.structure_score(np.zeros((2, SIZE, SIZE)), np.zeros((SIZE, SIZE), bool))
