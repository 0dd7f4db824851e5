"""Translation methods and the sample / eval modes, end to end on the tiny config."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from made_scans import train_briefly

from configs import phantom_pd2t1_cpu, phantom_pd2t1_gpu, tiny
from lmi_jax import (ablation, checkpoints, lmi, methods, model_store, models, pretrained, sde as sdes,
                     segmentation, settings, translate)
from lmi_jax.data import load_dataset
from lmi_jax.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(ROOT, "configs", "tiny.py")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny model trained for a few steps, shared by the tests of this module."""
  return train_briefly(tiny.get_config(), str(tmp_path_factory.mktemp("run")))


def _check_kmeans(centroids, values: np.ndarray, k: int) -> None:
  """`centroids` are a K-means solution of the (M,) intensities `values`: k ascending centres,
  each the mean of the values nearest to it (Lloyd's fixed point; K-means stops at a
  tolerance, 0.002 from it here, and its local optima differ by more, so no second fit is
  compared)."""
  centroids = np.asarray(centroids)
  assert centroids.shape == (k,) and np.all(np.diff(centroids) > 0)
  nearest = np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1)
  means = [values[nearest == j].mean() for j in range(k)]
  np.testing.assert_allclose(centroids, means, atol=0.005)


def _nearest_labels(images: np.ndarray, centroids, foreground: np.ndarray) -> np.ndarray:
  """(N, H, W) labels 1..k of the nearest centroid inside `foreground`, 0 outside."""
  distance = np.abs(images[..., None] - np.asarray(centroids)[None, None, None, :])
  return np.where(foreground, np.argmin(distance, axis=-1) + 1, 0)


def _dice_mean(pred: np.ndarray, ref: np.ndarray, k: int) -> float:
  """Mean over the classes 1..k present in either (H, W) map of 2|P & R| / (|P| + |R|)."""
  scores = [2 * np.sum((pred == c) & (ref == c)) / (np.sum(pred == c) + np.sum(ref == c))
            for c in range(1, k + 1) if np.any(pred == c) or np.any(ref == c)]
  return float(np.mean(scores)) if scores else float("nan")


def test_eval_writes_a_row_per_method(trained, monkeypatch):
  """Every method's row of --mode=eval is recomputed here from that method's output and the
  true targets, apart from lmi_jax: the report's K-means centroids checked to be K-means
  solutions of the training targets' pixels, nearest-centroid labels inside the
  ground-truth brain, Dice by its formula (against the target's labels, the ground truth,
  and under the paper's protocol), PSNR by its formula, SSIM by scikit-image with the
  documented settings. The summaries are the means of these per-slice values, in the JSON
  and the CSV."""
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.eval.max_slices = 3
  outputs = {}
  real_run_methods = methods.run_methods

  def keep_outputs(*args, **kwargs):
    result = real_run_methods(*args, **kwargs)
    outputs.update(result[0])
    return result

  monkeypatch.setattr(methods, "run_methods", keep_outputs)
  report = translate.evaluate(config, workdir)
  assert tuple(report["methods"]) == config.eval.methods == ("lmi", "sdedit", "histmatch", "identity")
  assert tuple(outputs) == config.eval.methods and report["n_slices"] == 3
  out = os.path.join(workdir, "eval")
  with open(os.path.join(out, "report.json")) as f:
    saved = json.load(f)
  with open(os.path.join(out, "report.csv")) as f:
    rows = {r.split(",")[0]: r.split(",") for r in f.read().strip().splitlines()}
  with open(os.path.join(out, "report.md")) as f:
    header = f.readline()
  assert header.strip() == "| metric | " + " | ".join(config.eval.methods) + " |"
  assert matplotlib.image.imread(os.path.join(out, "comparison.png")).shape[1] == 400

  data = load_dataset(config, workdir)
  target, labels = data["test"]["target"][:3, ..., 0], data["test"]["labels"][:3]
  train = data["train"]["target"][..., 0]
  k, threshold = config.eval.kmeans_clusters, config.eval.background_threshold
  # The K-means are fitted on the training targets: tissue above the threshold, paper all.
  _check_kmeans(report["segmenter"]["centroids"], train[train > threshold], k)
  _check_kmeans(report["paper_segmenter"]["centroids"], train.ravel(), config.eval.paper_clusters)
  brain, whole = labels > 0, np.ones(target.shape, bool)
  ref = _nearest_labels(target, report["segmenter"]["centroids"], brain)
  ref_paper = _nearest_labels(target, report["paper_segmenter"]["centroids"], whole)
  for name, output in outputs.items():
    image = output[..., 0].astype(np.float64)
    seg = _nearest_labels(image, report["segmenter"]["centroids"], brain)
    seg_paper = _nearest_labels(image, report["paper_segmenter"]["centroids"], whole)
    want = {
        "dice": [_dice_mean(a, b, k) for a, b in zip(seg, ref)],
        "dice_gt": [_dice_mean(a, b, k) for a, b in zip(seg, labels)],
        "dice_paper": [_dice_mean(a, b, config.eval.paper_clusters) for a, b in zip(seg_paper, ref_paper)],
        "psnr": [10 * np.log10(1 / np.mean((o - t) ** 2)) for o, t in zip(image, target)],
        "ssim": [structural_similarity(o, t.astype(np.float64), data_range=1.0, gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False)
                 for o, t in zip(image, target)],
    }
    entry = saved["methods"][name]
    for metric, values in want.items():
      np.testing.assert_allclose(entry["per_slice"][metric], values, rtol=1e-6, atol=1e-9,
                                 err_msg=f"{name} {metric}")
      assert entry[metric]["mean"] == pytest.approx(np.mean(values), rel=1e-6)
    assert float(rows[name][rows["method"].index("psnr_mean")]) == pytest.approx(np.mean(want["psnr"]))
  # The identity row scores the test sources themselves.
  np.testing.assert_array_equal(outputs["identity"], data["test"]["source"][:3])


