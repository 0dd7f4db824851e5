"""Full resolution: slices at a fixed pixel size, T1w-only training volumes, training on
crops, and lmi started from a low-resolution model's translation (lmi_jax/multiscale.py)."""

import os
import textwrap

import jax
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from made_scans import brats_like, train_briefly
from lmi_jax import methods, multiscale, pretrained, sampling, scans, settings, translate
from lmi_jax.data import train_batches
from lmi_jax.data import load_dataset
from lmi_jax.data import slices as slicing
from lmi_jax.errors import InputError


def brute_guided_filter(guide, image, radius, eps):
  """He et al.'s guided filter by explicit windows (reflected borders, as scipy's 'reflect')."""
  pad = lambda x: np.pad(x, radius, mode="symmetric")
  g, p = pad(guide), pad(image)
  height, width = guide.shape
  a, b = np.zeros((height + 2 * radius, width + 2 * radius)), np.zeros_like(g)
  for y in range(radius, height + radius):
    for x in range(radius, width + radius):
      wg = g[y - radius:y + radius + 1, x - radius:x + radius + 1]
      wp = p[y - radius:y + radius + 1, x - radius:x + radius + 1]
      a[y, x] = ((wg * wp).mean() - wg.mean() * wp.mean()) / (wg.var() + eps)
      b[y, x] = wp.mean() - a[y, x] * wg.mean()
  # The maps of the windows holding each pixel, averaged: the windows around its neighbours.
  inner = (slice(radius, height + radius), slice(radius, width + radius))
  a, b = pad(a[inner]), pad(b[inner])
  out = np.zeros((height, width))
  for y in range(height):
    for x in range(width):
      window = (slice(y, y + 2 * radius + 1), slice(x, x + 2 * radius + 1))
      out[y, x] = a[window].mean() * guide[y, x] + b[window].mean()
  return out


def test_guided_filter_matches_explicit_windows():
  rng = np.random.default_rng(0)
  guide, image = rng.random((2, 1, 11, 13, 1))
  out = multiscale.guided_filter(guide, image, radius=2, eps=0.05)
  expected = brute_guided_filter(guide[0, ..., 0], image[0, ..., 0], 2, 0.05)
  np.testing.assert_allclose(out[0, ..., 0], expected, atol=1e-6)
  # An image that is a linear map of its guide comes back as it is, inverted contrast included.
  np.testing.assert_allclose(multiscale.guided_filter(guide, 0.8 - 0.5 * guide, 3, 1e-9),
                             0.8 - 0.5 * guide, atol=1e-5)


def test_content_box_holds_every_non_zero_pixel_in_multiples():
  rng = np.random.default_rng(1)
  images = np.zeros((3, 64, 72, 1), np.float32)
  images[0, 20:30, 10:15] = 1
  images[1, 40:45, 50:60] = rng.random((5, 10, 1))
  box = multiscale.content_box(images, multiple=8, margin=4)
  assert images[box].sum() == pytest.approx(images.sum())
  height, width = images[box].shape[1:3]
  assert height % 8 == 0 and width % 8 == 0 and height < 64 and width < 72
  assert images[multiscale.content_box(np.zeros_like(images), 8)].shape == images.shape


def test_slices_at_a_fixed_pixel_size_keep_the_scale_and_come_back():
  volume = np.zeros((30, 20, 3), np.float32)
  volume[5:25, 4:16] = np.linspace(0.2, 1.0, 12)[None, :, None]
  spacing = (2.0, 2.0, 3.0)
  slices = slicing.volume_to_slices(volume, spacing, 64, [0, 2], pixel_mm=1.0)
  # 60 x 40 mm at 1 mm: 60 x 40 pixels, whatever the canvas (rows: y, 40; columns: x, 60).
  rows, cols = np.nonzero(slices[0] > 0)
  assert np.ptp(rows) + 1 == pytest.approx(24, abs=2) and np.ptp(cols) + 1 == pytest.approx(40, abs=2)
  back = slicing.slices_to_volume(slices, volume.shape, spacing, [0, 2], pixel_mm=1.0)
  np.testing.assert_allclose(back[8:22, 6:14, 0], volume[8:22, 6:14, 0], atol=0.03)
  with pytest.raises(InputError, match="data.image_size=32"):
    slicing.volume_to_slices(volume, spacing, 32, [0], pixel_mm=1.0)


