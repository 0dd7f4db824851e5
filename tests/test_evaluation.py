"""Tests of lmi_jax.evaluation, metrics, segmentation, figures: metrics against direct NumPy
formulas, K-means, both Dice protocols, reports."""

import csv
import json
import math
import os

import jax
import matplotlib.image
import numpy as np
import pytest
from scipy import ndimage

from configs import tiny
from lmi_jax import evaluation, figures, methods, metrics, segmentation, translate
from lmi_jax.errors import InputError

# Planted tissue intensities (CSF, GM, WM) of the synthetic T1w-like phantom.
TISSUE = (0.25, 0.5, 0.8)


def phantom(n: int, size: int = 32, noise: float = 0.02, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Concentric-disc slices: (n, size, size, 1) images in [0, 1] and (n, size, size) labels 0..3."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
  radius = np.hypot(yy, xx)
  labels = np.zeros((n, size, size), np.int32)
  for i in range(n):
    outer = size * rng.uniform(0.38, 0.46)
    # Ordered so a slice is CSF outside, then GM, then WM at the centre.
    for label, fraction in ((1, 1.0), (2, 0.75), (3, 0.45)):
      labels[i][radius < outer * fraction] = label
  intensities = np.array((0.0,) + TISSUE)[labels]
  images = np.clip(intensities + noise * rng.standard_normal(labels.shape) * (labels > 0), 0, 1)
  return images[..., None].astype(np.float32), labels


def smooth_pair(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Two correlated (H, W) images in [0, 1] with structure at several scales."""
  rng = np.random.default_rng(seed)
  base = rng.uniform(size=shape)
  base = (base + np.roll(base, 1, 0) + np.roll(base, 1, 1)) / 3
  other = np.clip(base + 0.1 * rng.standard_normal(shape), 0, 1)
  return base, other


@pytest.fixture(scope="module")
def segmenter() -> segmentation.KMeansSegmenter:
  train, _ = phantom(6, seed=1)
  return segmentation.fit_kmeans(train, k=3, seed=0, n_init=3)


def numpy_ssim_map(x: np.ndarray, ref: np.ndarray, data_range: float) -> np.ndarray:
  """Wang et al. 2004's SSIM written out in NumPy: separable 11-tap Gaussian (sigma 1.5)
  with mirrored borders, population covariances, K1 = 0.01, K2 = 0.03."""
  taps = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
  taps /= taps.sum()

  def blur(image):
    padded = np.pad(image, 5, mode="symmetric")
    rows = sum(w * padded[i:i + image.shape[0], :] for i, w in enumerate(taps))
    return sum(w * rows[:, j:j + image.shape[1]] for j, w in enumerate(taps))
  mu_x, mu_r = blur(x), blur(ref)
  var_x, var_r = blur(x * x) - mu_x ** 2, blur(ref * ref) - mu_r ** 2
  cov = blur(x * ref) - mu_x * mu_r
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  return ((2 * mu_x * mu_r + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_r ** 2 + c1) * (var_x + var_r + c2))


@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_psnr_matches_the_formula(data_range):
  x, ref = smooth_pair((40, 48), seed=0)
  expected = 10 * np.log10(data_range ** 2 / np.mean((x - ref) ** 2))
  assert metrics.psnr(x, ref, data_range) == pytest.approx(expected, abs=1e-6)
  mask = np.zeros(x.shape, bool)
  mask[5:30, 10:40] = True
  expected = 10 * np.log10(data_range ** 2 / np.mean((x[mask] - ref[mask]) ** 2))
  assert metrics.psnr(x[..., None], ref[..., None], data_range, mask) == pytest.approx(expected, abs=1e-6)
  assert metrics.psnr(ref, ref, data_range) == math.inf
  assert math.isnan(metrics.psnr(x, ref, data_range, np.zeros(x.shape, bool)))  # No pixels, no score.


@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_ssim_matches_a_numpy_ssim(data_range):
  x, ref = smooth_pair((40, 48), seed=1)
  full = numpy_ssim_map(x, ref, data_range)
  np.testing.assert_allclose(metrics.ssim_map(x, ref, data_range), full, atol=1e-6)
  assert metrics.ssim(x, ref, data_range) == pytest.approx(full[5:-5, 5:-5].mean(), abs=1e-6)
  mask = np.zeros(x.shape, bool)
  mask[:20, 8:] = True  # Reaches the border: the masked mean is over the whole map.
  assert metrics.ssim(x, ref, data_range, mask) == pytest.approx(full[mask].mean(), abs=1e-6)
  assert metrics.ssim(ref, ref, data_range) == pytest.approx(1.0)
  assert metrics.ssim(x, ref, data_range) < 0.9  # The pair differs: a score that can fail.


def test_reports_print_the_metric_settings(segmenter):
  target, _ = phantom(2, seed=4)
  report = evaluation.evaluate_methods({"same": target}, target, segmenter, data_range=1.0)
  text = evaluation.report_markdown(report)
  assert "data_range=1" in text and "sigma=1.5" in text and "use_sample_covariance=False" in text


def test_paper_protocol_dice_on_a_hand_made_case():
  """Five whole-slice clusters, background included, mean over clusters: two 4x4 slices whose
  labels under the fitted centroids are known, one pixel moved to another cluster."""
  levels = np.array([0.0, 0.2, 0.4, 0.6, 0.8])
  config = tiny_eval_config()
  train = np.repeat(levels, 20)[None, :, None, None].reshape(1, 10, 10, 1).astype(np.float32)
  paper = segmentation.fit_paper_segmenter(config, train)
  np.testing.assert_allclose(paper.centroids, levels, atol=1e-6)
  target = np.zeros((1, 16, 16, 1), np.float32)
  target[0, :, :, 0] = np.repeat(levels, 52)[:256].reshape(16, 16)
  output = target.copy()
  output[0, 0, 0, 0] = 0.4  # One background pixel (cluster 1) into cluster 3.
  report = evaluation.evaluate_methods({"m": output}, target, segmenter_of(levels),
                                       paper_segmenter=paper)
  counts = np.bincount(np.searchsorted(levels[:-1] + 0.1, target.ravel()), minlength=5)
  expected = np.ones(5)
  expected[0] = 2 * (counts[0] - 1) / (2 * counts[0] - 1)
  expected[2] = 2 * counts[2] / (2 * counts[2] + 1)
  assert report["methods"]["m"]["dice_paper"]["mean"] == pytest.approx(expected.mean())
  assert "Dice (paper protocol)" in evaluation.report_markdown(report)


def tiny_eval_config():
  from configs import tiny
  return tiny.get_config()


def segmenter_of(levels: np.ndarray) -> segmentation.KMeansSegmenter:
  return segmentation.KMeansSegmenter(tuple(float(v) for v in levels[2:]), 0.05)


def test_ssim_rejects_images_smaller_than_the_window():
  with pytest.raises(InputError, match="window"):
    metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)), 1.0)


def test_dice_equals_set_formula():
  pred = np.array([[0, 1, 1, 3], [2, 2, 3, 0]])
  ref = np.array([[0, 1, 2, 0], [2, 2, 0, 0]])

  def cells(labels, c):
    return {tuple(p) for p in np.argwhere(labels == c)}

  per_class, mean = metrics.dice(pred, ref, classes=(1, 2, 3, 4))
  for c in (1, 2, 3):
    p, r = cells(pred, c), cells(ref, c)
    assert per_class[c] == pytest.approx(2 * len(p & r) / (len(p) + len(r)))
  assert per_class[1] == pytest.approx(2 / 3) and per_class[2] == pytest.approx(0.8)
  assert per_class[3] == 0.0
  assert math.isnan(per_class[4])  # Absent from both: undefined, left out of the mean.
  assert mean == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)


def test_kmeans_is_deterministic_and_recovers_planted_clusters():
  train, labels = phantom(4, seed=2)
  a = segmentation.fit_kmeans(train, k=3, seed=7, max_pixels=1500, n_init=3)
  b = segmentation.fit_kmeans(train, k=3, seed=7, max_pixels=1500, n_init=3)
  assert a == b
  np.testing.assert_allclose(a.centroids, TISSUE, atol=0.01)
  assert list(a.centroids) == sorted(a.centroids)
  np.testing.assert_array_equal(segmentation.segment(a, train), labels)


def test_cluster_order_follows_intensity_not_fit_order():
  # Dark tissue planted last in the array still gets label 1.
  values = np.concatenate([np.full(50, 0.9), np.full(50, 0.6), np.full(50, 0.3)])
  images = values.reshape(1, 15, 10, 1)  # Rows 0-4 bright, 5-9 mid, 10-14 dark.
  seg = segmentation.fit_kmeans(images, k=3, seed=0, n_init=2)
  np.testing.assert_allclose(seg.centroids, (0.3, 0.6, 0.9))
  labels = segmentation.segment(seg, images)[0]
  np.testing.assert_array_equal(labels[:, 0], [3] * 5 + [2] * 5 + [1] * 5)


def test_background_is_label_zero_and_not_clustered():
  train, _ = phantom(3, seed=3)
  assert (train == 0).mean() > 0.3  # Much background: it would take a cluster if clustered.
  seg = segmentation.fit_kmeans(train, k=3, seed=0, n_init=2)
  assert min(seg.centroids) > seg.background_threshold
  fixed = segmentation.KMeansSegmenter(centroids=(0.2, 0.5, 0.8), background_threshold=0.05)
  image = np.array([0.0, 0.04, 0.1, 0.4, 0.7, 0.99]).reshape(1, 1, 6, 1)
  labels = segmentation.segment(fixed, image)
  assert labels.dtype == np.int32 and labels.shape == (1, 1, 6)
  np.testing.assert_array_equal(labels[0, 0], [0, 0, 1, 2, 3, 3])
  foreground = np.array([[[True, True, False, True, True, True]]])
  np.testing.assert_array_equal(segmentation.segment(fixed, image, foreground)[0, 0], [1, 1, 0, 2, 3, 3])


def test_fit_kmeans_bad_input_names_the_key():
  train, _ = phantom(1)
  with pytest.raises(InputError, match="eval.kmeans_clusters"):
    segmentation.fit_kmeans(train, k=0, seed=0)
  with pytest.raises(InputError, match="eval.background_threshold"):
    segmentation.fit_kmeans(train, k=3, seed=0, background_threshold=1.0)
  with pytest.raises(InputError, match="train_target_slices"):
    segmentation.fit_kmeans(train[..., 0], k=3, seed=0)


@pytest.fixture(scope="module")
def report_inputs():
  target, labels = phantom(4, seed=4)
  source = np.where(labels > 0, 1.0 - target[..., 0], 0.0)[..., None]  # Inverted contrast, as PDw-like.
  rng = np.random.default_rng(5)
  outputs = {
      "identity": target,
      "noisy": np.clip(target + 0.05 * rng.standard_normal(target.shape), 0, 1),
      "source": source,
  }
  return target, source, labels, outputs


def test_evaluate_methods_schema_and_values(segmenter, report_inputs):
  target, _, labels, outputs = report_inputs
  report = evaluation.evaluate_methods(outputs, target, segmenter, labels=labels)
  assert report["n_slices"] == 4 and report["classes"] == [1, 2, 3]
  assert set(report["methods"]) == set(outputs)
  for entry in report["methods"].values():
    for metric in ("dice", "dice_gt", "psnr", "ssim"):
      assert set(entry[metric]) == {"mean", "std"}
    assert set(entry["dice_per_class"]) == {"1", "2", "3"}
    assert len(entry["per_slice"]["ssim"]) == 4
  identity, noisy, source = (report["methods"][n] for n in ("identity", "noisy", "source"))
  assert identity["dice"] == {"mean": 1.0, "std": 0.0}
  assert identity["dice_gt"]["mean"] == 1.0  # The phantom's planted classes are recovered.
  assert identity["ssim"]["mean"] == pytest.approx(1.0) and identity["psnr"]["mean"] == math.inf
  assert noisy["dice"]["mean"] > source["dice"]["mean"]
  assert noisy["psnr"]["mean"] > source["psnr"]["mean"] and noisy["ssim"]["mean"] > source["ssim"]["mean"]
  # Class means against a per-pixel loop; the inverted source reverses the tissue order.
  for images, means in [(target, report["target_class_means"]),
                        (outputs["source"], source["class_means"])]:
    for c in (1, 2, 3):
      pixels = [images[n, y, x, 0] for n, y, x in zip(*np.nonzero(labels == c))]
      assert means[str(c)] == pytest.approx(np.mean(pixels), rel=1e-6)
  assert identity["class_means"] == report["target_class_means"]
  source_means = [source["class_means"][c] for c in ("1", "2", "3")]
  assert source_means == sorted(source_means, reverse=True)
  masked = evaluation.evaluate_methods(outputs, target, segmenter, mask=labels > 0)
  assert masked["masked_metrics"] and "dice_gt" not in masked["methods"]["noisy"]
  assert "class_means" not in masked["methods"]["noisy"] and "target_class_means" not in masked
  assert masked["methods"]["noisy"]["psnr"]["mean"] == pytest.approx(np.mean(
      [metrics.psnr(o, t, 1.0, m) for o, t, m in zip(outputs["noisy"], target, labels > 0)]))


def test_evaluate_methods_bad_input(segmenter, report_inputs):
  target, _, labels, _ = report_inputs
  with pytest.raises(InputError, match="outputs\\['short'\\]"):
    evaluation.evaluate_methods({"short": target[:2]}, target, segmenter)
  with pytest.raises(InputError, match="eval.kmeans_clusters"):
    evaluation.evaluate_methods({"a": target}, target, segmenter, labels=np.minimum(labels, 2))


def test_write_report_files(segmenter, report_inputs, tmp_path):
  target, _, labels, outputs = report_inputs
  report = evaluation.evaluate_methods(outputs, target, segmenter, labels=labels)
  out_dir = tmp_path / "eval"
  paths = evaluation.write_report(report, str(out_dir))
  assert sorted(os.listdir(out_dir)) == ["report.csv", "report.json", "report.md"]  # No temp files left.
  loaded = json.loads((out_dir / "report.json").read_text())
  assert loaded["n_slices"] == 4
  assert loaded["methods"]["identity"]["psnr"]["mean"] is None  # inf is not JSON.
  assert loaded["methods"]["noisy"]["dice"]["mean"] == pytest.approx(report["methods"]["noisy"]["dice"]["mean"])
  with open(paths["csv"]) as f:
    rows = list(csv.DictReader(f))
  assert [r["method"] for r in rows] == list(outputs)
  assert float(rows[0]["psnr_mean"]) == math.inf
  assert float(rows[1]["ssim_mean"]) == pytest.approx(report["methods"]["noisy"]["ssim"]["mean"])
  table = (out_dir / "report.md").read_text().splitlines()
  assert table[0] == "| metric | identity | noisy | source |"
  assert [line.split("|")[1].strip() for line in table[2:6]] == ["Dice", "Dice (ground truth)", "PSNR", "SSIM"]
  assert "±" in table[5] and "| PSNR | inf |" in table[4]
  means = report["target_class_means"]
  assert table[-3].startswith("Mean intensity per ground-truth class 1/2/3: target "
                              f"{means['1']:.2f}/{means['2']:.2f}/{means['3']:.2f}; identity ")
  assert table[-1].startswith("Metric settings: PSNR: skimage.metrics.peak_signal_noise_ratio, "
                              "data_range=1; SSIM:")


def test_write_report_rejects_a_file_as_folder(tmp_path):
  (tmp_path / "taken").write_text("")
  with pytest.raises(InputError, match="taken"):
    evaluation.write_report({"methods": {}, "n_slices": 0}, str(tmp_path / "taken"))


def test_plot_comparison_writes_a_png(segmenter, report_inputs, tmp_path):
  target, source, _, outputs = report_inputs
  path = tmp_path / "figs" / "comparison.png"
  figures.plot_comparison(target, source, outputs, segmenter, str(path), index=1)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  pixels = matplotlib.image.imread(str(path))
  # Five rows (target, source, three methods, one of them named "source"), two columns.
  assert pixels.ndim == 3 and pixels.shape[0] / pixels.shape[1] == pytest.approx(5 / 2)
  assert os.listdir(path.parent) == ["comparison.png"]
  with pytest.raises(InputError, match="index"):
    figures.plot_comparison(target, source, outputs, segmenter, str(path), index=9)


def test_without_labels_or_mask_the_target_sets_the_foreground(segmenter):
  """Real scans have no labels: tissue is where the true target is above the background
  threshold, for every method. Junk in the target's background leaves Dice at 1; a tissue
  change inside lowers it."""
  target, labels = phantom(2, seed=7)
  junk = target.copy()
  junk[labels == 0] = 0.8  # Bright where the target is background.
  changed = target.copy()
  changed[labels == 3] = 0.25  # White matter painted as CSF.
  report = evaluation.evaluate_methods({"junk": junk, "changed": changed}, target, segmenter)
  assert report["foreground"] == "target" and "dice_gt" not in report["methods"]["junk"]
  assert report["methods"]["junk"]["dice"]["mean"] == pytest.approx(1.0)
  assert report["methods"]["junk"]["psnr"]["mean"] < 20
  assert report["methods"]["changed"]["dice"]["mean"] < 0.8


# Source intensities of the darkest, middle and brightest tissue of the synthetic source.
SOURCE_LEVELS = (0.2, 0.45, 0.7)


def source_like(labels: np.ndarray, order: tuple[int, ...], gain: float = 1.0,
                seed: int = 0) -> np.ndarray:
  """(N, H, W) labels 0..3 -> (N, H, W, 1) source whose j-th darkest tissue is class order[j],
  at SOURCE_LEVELS times `gain`, with noise of std 0.02 times `gain`; background 0."""
  level = np.zeros(4)
  for rank, tissue in enumerate(order):
    level[tissue] = gain * SOURCE_LEVELS[rank]
  noise = 0.02 * gain * np.random.default_rng(seed).standard_normal(labels.shape)
  return np.clip(np.where(labels > 0, level[labels] + noise, 0.0), 0, 1)[..., None].astype(np.float32)


def source_kmeans_context(order: tuple[int, ...], segmenter: segmentation.KMeansSegmenter,
                          volumes: np.ndarray | None) -> methods.Context:
  config = tiny.get_config()
  config.data.source_order = order
  config.eval.kmeans_n_init = 3
  return methods.Context(model=None, variables={}, sde=None, lmi_cfg=None, config=config,
                           target_reference=np.zeros(1, np.float32), segmenter=segmenter,
                           volumes=volumes)


def test_source_kmeans_names_each_volumes_clusters_by_the_source_order(segmenter):
  """A FLAIR-like source (CSF < WM < GM) of two volumes, the second at 0.5 gain so that its
  brightest tissue is darker than the first's middle one: with data.source_order (1, 3, 2)
  and clustering per volume the true labels come back; pooled over both they do not."""
  target, labels = phantom(6, seed=3)
  flair = (1, 3, 2)
  source = np.concatenate([source_like(labels[:3], flair, seed=1),
                           source_like(labels[3:], flair, gain=0.5, seed=2)])
  volumes = np.array([7, 7, 7, 9, 9, 9])
  out = methods.METHODS["source_kmeans"](source_kmeans_context(flair, segmenter, volumes),
                                           source, None)
  assert out.shape == source.shape and out.dtype == np.float32
  # Drawn at the target K-means' centroids: the same K-means reads the named classes back.
  assert set(np.unique(out)) == {0.0, *np.float32(segmenter.centroids)}
  seg = segmentation.segment(segmenter, out, labels > 0)
  np.testing.assert_array_equal(seg, labels)
  report = evaluation.evaluate_methods({"source_kmeans": out}, target, segmenter, labels=labels)
  assert report["methods"]["source_kmeans"]["dice"]["mean"] == pytest.approx(1.0)
  pooled = methods.METHODS["source_kmeans"](source_kmeans_context(flair, segmenter, None),
                                              source, None)
  pooled_report = evaluation.evaluate_methods({"pooled": pooled}, target, segmenter, labels=labels)
  assert pooled_report["methods"]["pooled"]["dice"]["mean"] < 0.8


def test_a_wrong_source_order_scores_low_and_the_best_naming_recovers_it(segmenter):
  target, labels = phantom(4, seed=5)
  source = source_like(labels, (1, 3, 2))
  wrong = source_kmeans_context((3, 2, 1), segmenter, None)  # The T2w order for a FLAIR.
  outputs = {"source_kmeans": methods.METHODS["source_kmeans"](wrong, source, None),
             "source_kmeans_best": methods.METHODS["source_kmeans_best"](wrong, source, None)}
  report = evaluation.evaluate_methods(outputs, target, segmenter, labels=labels,
                                       best_named=methods.BEST_NAMING)
  named, best = report["methods"]["source_kmeans"], report["methods"]["source_kmeans_best"]
  assert named["dice"]["mean"] < 0.5 and "naming" not in named
  # source_kmeans_best enters scoring named by rank, so its renaming is the true source order.
  assert best["naming"] == {"all": [1, 3, 2]}
  assert best["dice"]["mean"] == pytest.approx(1.0) and best["dice_gt"]["mean"] == pytest.approx(1.0)
  # The image follows the renaming: each class sits at its T1w centroid, close to the target.
  assert best["psnr"]["mean"] > named["psnr"]["mean"] + 5
  assert "source_kmeans_best: its classes renamed (all: 1, 3, 2)" in evaluation.report_markdown(report)


def test_the_best_naming_is_chosen_volume_by_volume(segmenter):
  """Two volumes whose middle and bright tissues swap (grey/white contrast differs between
  real FLAIRs): each gets its own renaming."""
  target, labels = phantom(4, seed=6)
  source = np.concatenate([source_like(labels[:2], (1, 3, 2)), source_like(labels[2:], (1, 2, 3))])
  ctx = source_kmeans_context((1, 3, 2), segmenter, np.array([0, 0, 1, 1]))
  out = methods.METHODS["source_kmeans_best"](ctx, source, None)
  report = evaluation.evaluate_methods({"best": out}, target, segmenter, best_named=("best",),
                                       volumes=np.array([5, 5, 2, 2]))
  assert report["methods"]["best"]["naming"] == {"2": [1, 2, 3], "5": [1, 3, 2]}
  assert report["methods"]["best"]["dice"]["mean"] == pytest.approx(1.0)
  assert "renamed (volume 2: 1, 2, 3; volume 5: 1, 3, 2)" in evaluation.report_markdown(report)
  with pytest.raises(InputError, match="volumes"):
    evaluation.evaluate_methods({"best": out}, target, segmenter, best_named=("best",),
                                volumes=np.array([5, 5, 2]))


def test_joint_kmeans_takes_boundaries_from_the_source_and_names_from_the_translation():
  """A blurred translation whose grey and white matter overlap (noise 0.08 around 0.5 and 0.7)
  beside a sharp FLAIR-like source (CSF < WM < GM): clustered together, the true labels come
  back, named by the translation's T1w order whatever the source's order; the translation's
  own K-means misses many pixels."""
  _, labels = phantom(4, size=48, seed=7)
  rng = np.random.default_rng(8)
  blurred = np.array((0.0, 0.25, 0.5, 0.7))[labels] + 0.08 * rng.standard_normal(labels.shape)
  translation = np.clip(np.where(labels > 0, blurred, 0.0), 0, 1)[..., None]
  brain = labels > 0
  joint = segmentation.segment_with_source(translation, source_like(labels, (1, 3, 2)), brain,
                                           3, seed=0, n_init=3)
  assert np.mean(joint[brain] == labels[brain]) > 0.99
  np.testing.assert_array_equal(joint[~brain], 0)
  alone = segmentation.segment_by_order(translation, brain, (1, 2, 3), seed=0, n_init=3)
  assert np.mean(alone[brain] == labels[brain]) < 0.93
  with pytest.raises(InputError, match="source: shape"):
    segmentation.segment_with_source(translation, translation[:2], brain, 3, seed=0)
  two_pairs = np.where(labels > 1, 0.6, 0.3)[..., None]  # Two tissues, the same in both.
  with pytest.raises(InputError, match="fewer than 3 distinct intensity pairs"):
    segmentation.segment_with_source(two_pairs, two_pairs, brain, 3, seed=0)


def test_best_naming_tries_every_renaming():
  rng = np.random.default_rng(0)
  ref = rng.integers(0, 4, size=(3, 8, 8))
  for naming in [(1, 2, 3), (2, 3, 1), (3, 1, 2)]:
    pred = np.asarray((0, *np.argsort(naming) + 1))[ref]  # Renamed by `naming` it is `ref`.
    assert evaluation.best_naming(pred, ref, (1, 2, 3)) == naming
    np.testing.assert_array_equal(evaluation.rename(pred, naming), ref)


@pytest.mark.parametrize("order", [(1, 2, 2), (1, 2), (0, 1, 2), (1, 2, 3, 4), ("1", "2", "3"),
                                   (1.0, 2.0, 3.0), (True, 2, 3), "132", None])
def test_a_bad_source_order_names_the_key(order):
  with pytest.raises(InputError, match="data.source_order"):
    segmentation.check_source_order(order, 3)


def test_source_kmeans_checks_the_configured_order(segmenter):
  target, labels = phantom(1)
  ctx = source_kmeans_context((1, 3, 3), segmenter, None)
  with pytest.raises(InputError, match=r"data.source_order = \(1, 3, 3\)"):
    methods.METHODS["source_kmeans"](ctx, source_like(labels, (1, 2, 3)), None)


def test_eval_scores_source_kmeans_per_subject(tmp_path):
  """Through --mode=eval's steps: prepare_split hands source_kmeans the split's subject ids and
  the target K-means; the report gets both rows, the best one with its naming."""
  config = tiny.get_config()
  config.data.source_order = (1, 3, 2)
  config.eval.kmeans_n_init = 3
  train, _ = phantom(4, seed=1)
  target, labels = phantom(4, seed=2)
  source = np.concatenate([source_like(labels[:2], (1, 3, 2)),
                           source_like(labels[2:], (1, 3, 2), gain=0.5)])
  split = {"source": source, "target": target, "subject": np.array([3, 3, 8, 8], np.int32)}
  data = {"train": {"source": train, "target": train}, "val": split, "test": split}
  names = methods.check_methods(("source_kmeans", "source_kmeans_best", "identity"))
  split, segmenters, ctx = translate.prepare_split(config, str(tmp_path), names, data=data)
  np.testing.assert_array_equal(ctx.volumes, [3, 3, 8, 8])
  outputs, _ = methods.run_methods(ctx, names, split["source"])
  report = translate.score_split(config, outputs, split, segmenters)
  entries = report["methods"]
  assert entries["source_kmeans"]["dice"]["mean"] == pytest.approx(1.0)
  assert entries["source_kmeans_best"]["dice"]["mean"] == pytest.approx(1.0)
  assert entries["source_kmeans_best"]["naming"] == {"3": [1, 3, 2], "8": [1, 3, 2]}
  assert entries["identity"]["dice"]["mean"] < 0.9
  paths = evaluation.write_report(report, str(tmp_path))
  with open(paths["csv"]) as f:
    assert [row["method"] for row in csv.DictReader(f)] == list(names)


def test_edge_correlation_matches_scipy_sobel_and_ignores_contrast():
  rng = np.random.default_rng(3)
  ref = ndimage.gaussian_filter(rng.random((40, 48)), 2.0)
  noisy = ref + 0.02 * rng.standard_normal(ref.shape)
  mask = np.zeros(ref.shape, bool)
  mask[5:35, 6:40] = True
  # scipy's Sobel (unnormalised kernels) has magnitudes proportional to skimage's in the
  # interior; the correlation does not see the scale.
  magnitude = lambda x: np.hypot(ndimage.sobel(x, 0), ndimage.sobel(x, 1))
  expected = np.corrcoef(magnitude(noisy)[mask], magnitude(ref)[mask])[0, 1]
  assert metrics.edge_correlation(noisy, ref, mask) == pytest.approx(expected, abs=1e-9)
  # A translation with the reference's edges at inverted contrast scores 1, noise about 0.
  assert metrics.edge_correlation(0.9 - 0.5 * ref, ref) == pytest.approx(1.0, abs=1e-9)
  assert abs(metrics.edge_correlation(rng.random(ref.shape), ref)) < 0.15
  assert math.isnan(metrics.edge_correlation(np.ones_like(ref), ref))


def test_through_plane_ratio_on_a_ramp_with_alternating_offsets():
  # Truth rises by s per slice; the translation adds +d / -d on alternate slices, so its
  # neighbours differ by s + 2d and s - 2d, as often each (13 slices, 12 pairs): the ratio
  # is 1 + 4 d^2 / s^2.
  s, d = 0.05, 0.02
  z = np.arange(13)
  truth = np.broadcast_to(s * z, (6, 7, 13)).copy()
  volume = truth + d * (-1.0) ** z
  mask = np.ones(truth.shape, bool)
  mask[0] = False
  assert metrics.through_plane_ratio(truth, truth, mask) == pytest.approx(1.0)
  assert metrics.through_plane_ratio(volume, truth, mask) == pytest.approx(1 + 4 * d**2 / s**2)


def test_reports_carry_the_edge_correlation(segmenter, report_inputs):
  target, _, labels, outputs = report_inputs
  report = evaluation.evaluate_methods(outputs, target, segmenter, labels=labels)
  for name, output in outputs.items():
    per_slice = [metrics.edge_correlation(o, t) for o, t in zip(output, target)]
    assert report["methods"][name]["edge_corr"]["mean"] == pytest.approx(np.nanmean(per_slice))
  assert report["methods"]["identity"]["edge_corr"]["mean"] == pytest.approx(1.0)
  for name in ("noisy", "source"):  # The edges kept, blurred by noise or moved at the brain's rim.
    assert 0.5 < report["methods"][name]["edge_corr"]["mean"] < 0.99
  assert "Edge correlation" in evaluation.report_markdown(report)


def test_method_noise_does_not_depend_on_the_order_of_eval_methods(monkeypatch):
  """Each method's key comes from its name (methods.method_key), not its place in
  eval.methods: lmi and sdedit, given key-dependent stand-ins, return the same outputs in
  either order, different from each other, and lmi's is drawn from the key --mode=sample uses."""
  draw = lambda ctx, source, key: np.asarray(jax.random.uniform(key, source.shape))
  monkeypatch.setitem(methods.METHODS, "lmi", draw)
  monkeypatch.setitem(methods.METHODS, "sdedit", draw)
  config = tiny.get_config()
  config.data.mask = "none"
  ctx = methods.Context(None, None, None, None, config, None)
  source = np.full((2, 8, 8, 1), 0.5, np.float32)
  forward, _ = methods.run_methods(ctx, ("lmi", "sdedit", "identity"), source)
  backward, _ = methods.run_methods(ctx, ("identity", "sdedit", "lmi"), source)
  for name in ("lmi", "sdedit", "identity"):
    np.testing.assert_array_equal(forward[name], backward[name])
  assert not np.allclose(forward["lmi"], forward["sdedit"])
  np.testing.assert_array_equal(forward["lmi"], draw(None, source, methods.method_key(config, "lmi")))


def test_every_method_has_its_own_noise_stream():
  """STREAMS names exactly the methods of METHODS, each with a stream of its own: a method
  added to one dict only would fail at its first key, two sharing a stream would draw the
  same noise."""
  assert set(methods.STREAMS) == set(methods.METHODS)
  assert len(set(methods.STREAMS.values())) == len(methods.STREAMS)


def test_best_thresholds_matches_a_brute_force_search_with_metrics_dice():
  """Every threshold pair of the grid scored by `metrics.dice` on `threshold_labels`: the
  chosen pair reaches the best mean Dice, and a case built with known boundaries returns them."""
  rng = np.random.default_rng(3)
  ref = rng.integers(1, 4, 2000)
  values = np.clip(0.25 * ref + rng.normal(0.0, 0.12, ref.size), 0.0, 1.0)
  values[:5] = (0.0, 1.0, 0.5, 0.55, 0.45)  # grid points themselves, and both ends
  step = 0.05
  grid = np.round(np.linspace(0.0, 1.0, 21), 10)
  brute = max(metrics.dice(evaluation.threshold_labels(values, (a, b)), ref, (1, 2, 3))[1]
              for a in grid for b in grid if b >= a)
  chosen = evaluation.best_thresholds(values, ref, step)
  assert chosen[0] <= chosen[1] and chosen[0] in grid and chosen[1] in grid
  assert metrics.dice(evaluation.threshold_labels(values, chosen), ref, (1, 2, 3))[1] == pytest.approx(brute)
  ref[5:600], values[5:600] = 0, 0.6  # unscored pixels still count as predicted, as in metrics.dice
  brute = max(metrics.dice(evaluation.threshold_labels(values, (a, b)), ref, (1, 2, 3))[1]
              for a in grid for b in grid if b >= a)
  chosen = evaluation.best_thresholds(values, ref, step)
  assert metrics.dice(evaluation.threshold_labels(values, chosen), ref, (1, 2, 3))[1] == pytest.approx(brute)
  separated = np.repeat([0.2, 0.5, 0.9], 50)
  low, high = evaluation.best_thresholds(separated, np.repeat([1, 2, 3], 50), step)
  assert 0.2 < low <= 0.5 < high <= 0.9
  with pytest.raises(InputError, match="2 values but 3 labels"):
    evaluation.best_thresholds(np.zeros(2), np.ones(3, int))