def test_sample_writes_arrays_and_grid(trained, monkeypatch):
  """--mode=sample writes, beside the split's sources and targets, lmi's translation of
  exactly those sources by the workdir's own model (step 4, not a shipped one): the array
  written is what the sampler returned for them, which neither the source nor noise is."""
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.eval.max_slices = 2
  calls = []
  real_translate_lmi = methods.translate_lmi

  def keep_call(ctx, source, key):
    out = real_translate_lmi(ctx, source, key)
    calls.append((ctx, np.array(source), np.array(key), out))
    return out

  monkeypatch.setitem(methods.METHODS, "lmi", keep_call)
  path = translate.sample(config, workdir)
  arrays = np.load(path)
  test = load_dataset(config, workdir)["test"]
  np.testing.assert_array_equal(arrays["source"], test["source"][:2])
  np.testing.assert_array_equal(arrays["target"], test["target"][:2])
  (ctx, source, key, translated), = calls
  assert ctx.step == 4 and ctx.model_folder == checkpoints.score_folder(workdir)
  np.testing.assert_array_equal(source, test["source"][:2])
  # eval's lmi column for these slices: the same noise stream, the same brain.
  np.testing.assert_array_equal(key, methods.method_key(config, "lmi"))
  np.testing.assert_array_equal(arrays["translation"],
                                methods.inside_source_brain(config, source, translated))
  assert arrays["translation"].shape == (2, 32, 32, 1)
  assert np.abs(arrays["translation"] - arrays["source"]).mean() > 0.01
  assert matplotlib.image.imread(path.replace(".npz", ".png")).ndim == 3


def test_guidance_mixes_conditional_and_unconditional(trained):
  config, workdir = trained
  data = load_dataset(config, workdir)
  ctx = translate.make_context(config, workdir, data["train"]["target"])
  source = jnp.asarray(data["test"]["source"][:2])
  x = source + 0.1 * jax.random.normal(jax.random.PRNGKey(0), source.shape)
  t = jnp.full((2,), 0.3)
  pieces = (ctx.model, ctx.variables, ctx.sde)
  cond = models.lmi_score(*pieces, ctx.lmi_cfg, source, feeding="sigma")(x, t)
  uncond = models.unconditional_score(*pieces, len(ctx.lmi_cfg.features),
                                      feeding="sigma")(x, t)
  mixed = models.lmi_score(*pieces, ctx.lmi_cfg, source, feeding="sigma",
                           guidance_scale=2.5)(x, t)
  np.testing.assert_allclose(np.asarray(mixed), np.asarray(uncond + 2.5 * (cond - uncond)),
                             rtol=1e-4, atol=1e-4)
  assert not np.allclose(np.asarray(cond), np.asarray(uncond))