def test_brain_crops_are_centred_on_brain_and_drawn_from_seed_and_step():
  images = np.zeros((4, 48, 48, 1), np.float32)
  images[:, 30:40, 5:12] = 1.0  # A small brain near a corner: crops must still hold it.
  crops = train_batches.brain_crops(images, np.random.default_rng([0, 5, 1]), 16)
  assert crops.shape == (4, 16, 16, 1) and all(c.sum() > 0 for c in crops)
  batches = lambda start: train_batches.host_batches(images, 0, start, 4, True, 0, 1, 2, crop_size=16)
  resumed, uninterrupted = next(batches(3)), next(b for i, b in enumerate(batches(0)) if i == 3)
  np.testing.assert_array_equal(resumed["image"], uninterrupted["image"])
  assert resumed["image"].shape == (2, 2, 16, 16, 1)


def test_crop_training_needs_a_fully_convolutional_model(cases):
  config = brats_like(cases)
  config.training.crop_size = 16
  with pytest.raises(InputError, match="model.mid_attention"):
    settings.check_crop_config(config)
  config.model.attn_resolutions, config.model.mid_attention = (), False
  settings.check_crop_config(config)
  config.training.crop_size = 64
  with pytest.raises(InputError, match="crop_size=64 exceeds"):
    settings.check_crop_config(config)


def full_resolution_config(cases):
  """The cases at their own 4 mm in-plane resolution, the fourth case as a T1w-only volume."""
  config = brats_like(cases, pixel_mm=4.0, image_size=64,
                      extra_targets=(str(cases / "case_3" / "T1.nii.gz"),))
  config.data.num_test_subjects = 0
  config.model.attn_resolutions, config.model.mid_attention = (), False
  config.training.crop_size = 32
  return config


def test_extra_targets_join_training_only(cases, tmp_path):
  config = full_resolution_config(cases)
  data = load_dataset(config, str(tmp_path))
  assert data["extra"]["target"].shape == (4, 64, 64, 1)
  assert set(data["extra"]["subject"]) == {100_000}
  assert len(data["train"]["target"]) == 8 and "extra" not in data["train"]
  config.data.extra_targets = (str(cases / "nothing_*.nii.gz"),)
  with pytest.raises(InputError, match="data.extra_targets"):
    load_dataset(config, str(tmp_path))