def test_shipped_model_is_used_when_workdir_has_none(trained, tmp_path):
  config, workdir = trained
  shipped = str(tmp_path / "shipped")
  meta = pretrained.export(config, CONFIG_FILE, workdir, shipped)
  assert meta["step"] == 4 and os.path.isfile(os.path.join(shipped, "config.py"))
  config = config.copy_and_resolve_references()
  empty = str(tmp_path / "empty")
  with pytest.raises(InputError, match="no checkpoint"):
    checkpoints.restore_model(config, empty)
  config.sampling.pretrained = shipped
  variables, step = checkpoints.restore_model(config, empty)
  own, _ = checkpoints.restore_model(config, workdir)
  assert step == 4
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(own)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  wrong = config.copy_and_resolve_references()
  wrong.model.nf = 8
  with pytest.raises(InputError, match="does not fit"):
    checkpoints.load_shipped(wrong, shipped)


def test_float16_export_halves_the_file_and_loads_as_float32(trained, tmp_path):
  config, workdir = trained
  folders = {d: str(tmp_path / d) for d in pretrained.STORAGE_DTYPES}
  for dtype, folder in folders.items():
    assert pretrained.export(config, CONFIG_FILE, workdir, folder, dtype)["dtype"] == dtype
  size = {d: os.path.getsize(os.path.join(f, checkpoints.PARAMS_FILE)) for d, f in folders.items()}
  assert size["float16"] < 0.6 * size["float32"]
  full, _ = checkpoints.load_shipped(config, folders["float32"])
  half, _ = checkpoints.load_shipped(config, folders["float16"])
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(half)):
    assert b.dtype == np.float32
    np.testing.assert_array_equal(b, a.astype(np.float16).astype(np.float32))
  with pytest.raises(InputError, match="dtype='bfloat16'"):
    pretrained.export(config, CONFIG_FILE, workdir, str(tmp_path / "bad"), "bfloat16")
  assert sorted(os.listdir(tmp_path)) == sorted(folders)  # Nothing left of the refused one.


@pytest.fixture(scope="module")
def phantom_split(tmp_path_factory):
  """load_dataset of a shipped phantom config cut to 1 training and 1 test subject, loaded
  once per config module for the tests of this module."""
  loaded = {}

  def load(config_module):
    if config_module not in loaded:
      config = config_module.get_config()
      config.data.num_train_subjects, config.data.num_val_subjects = 1, 0
      config.data.num_test_subjects = 1
      loaded[config_module] = (config, load_dataset(config, str(tmp_path_factory.mktemp("phantom"))))
    config, data = loaded[config_module]
    return config.copy_and_resolve_references(), data

  return load


def _closeness(images: np.ndarray, split: dict, segmenter) -> dict[str, float]:
  """How close (N, H, W, 1) images are to the split's true T1w, inside the phantom's brain
  (ground-truth labels > 0): the mean over slices of the Pearson correlation with the true
  T1w, and of the Dice of their K-means segmentation against the ground-truth labels."""
  labels, target = split["labels"][:len(images)], split["target"][:len(images), ..., 0]
  brain = labels > 0
  corr = [np.corrcoef(o[b], t[b])[0, 1] for o, t, b in zip(images[..., 0], target, brain)]
  seg = _nearest_labels(images[..., 0], segmenter.centroids, brain)
  dice = [_dice_mean(a, b, segmenter.k) for a, b in zip(seg, labels)]
  return {"corr": float(np.mean(corr)), "dice": float(np.mean(dice))}


CLOSER_BY = {"dice": 0.08, "corr": 0.2}  # Margins of `_check_closer_than_source`.


def _check_closer_than_source(translated: np.ndarray, data: dict, config,
                              metrics=("dice",)) -> dict:
  """A translation of the test sources is closer to the true T1w than the source is, and
  than uniform noise in [0, 1] is (the noise is what a broken model gives; on these PD
  slices the source correlates negatively with T1w, so beating it alone proves little), on
  each of `metrics` by its margin in CLOSER_BY."""
  segmenter = segmentation.fit_segmenter(config, data["train"]["target"])
  split, n = data["test"], len(translated)
  noise = np.random.default_rng(0).random(translated.shape).astype(np.float32)
  scores = {name: _closeness(images, split, segmenter)
            for name, images in (("translation", translated), ("source", split["source"][:n]),
                                 ("noise", noise))}
  for metric in metrics:
    best_other = max(scores["source"][metric], scores["noise"][metric])
    assert scores["translation"][metric] > best_other + CLOSER_BY[metric], (metric, scores)
  return scores


def _cross_correlations(images: np.ndarray, split: dict) -> np.ndarray:
  """(N, N): the Pearson correlation of image i with the true T1w of slice j, over the
  pixels inside both slices' brains (ground-truth labels > 0)."""
  n = len(images)
  brain, target = split["labels"][:n] > 0, split["target"][:n, ..., 0]
  return np.array([[np.corrcoef(images[i, ..., 0][brain[i] & brain[j]],
                                target[j][brain[i] & brain[j]])[0, 1] for j in range(n)]
                   for i in range(n)])


def test_shipped_lmi_translation_is_closer_to_the_target_than_its_source(phantom_split, tmp_path):
  """lmi with the shipped phantom model (checkpoints/phantom_pd2t1) translates 3 PD test
  slices it never saw to T1w closer to the true T1w than the PD source is, and than noise
  is: correlation with the true T1w inside the brain (measured: lmi 0.68, PD -0.59, noise
  0.01) and Dice of the K-means tissue classes against the ground truth (lmi 0.41, PD 0.16,
  noise 0.26; without the config's regression on the source, 0.52 and 0.47).
  DPM-Solver++(2M) at 10 evaluations keeps it quick (docs/results.md: Dice 0.39 on the
  validation split against 0.44 for the shipped 35-evaluation sampler).

  Phantom brains look alike, so a T1w-looking image of any brain gets part of that: the
  model sampling without the LMI conditioning reaches correlation 0.01 to 0.29 and Dice 0.32
  to 0.38 over four noise keys, at times past both checks. What only a translation of its
  own source does: slice i's translation correlates with slice i's true T1w better than with
  the other slices' (by 0.32 to 0.38 here), and by 0.39 on average (the unconditional
  samples: 0.11, with a slice closer to another slice's T1w than to its own).

  The tiny model the other tests train for 4 steps cannot be this test's model: its lmi
  translation is noise (Dice 0.25 against the source's 0.40 on the BraTS-like cases)."""
  config, data = phantom_split(phantom_pd2t1_cpu)
  config.sampling.method, config.sampling.nfe, config.sampling.batch_size = "dpm2m", 10, 3
  ctx = translate.make_context(config, str(tmp_path), None)  # No checkpoint: the shipped model.
  assert ctx.model_folder.endswith(os.path.join("checkpoints", "phantom_pd2t1"))
  source = data["test"]["source"][:3]
  translated = methods.translate_lmi(ctx, source, methods.method_key(config, "lmi"))
  _check_closer_than_source(translated, data, config, metrics=("corr", "dice"))
  cross = _cross_correlations(translated, data["test"])
  own, others = np.diag(cross), cross[~np.eye(len(cross), dtype=bool)].reshape(len(cross), -1)
  assert np.all(own > others.max(axis=1) + 0.05), cross
  assert own.mean() > others.mean() + 0.2, cross


@pytest.mark.parametrize("config_module", [phantom_pd2t1_cpu, phantom_pd2t1_gpu])
def test_shipped_models_denoise_phantom_slices(config_module, phantom_split, tmp_path):
  """Each shipped model loads through the config that names it, and one Tweedie step of its
  LMI-conditioned score brings noisy T1w test slices much closer to the clean ones."""
  config, data = phantom_split(config_module)
  test = data["test"]
  models_shipped = [checkpoints.restore_model(config, str(tmp_path))[0]]  # No checkpoint: the shipped one.
  faint = checkpoints.load_faint(config, checkpoints.shipped_folder(config, str(tmp_path)))
  assert (faint is not None) == (config_module is phantom_pd2t1_cpu)  # The quick start's model has one.
  models_shipped += [] if faint is None else [faint[0]]
  sde = sdes.sde_from_config(config.sde)
  clean, source = jnp.asarray(test["target"][:2]), jnp.asarray(test["source"][:2])
  t = jnp.full((2,), 0.3)
  std = sde.mean_std(t)[1][0]  # VE: the clean slice is the mean.
  noisy = clean + std * jax.random.normal(jax.random.key(0), clean.shape)
  noisy_error = float(jnp.mean(jnp.square(noisy - clean)))
  for variables in models_shipped:
    score = models.lmi_score(models.create_model(config.model), variables, sde,
                             lmi.from_config(config.lmi), source,
                             feeding=models.feeding_of(config.model))(noisy, t)
    denoised = noisy + std**2 * score
    assert float(jnp.mean(jnp.square(denoised - clean))) < 0.3 * noisy_error