def test_lmi_refines_a_low_resolution_translation(cases, trained_on_cases, tmp_path):
  lowres_config, lowres_workdir = trained_on_cases
  # The low-resolution model ships with a config.py that rebuilds its config.
  config_file = tmp_path / "lowres_config.py"
  config_file.write_text(textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {os.path.dirname(__file__)!r})
      from made_scans import brats_like

      def get_config():
        config = brats_like({str(cases)!r})
        config.sampling.num_steps, config.sampling.batch_size = 4, 4
        return config
      """))
  lowres = str(tmp_path / "lowres")
  pretrained.export(lowres_config, str(config_file), lowres_workdir, lowres)

  config, workdir = train_briefly(full_resolution_config(cases), str(tmp_path / "full"))
  config.sampling.lowres_model = lowres
  config.sampling.lowres_t0 = 0.5
  data = load_dataset(config, workdir)
  source = data["val"]["source"]
  ctx = translate.make_context(config, workdir, data["train"]["target"])
  assert ctx.lowres is not None and ctx.lowres.config.data.image_size == 32
  # Compiled samplers kept by name, as --mode=sample keeps them: a sampler's progress callback
  # keeps it out of the persistent cache, so every draw would compile again.
  ctx = methods.keeping_runners(ctx)
  key = jax.random.key(0)
  outputs = {}
  for refine in ("none", "guided", "diffusion"):
    config.sampling.lowres_refine = refine
    outputs[refine] = methods.translate_lmi(ctx, source, key)
  assert all(o.shape == source.shape and np.isfinite(o).all() for o in outputs.values())
  # The same low-resolution start under each refinement: guided is its filter by the source.
  reference = methods.lmi_reference(ctx, source)
  np.testing.assert_allclose(
      outputs["guided"],
      np.clip(multiscale.guided_filter(reference, outputs["none"], 4, 0.01), 0, 1), atol=1e-5)
  assert np.abs(outputs["diffusion"] - outputs["none"]).mean() > 1e-3
  # sampling.finish_radius: the result filtered with the source as guide, as its last step.
  config.sampling.lowres_refine, config.sampling.finish_radius = "none", 2
  np.testing.assert_allclose(
      methods.translate_lmi(ctx, source, key),
      np.clip(multiscale.guided_filter(source, outputs["none"], 2, 0.01), 0, 1), atol=1e-5)
  for key, bad in (("finish_radius", -1), ("finish_eps", 0.0), ("scan_segmenter", "fast")):
    good, config.sampling[key] = config.sampling[key], bad
    with pytest.raises(InputError, match=f"sampling.{key}={bad!r}"):
      settings.check_config(config)
    config.sampling[key] = good
  config.sampling.finish_radius = 0
  # Two draws of the start are averaged before it is enlarged.
  config.sampling.lowres_samples = 2
  start_key = jax.random.key(1)
  canvas = ctx.lowres.config.data.image_size
  small = multiscale.resize_slices(source, (canvas, canvas))
  draws = [methods.translate_lmi(ctx.lowres, small, jax.random.fold_in(start_key, i)) for i in (0, 1)]
  assert np.abs(draws[0] - draws[1]).mean() > 1e-3
  np.testing.assert_allclose(
      multiscale.lowres_start(ctx, source, start_key, methods.translate_lmi),
      multiscale.resize_slices((draws[0] + draws[1]) / 2, source.shape[1:3]), atol=1e-5)
  # sampling.lowres_sampler replaces the low-resolution model's own sampler for its draws.
  own = ctx.lowres.config.sampling
  assert (own.method, sampling.network_evaluations(own)) != ("dpm2m", 3)
  config.sampling.lowres_sampler = "dpm2m:3"
  settings.check_config(config)
  switched = multiscale.load_lowres(ctx).lowres
  assert switched.config.sampling.method == "dpm2m"
  assert sampling.network_evaluations(switched.config.sampling) == 3
  fast_draw = methods.translate_lmi(switched, small, jax.random.fold_in(start_key, 0))
  assert np.isfinite(fast_draw).all() and np.abs(fast_draw - draws[0]).mean() > 1e-3
  for bad in ("dpm2m", "em:10", "dpm2m:0", "fast:9"):
    config.sampling.lowres_sampler = bad
    with pytest.raises(InputError, match=f"sampling.lowres_sampler={bad!r}"):
      settings.check_config(config)


def test_the_shipped_1mm_model_translates_a_scan_at_its_own_resolution(cases, tmp_path):
  """configs/real_t1.py as a user runs it (--mode=sample --input=), with nothing but the
  shipped folders (checkpoints/real_t1 and the 64 px checkpoints/brats_t1 it starts from): a
  skull-stripped FLAIR of 1 mm voxels comes back on its own grid, zero outside its brain,
  at its resolution (the 64 px start alone could not carry its 1 mm edges)."""
  from configs import real_t1
  config = real_t1.get_config()
  config.data.root = str(tmp_path / "no_data_here")
  config.data.extra_targets = ()
  config.sampling.batch_size = 4
  # The shipped samplers, shortened: one 64 px draw of 6 NFE, then 9 NFE's schedule at 1 mm.
  config.sampling.lowres_samples, config.sampling.lowres_sampler = 1, "dpm2m:6"
  config.sampling.nfe = 9
  # Five 1 mm axial slices of a case's FLAIR, upsampled from its 4 mm voxels.
  flair = nib.load(str(cases / "case_0" / "FLAIR.nii.gz"))
  middle = flair.shape[2] // 2
  volume = ndimage.zoom(np.asarray(flair.dataobj)[:, :, middle - 1:middle + 1], (4, 4, 2.5), order=1)
  volume = np.where(volume > 1.0, volume, 0.0).astype(np.float32)
  path = str(tmp_path / "flair_1mm.nii.gz")
  nib.save(nib.Nifti1Image(volume, np.diag([-1.0, -1.0, 1.0, 1.0])), path)
  record = scans.sample_scans(config, str(tmp_path / "run"), [path])[0]
  assert record["model_step"] == 7350 and record["lowres_model"].endswith("brats_t1")
  translated = np.asarray(nib.load(record["outputs"]["translated.nii.gz"]).dataobj)
  assert translated.shape == volume.shape and np.isfinite(translated).all()
  assert translated[volume == 0].max() == 0 and translated[volume > 0].mean() > 0.2
  labels = np.asarray(nib.load(record["outputs"]["segmentation.nii.gz"]).dataobj)
  assert {1, 2, 3} <= set(np.unique(labels[volume > 0]))