def _disk_stack(contrast: float, size: int, slices: int = 3) -> np.ndarray:
  """(slices, size, size, 1) brain disks at 0.5 on a zero background, with 2-pixel stripes
  of a second tissue at 0.5 + contrast and Gaussian noise of std 0.02."""
  yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
  disk = xx ** 2 + yy ** 2 < (0.4 * size) ** 2
  stripes = (np.arange(size)[None, :] // 2) % 2 == 1
  image = np.where(disk, 0.5 + contrast * stripes, 0.0)
  noise = 0.02 * np.random.default_rng(0).standard_normal((slices, size, size))
  return (image + noise)[..., None].astype(np.float32)


def test_faint_model_translates_sources_of_little_structure(trained, tmp_path):
  """A shipped folder's faint/ model is loaded beside the main one; lmi uses it for a stack
  whose structure score is below sampling.faint_below, and the main model otherwise."""
  config, workdir = trained
  shipped = str(tmp_path / "shipped")
  pretrained.export(config, CONFIG_FILE, workdir, shipped)
  own, _ = checkpoints.restore_ema_params(config, workdir)
  halved = jax.tree.map(lambda p: 0.5 * np.asarray(p), own["params"])
  pretrained.write_model(halved, CONFIG_FILE, {"step": 7}, os.path.join(shipped, "faint"))
  pretrained.export(config, CONFIG_FILE, workdir, shipped)  # Re-exporting keeps faint/.
  config = config.copy_and_resolve_references()
  config.sampling.pretrained = shipped
  ctx = translate.make_context(config, str(tmp_path / "empty"), None)
  assert ctx.faint.step == 7 and ctx.faint.folder == os.path.join(shipped, "faint")
  size = config.data.image_size
  flat, striped = _disk_stack(0.0, size), _disk_stack(0.3, size)
  threshold = config.sampling.faint_below
  assert methods.stack_structure_score(config, flat) < threshold
  assert methods.stack_structure_score(config, striped) > threshold
  assert methods.lmi_model(ctx, striped) is ctx
  chosen = methods.lmi_model(ctx, flat)
  assert chosen.step == 7 and chosen.model_folder == ctx.faint.folder and chosen.faint is None
  assert chosen.config.lmi.reference_map == config.lmi.reference_map  # faint_reference_map "".
  config.sampling.faint_reference_map = "flat_equalize"
  assert methods.lmi_model(ctx, flat).config.lmi.reference_map == "flat_equalize"
  assert config.lmi.reference_map != "flat_equalize"  # The copy changed, not the config.
  config.sampling.faint_reference_map = ""
  for a, b in zip(jax.tree.leaves(chosen.variables), jax.tree.leaves(halved)):
    np.testing.assert_array_equal(np.asarray(a), b)
  # The translation of the flat stack is the faint model's, bit for bit.
  key = jax.random.key(3)
  np.testing.assert_array_equal(methods.translate_lmi(ctx, flat, key),
                                methods.translate_lmi(chosen, flat, key))
  assert not np.array_equal(methods.translate_lmi(ctx, flat, key),
                            methods.translate_lmi(dataclasses.replace(ctx, faint=None), flat, key))
  # The eval report says which model lmi used (a threshold above any score forces faint/).
  evaluated = config.copy_and_resolve_references()
  evaluated.sampling.faint_below = 1e9
  evaluated.eval.methods, evaluated.eval.max_slices = ("lmi",), 2
  report = translate.evaluate(evaluated, str(tmp_path / "eval"))
  assert report["structure"]["faint_model"] == ctx.faint.folder
  with open(tmp_path / "eval" / "eval" / "report.md") as f:
    assert f"faint-contrast model {ctx.faint.folder}" in f.read()
  # faint_below = 0 turns it off; a workdir's own checkpoint has no faint model.
  config.sampling.faint_below = 0.0
  assert methods.lmi_model(ctx, flat) is ctx  # ctx holds this config.
  assert translate.make_context(config, workdir, None).faint is None
  config.sampling.faint_below = -1.0
  with pytest.raises(InputError, match="sampling.faint_below"):
    settings.check_config(config)
  config.sampling.faint_below, config.sampling.faint_reference_map = 4.0, "flat"
  with pytest.raises(InputError, match="sampling.faint_reference_map='flat'"):
    settings.check_config(config)


def test_histmatch_matches_target_histogram():
  rng = np.random.default_rng(0)
  reference = rng.beta(5, 2, size=5000).astype(np.float32)
  ctx = methods.Context(model=None, variables={}, sde=None, lmi_cfg=None, config=None,
                          target_reference=reference)
  source = rng.random((2, 16, 16, 1)).astype(np.float32)
  out = methods.translate_histmatch(ctx, source, None)
  assert out.shape == source.shape
  np.testing.assert_allclose(np.quantile(out, [0.25, 0.5, 0.75]),
                             np.quantile(reference, [0.25, 0.5, 0.75]), atol=0.03)


def test_unknown_method_is_named():
  with pytest.raises(InputError, match="eval.methods"):
    methods.check_methods(["lmi", "pix2pix"])


def test_ablation_baseline_row_is_the_eval_report(trained):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.eval.split = "val"
  config.eval.max_slices = 2
  config.eval.methods = ("lmi", "identity")
  grid = [ablation.parse_vary("sampling.num_steps=4,2", config)]
  assert grid == [("sampling.num_steps", [4, 2])]
  rows, table = ablation.ablate(config, workdir, grid)
  assert [(r["setting"], r["method"]) for r in rows] == [
      ("baseline", "lmi"), ("baseline", "identity"),
      ("sampling.num_steps=2", "lmi"), ("sampling.num_steps=2", "identity")]
  report = translate.evaluate(config, workdir)
  for row in rows[:2]:
    for metric in ("dice", "psnr", "ssim"):
      assert row["metrics"][metric] == pytest.approx(report["methods"][row["method"]][metric])
  # Fewer steps change the lmi translation and nothing else.
  assert rows[2]["metrics"]["psnr"] != pytest.approx(rows[0]["metrics"]["psnr"])
  assert rows[3]["metrics"] == rows[1]["metrics"]
  with open(os.path.join(workdir, "ablation", "ablation.md")) as f:
    assert f.read() == table
  assert "sampling.num_steps=2" in table and "2 slices of the val split" in table


@pytest.mark.parametrize("vary,split,message", [
    ("lmi.patch_size=3,5", "val", "add --train"),
    ("sampling.num_steps=ten", "val", "is not of the type of sampling.num_steps"),
    ("sampling.num_stepz=10", "val", "has no key 'num_stepz'"),
    ("sampling.num_steps", "val", "expected <section>.<key>="),
    ("sampling.num_steps=2", "test", "validation split"),
])
def test_ablation_refuses_what_it_cannot_compare(trained, vary, split, message):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.eval.split = split
  with pytest.raises(InputError, match=message):
    ablation.ablate(config, workdir, [ablation.parse_vary(vary, config)])


def test_trained_ablation_trains_a_model_per_setting(tmp_path):
  config = tiny.get_config()
  config.training.num_steps = 2
  config.training.sample_every = 0
  config.sampling.num_steps = 2
  config.eval.split = "val"
  config.eval.max_slices = 2
  config.eval.methods = ("lmi",)
  # Two steps from a zero output layer leave the one-level tiny network almost blind to its
  # LMI features; at full scale from the start, another source changes the translation.
  config.model.init_scale = 1.0
  workdir = str(tmp_path)
  assert ablation.parse_vary("lmi.features=cross,cross+self", config, trained=True) == (
      "lmi.features", [("cross",), ("cross", "self")])
  grid = [ablation.parse_vary("lmi.features=cross,cross+self", config, trained=True)]
  rows, table = ablation.ablate(config, workdir, grid, trained=True)
  names = ["baseline", "lmi.features=cross"]  # cross+self is the baseline's.
  assert [r["setting"] for r in rows] == names and [r["step"] for r in rows] == [2, 2]
  models = os.path.join(workdir, "models")
  assert sorted(os.listdir(models)) == sorted(names)
  for name in names:
    assert checkpoints.latest_step(checkpoints.score_folder(os.path.join(models, name))) == 2
  with open(os.path.join(models, "lmi.features=cross", "config.json")) as f:
    assert json.load(f)["lmi"]["features"] == ["cross"]
  # One feature channel fewer: the network's input convolution has one input channel less.
  first_convs = []
  for name in names:
    setting = config.copy_and_resolve_references()
    if name != "baseline":
      setting.lmi.features = ("cross",)
    params = checkpoints.restore_ema_params(setting, os.path.join(models, name))[0]["params"]
    first_convs.append(min((leaf.shape for leaf in jax.tree_util.tree_leaves(params)
                            if leaf.ndim == 4), key=lambda shape: shape[2])[2])
  assert first_convs == [3, 2]
  assert rows[0]["metrics"] != rows[1]["metrics"]
  assert "| lmi.features=cross | lmi |" in table and "class means" in table.splitlines()[0]
  # A rerun finds every model trained: it only scores, with the same noise.
  checkpoint_dir = os.path.join(models, "lmi.features=cross", "checkpoints")
  written = {f: os.path.getmtime(os.path.join(checkpoint_dir, f)) for f in os.listdir(checkpoint_dir)}
  again, _ = ablation.ablate(config, workdir, grid, trained=True, baseline=False)
  assert again[0]["metrics"] == rows[1]["metrics"] and again[0]["step"] == 2
  assert {f: os.path.getmtime(os.path.join(checkpoint_dir, f))
          for f in os.listdir(checkpoint_dir)} == written
  # Another source contrast reuses the models: training saw the target only.
  config.data.source = "T2"
  t2, _ = ablation.ablate(config, workdir, [], trained=True)
  assert t2[0]["step"] == 2 and t2[0]["metrics"] != rows[0]["metrics"]
  # Scoring only (num_steps=0) needs a trained model, not the shipped one as a stand-in.
  config.training.num_steps = 0
  with pytest.raises(InputError, match="holds no trained model"):
    ablation.ablate(config, workdir, [ablation.parse_vary("sde.type=vp", config, True)],
                    trained=True, baseline=False)
  # A model folder trained under other settings is not reused.
  config.lmi.num_bins = 8
  with pytest.raises(InputError, match="holds a model trained with other settings"):
    ablation.ablate(config, workdir, [], trained=True)


def test_real_scan_model_ships_with_its_segmenter(tmp_path):
  """`--mode=sample --input=` with configs/brats_flair2t1.py needs only the shipped folder:
  its parameters fit the config's network and its K-means is stored, so no data set (which a
  user's machine lacks) is read."""
  from configs import brats_flair2t1
  config = brats_flair2t1.get_config()
  config.data.root = str(tmp_path / "no_data_here")
  variables, step = checkpoints.restore_model(config, str(tmp_path))
  assert step > 0 and models.count_params(variables) == 448180
  segmenter = model_store.stored_segmenter(config, str(tmp_path))
  assert segmenter.k == 3 and 0 < segmenter.centroids[0] < segmenter.centroids[1] < segmenter.centroids[2] < 1
  assert not os.path.exists(tmp_path / model_store.SEGMENTER_FILE)


def test_kmeans_and_histmatch_see_only_training_targets(tmp_path):
  """Test targets made far brighter than the training ones: nothing fitted may move."""
  config = tiny.get_config()
  config.eval.background_threshold = 0.15
  rng = np.random.default_rng(0)
  train_target = rng.choice([0.0, 0.1, 0.3, 0.5, 0.7], size=(4, 32, 32, 1)).astype(np.float32)
  bright = np.full((2, 32, 32, 1), 0.95, np.float32)
  data = {"train": {"source": train_target, "target": train_target},
          "val": {"source": bright, "target": bright},
          "test": {"source": bright, "target": bright}}
  _, segmenters, ctx = translate.prepare_split(config, str(tmp_path), ("histmatch",), data=data)
  np.testing.assert_allclose(segmenters.tissue.centroids, (0.3, 0.5, 0.7), atol=1e-6)
  np.testing.assert_allclose(segmenters.paper.centroids, (0.0, 0.1, 0.3, 0.5, 0.7), atol=1e-6)
  assert ctx.target_reference.max() <= 0.7 and ctx.target_reference.size == train_target.size


def test_sdedit_runs_its_share_of_the_steps(trained):
  """SDEdit from t0 = 0.4 with 50 Euler-Maruyama steps walks 20 of them (the authors: step
  400 of 1000), one progress report each."""
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.sampling.num_steps, config.sampling.sdedit_t0 = 50, 0.4
  reports = []
  ctx = translate.make_context(config, workdir, None)
  ctx = dataclasses.replace(ctx, progress=lambda done: reports.append(int(done)))
  source = jnp.asarray(load_dataset(config, workdir)["test"]["source"][:1])
  jax.block_until_ready(methods.sdedit_batch(ctx, source, jax.random.key(0)))
  jax.effects_barrier()
  assert reports == list(range(1, 21))


def test_a_batch_split_over_two_devices_is_padded_and_cropped():
  """5 slices at batch size 4 on 2 devices: 2 batches of 4 (3 padded slots); every output
  slice is the method applied to its own input, in order."""
  code = """
import numpy as np
from configs import tiny
from lmi_jax import inference, methods
import jax
assert jax.local_device_count() == 2
config = tiny.get_config()
config.sampling.batch_size = 4
ctx = methods.Context(model=None, variables={}, sde=None, lmi_cfg=None, config=config,
                        target_reference=np.zeros(1, np.float32))
source = (np.arange(5, dtype=np.float32)[:, None, None, None] / 10) * np.ones((5, 8, 8, 1), np.float32)
out = inference.run_batched(lambda c, s, k: s * 2 + 0.05, ctx, source, jax.random.key(0), "x")
np.testing.assert_allclose(out, source * 2 + 0.05, atol=1e-6)
print("ok", out.shape)
"""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split() == ["ok", "(5,", "8,", "8,", "1)"]


@pytest.mark.parametrize("name", ["cyclegan", "supervised"])
def test_shipped_baselines_load_and_translate(name, phantom_split, tmp_path):
  """The baselines shipped beside the phantom model: found through sampling.pretrained when
  the workdir has none, loaded against the config's network, and run as eval methods on 3
  PD test slices, which they translate closer to the true T1w than the source and than
  noise by the Dice of the K-means tissue classes against the ground truth (measured:
  CycleGAN 0.39, supervised 0.79, PD 0.16, noise 0.26)."""
  config, data = phantom_split(phantom_pd2t1_cpu)
  path = model_store.baseline_path(config, str(tmp_path), name)
  assert path.endswith(os.path.join("checkpoints", "phantom_pd2t1", f"{name}.msgpack"))
  ctx = methods.Context(model=None, variables={}, sde=None, lmi_cfg=None, config=config,
                          target_reference=np.zeros(1, np.float32))
  ctx = model_store.load_baselines(ctx, config, str(tmp_path), (name, "identity"))
  assert set(ctx.baselines) == {name}
  source = data["test"]["source"][:3]
  out = methods.METHODS[name](ctx, source, jax.random.key(0))
  assert out.shape == source.shape and out.dtype == np.float32
  assert 0 <= out.min() and out.max() <= 1
  _check_closer_than_source(out, data, config)
  config.sampling.pretrained = ""
  with pytest.raises(InputError, match=f"--config.training.method={name}"):
    model_store.baseline_path(config, str(tmp_path), name)


def test_shared_noise_gives_equal_sources_equal_translations(trained):
  """sampling.shared_noise: a slice's lmi translation is the same wherever it sits (slices 0
  and 3 are equal sources in different batches, and slice 0 alone at batch size 1 gives it
  too); with noise of its own per slice, the equal sources get different translations."""
  config, workdir = trained
  source = np.asarray(load_dataset(config, workdir)["test"]["source"][:3])
  source = np.concatenate([source, source[:1], source[1:2]])
  run = lambda cfg, images: methods.translate_lmi(translate.make_context(cfg, workdir, None),
                                                  images, jax.random.key(7))
  shared = config.copy_and_resolve_references()
  shared.sampling.shared_noise, shared.sampling.batch_size = True, 2
  out = run(shared, source)
  np.testing.assert_allclose(out[3], out[0], atol=1e-5)
  np.testing.assert_allclose(out[4], out[1], atol=1e-5)
  alone = shared.copy_and_resolve_references()
  alone.sampling.batch_size = 1
  np.testing.assert_allclose(run(alone, source[:1])[0], out[0], atol=1e-5)
  own = run(config, source)
  assert np.abs(own[3] - own[0]).mean() > 0.01
