"""Faint-contrast sweep: lmi, sdedit, histmatch and identity against the source's tissue CNR.

  python bench/contrast_sweep.py --split=val --config.lmi.reference_map=none --out=runs/sweep/before
  python bench/contrast_sweep.py --split=val --methods=lmi \
      --baseline=runs/sweep/before/results.json --out=runs/sweep/after
  python bench/contrast_sweep.py --split=val --features_only --out=runs/sweep/features

Variants of the source of a phantom split (config data.source, PDw by default), simulated
again from each subject's seed with changed pure-tissue signals, so partial volume, bias
field, gain and the noise draw stay those of the subject:
  c=<c>        tissue contrast scaled by c: signal_k -> m + c (signal_k - m), m the mean
               signal of the subject's brain; the Rician noise std is kept.
  noise=<k>    contrast as is, Rician noise std multiplied by k.
  order=<a,b,c> the CSF, GM and WM signals replaced by those of tissues a, b, c (e.g.
               order=gm,csf,wm swaps CSF and GM: grey matter brightest in PDw).
Each variant then goes through the data pipeline (`slices.normalize`: 0 at the minimum, 1 at
the 99.5th percentile of the Otsu foreground; the model's slice grid); the T1w target, the
labels and the K-means are those of the split. c=1 reproduces the cached source (checked).

Tissue CNR of a source slice: the mean over the anatomically adjacent pairs (CSF, GM) and
(GM, WM) of |mean_a - mean_b| / sigma, where mean_k is the class mean (ground-truth label k)
of the noise-free slice and sigma the standard deviation of (noisy - noise-free) inside the
brain, both on the model's 64 x 64 grid after normalisation; the table gives its mean over
the slices. `structure` is `lmi_jax.structure.structure_score` (label-free) per slice,
averaged.

Candidates at inference change the lmi method only: --config.lmi.<key>=<value> overrides
(ml_collections config_flags, as main.py takes them; --config.sampling.* likewise), e.g.
--config.lmi.reference_map=none (the source as it is: the sweep's "before") or another
map of `lmi_jax.reference_map` (stretching the brain's own range over the bins sets the bins
and kernel width from the source's spread; flat_* first divide out the bias field). Every
run uses the same slices and sampling noise, so --baseline (an earlier results.json) gives
paired differences with standard errors.
--features_only measures the conditioning instead of translating: the cross-LMI map of
(reference, x) against the map of (true target, x) for x = target + sigma noise, and the
self map of the reference against the target's, as Pearson correlations inside the brain.

Writes OUT/results.{json,csv}, OUT/sweep.png (Dice and SSIM against CNR) and keeps each
variant's translations in OUT/outputs/<variant>.npz, which a rerun with the same settings
reuses. Prints Markdown tables.
"""

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from ml_collections import config_flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser
from scipy import ndimage

from lmi_jax import evaluation, files, host, lmi, masks, methods, reference_map, structure, translate
from lmi_jax.data import dataset, nifti, phantom
from lmi_jax.data import slices as slicing
from lmi_jax.errors import InputError
from lmi_jax.files import atomic_write

# The phantom's random streams (phantom.phantom_subject names them in this order).
_STREAMS = ("anatomy", "relaxation", "T1 scan", "PD/T2 scan") + phantom.CONTRASTS
_TISSUES = ("csf", "gm", "wm")
_ADJACENT = ((1, 2), (2, 3))  # (CSF, GM) and (GM, WM) label pairs.
METHOD_NAMES = ("lmi", "sdedit", "histmatch", "identity")
_METRICS = ("dice", "dice_paper", "dice_gt", "psnr", "ssim")


@dataclasses.dataclass(frozen=True)
class Variant:
  """A change of the source scan: contrast scale, noise factor and tissue order."""
  contrast: float = 1.0
  noise: float = 1.0
  order: tuple[int, int, int] = (0, 1, 2)  # Signal of tissue order[k] for tissue k.

  @property
  def name(self) -> str:
    if self.order != (0, 1, 2):
      return "order=" + ",".join(_TISSUES[i] for i in self.order)
    if self.noise != 1.0:
      return f"noise={self.noise:g}"
    return f"c={self.contrast:g}"


def parse_variants(levels: str, noise: str, orders: list[str]) -> list[Variant]:
  """--levels "1,0.5", --noise "2.5,5", --order gm,csf,wm (repeatable) -> variants."""
  variants = [Variant(contrast=float(c)) for c in levels.split(",") if c.strip()]
  variants += [Variant(noise=float(k)) for k in noise.split(",") if k.strip()]
  for text in orders:
    names = [t.strip().lower() for t in text.split(",")]
    if sorted(names) != sorted(_TISSUES):
      raise InputError(f"--order={text!r}: give a permutation of {','.join(_TISSUES)}.")
    variants.append(Variant(order=tuple(_TISSUES.index(n) for n in names)))
  if not variants:
    raise InputError("--levels, --noise and --order give no variant: name at least one.")
  return variants


@dataclasses.dataclass(frozen=True)
class SubjectScan:
  """What a phantom subject's source scan is made of (phantom.phantom_subject's recipe).

  fractions: (3, X, Y, Z) CSF, GM, WM fractions of the slab; shading: (X, Y, Z) gain x bias;
  signals: (3,) pure-tissue signals of the source contrast; sigma: Rician noise std.
  """
  seed: int
  z0: int
  fractions: np.ndarray
  shading: np.ndarray
  signals: np.ndarray
  sigma: float
  spacing: np.ndarray


def subject_scan(seed: int, data: ml_collections.ConfigDict, slab: tuple[int, int]) -> SubjectScan:
  """The source scan's parts for subject `seed`, drawn from the streams phantom_subject uses."""
  p = data.phantom
  fractions = phantom._warped_fractions(phantom._stream(seed, _STREAMS.index("anatomy")), p, slab)
  relaxation = phantom.RELAXATION.copy()
  jitter = phantom._stream(seed, _STREAMS.index("relaxation")).standard_normal((3, 2))
  relaxation[:, 1:] *= np.exp(p.relax_jitter * jitter)
  signals = phantom.tissue_signals(relaxation)[data.source]
  shape, affine = phantom.phantom_grid(p.voxel_mm)
  rng = phantom._stream(seed, _STREAMS.index("T1 scan" if data.source == "T1" else "PD/T2 scan"))
  bias = np.exp(p.bias * phantom.smooth_field(rng, shape, phantom._BIAS_SPACING_MM / p.voxel_mm, slab))
  gain = np.exp(phantom._GAIN_SIGMA * rng.standard_normal())
  return SubjectScan(seed=seed, z0=slab[0], fractions=fractions, shading=gain * bias,
                     signals=np.asarray(signals, np.float64),
                     sigma=float(p.noise * gain * float(signals.max())),
                     spacing=nifti.voxel_sizes(affine))


def variant_slices(scan: SubjectScan, variant: Variant, data: ml_collections.ConfigDict,
                   indices: np.ndarray, contrast: str
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The variant's normalised source slices, their noise-free counterparts, and the
  adjacent tissues' signal differences in the same units.

  Returns:
    (S, H, W) noisy and (S, H, W) noise-free slices in [0, 1], both mapped by the noisy
    volume's normalisation (so their difference is the noise), and (S, 2) |signal difference|
    of (CSF, GM) and (GM, WM) as pure tissues under the slice's mean shading inside the
    brain, normalised alike; S = len(indices).
  """
  weights = scan.fractions.sum((1, 2, 3))
  mean = float(weights @ scan.signals / weights.sum())
  signals = mean + variant.contrast * (scan.signals[list(variant.order)] - mean)
  clean = scan.shading * np.tensordot(signals.astype(np.float32), scan.fractions, axes=1)
  noisy = phantom._rician(clean, variant.noise * scan.sigma, scan.seed,
                          _STREAMS.index(contrast), scan.z0).astype(np.float32)
  normalised = slicing.normalize(noisy, data.p_lo, data.p_hi, data.mask)
  lo = np.percentile(noisy, data.p_lo)
  scale = max(np.percentile(noisy[slicing.brain(noisy, data.mask)], data.p_hi) - lo,
              np.finfo(np.float32).tiny)
  clean_n = np.clip((clean - lo) / scale, 0.0, 1.0)
  brain = masks.from_priors(scan.fractions)
  shading = np.array([scan.shading[..., z][brain[..., z]].mean() for z in indices])
  gaps = np.abs(np.array([signals[a - 1] - signals[b - 1] for a, b in _ADJACENT]))
  size = data.image_size
  noisy_slices, clean_slices = (
      slicing.volume_to_slices(v[:, :, indices].astype(np.float32), scan.spacing, size,
                               range(len(indices))) for v in (normalised, clean_n))
  return noisy_slices, clean_slices, shading[:, None] * gaps[None] / scale


def make_variants(config: ml_collections.ConfigDict, split: dict[str, np.ndarray],
                  variants: list[Variant]) -> dict[str, dict[str, np.ndarray]]:
  """{variant name: {"source", "clean": (N, H, W, 1), "gaps": (N, 2)}} for the split's
  subjects (`variant_slices`).

  Raises if c=1 does not reproduce the split's (cached) source: the recipe above has drifted
  from phantom.phantom_subject.
  """
  data = config.data
  if data.dataset != "phantom":
    raise InputError(f"data.dataset={data.dataset!r}: the sweep simulates phantom subjects only.")
  shape, _ = phantom.phantom_grid(data.phantom.voxel_mm)
  indices = slicing.slice_indices(shape[2], data.slice_range, data.slices_per_subject)
  slab = (int(indices[0]), int(indices[-1]) + 1)
  subjects = list(dict.fromkeys(int(s) for s in split["subject"]))
  out = {v.name: {"source": [], "clean": [], "gaps": []} for v in variants}
  start = time.time()
  for n, subject in enumerate(subjects):
    scan = subject_scan(dataset.subject_seed(data.seed, subject), data, slab)
    for variant in variants:
      noisy, clean, gaps = variant_slices(scan, variant, data, indices - slab[0], data.source)
      out[variant.name]["source"].append(noisy[..., None])
      out[variant.name]["clean"].append(clean[..., None])
      out[variant.name]["gaps"].append(gaps)
    elapsed = time.time() - start
    logging.info("variants: subject %d/%d, %.0f s elapsed, about %.0f s left", n + 1,
                 len(subjects), elapsed, elapsed / (n + 1) * (len(subjects) - n - 1))
  count = len(split["subject"])
  arrays = {name: {k: np.concatenate(v)[:count] for k, v in parts.items()}
            for name, parts in out.items()}
  _check_recipe(config, split, slab, indices, arrays)
  return arrays


def _check_recipe(config: ml_collections.ConfigDict, split: dict[str, np.ndarray],
                  slab: tuple[int, int], indices: np.ndarray, arrays: dict) -> None:
  """Raises unless c=1 reproduces the split's (cached) source for its first subject: the
  recipe above would have drifted from phantom.phantom_subject."""
  data = config.data
  count = data.slices_per_subject
  if Variant().name in arrays:
    rebuilt = arrays[Variant().name]["source"][:count, ..., 0]
  else:
    scan = subject_scan(dataset.subject_seed(data.seed, int(split["subject"][0])), data, slab)
    rebuilt = variant_slices(scan, Variant(), data, indices - slab[0], data.source)[0]
  error = float(np.abs(rebuilt - split["source"][:count, ..., 0]).max())
  if error > 1e-4:
    raise RuntimeError(f"c=1 differs from the cached source by {error:.2g}: the sweep's copy of "
                       "phantom.phantom_subject is out of date.")


def tissue_cnr(source: np.ndarray, clean: np.ndarray, gaps: np.ndarray,
               labels: np.ndarray) -> np.ndarray:
  """(N,) tissue CNR per slice (module docstring): the mean of the (N, 2) tissue signal
  gaps over the noise std, the std of (N, H, W, 1) noisy less noise-free slices inside the
  (N, H, W) labels' brain."""
  brain = masks.labelled(labels)
  sigma = np.array([np.std((s - c)[..., 0][m]) for s, c, m in zip(source, clean, brain)])
  return gaps.mean(1) / sigma


# --------------------------------------------------------------------------------------
# Configuration

config_flags.DEFINE_config_file(
    "config", "configs/phantom_pd2t1_cpu.py",
    "Config file; --config.lmi.* and --config.sampling.* change the run (the sweep's candidates).",
    lock_config=True)
flags.DEFINE_string("workdir", "runs/sweep",
                    "Run folder: data cache; its checkpoint, else the shipped model.")
flags.DEFINE_string("out", None, "Results folder.")
flags.DEFINE_enum("split", "val", ["val", "test"],
                  "config.eval.split: val for choices, test for the final table only.")
flags.DEFINE_integer("max_slices", 0, "config.eval.max_slices: first slices of the split (0: all).")
flags.DEFINE_string("source", "PD", "config.data.source (PD, T2).")
flags.DEFINE_string("levels", "1,0.5,0.25,0.12,0.06,0.03", "Contrast scales c.")
flags.DEFINE_string("noise", "2.5,5,10", "Noise std factors at c=1.")
flags.DEFINE_multi_string("order", ["gm,csf,wm"],
                          "Tissue order variant, e.g. gm,csf,wm (repeatable; '' for none).")
flags.DEFINE_string("methods", ",".join(METHOD_NAMES), "Comma-separated.")
flags.DEFINE_string("baseline", "", "An earlier results.json for paired ΔDice.")
flags.DEFINE_bool("features_only", False, "Measure the conditioning maps instead of translating.")
flags.DEFINE_list("feature_sigmas", ["0.05", "0.2", "0.5"],
                  "Noise stds of x in the --features_only study.")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def sweep_config() -> ml_collections.ConfigDict:
  """--config with its overrides, and --source, --split and --max_slices set in it."""
  config = FLAGS.config
  config.data.source = FLAGS.source
  config.eval.split = FLAGS.split
  config.eval.max_slices = FLAGS.max_slices
  return config


def trained_lmi() -> lmi.LMIConfig:
  """The LMI settings of the --config file itself, without its --config.lmi.* overrides:
  the conditioning the model was trained with."""
  path = config_flags.get_config_filename(FLAGS["config"])
  return lmi.from_config(ConfigFileFlagParser("trained").parse(path).lmi)


def lmi_overrides() -> str:
  """The --config.lmi.* overrides as key=value words, "" for none."""
  overrides = config_flags.get_override_values(FLAGS["config"])
  return " ".join(f"{key[len('lmi.'):]}={value}" for key, value in sorted(overrides.items())
                  if key.startswith("lmi."))


# --------------------------------------------------------------------------------------
# Translation and scores


def score_model(ctx: methods.Context) -> tuple[str, int, int | None]:
  """(absolute folder, training step, faint step) of the score model lmi and sdedit use, as
  `translate.load_model` restored it; faint step is that of its faint-contrast model when
  lmi may use it (`methods.lmi_model`), else None."""
  faint = ctx.faint is not None and ctx.config.sampling.faint_below > 0
  return (os.path.abspath(ctx.model_folder), ctx.step,
          ctx.faint.step if faint else None)


def _settings_key(config: ml_collections.ConfigDict, method: str,
                  model: tuple[str, int, int | None]) -> str:
  """What a method's output depends on besides the variant: lmi and sampling sections, the
  score model (`score_model`: its folder and steps), the split and the slice count."""
  parts = [config.eval.split, str(config.eval.max_slices), config.data.source, method]
  if method in ("lmi", "sdedit"):
    parts += [config.lmi.to_json(sort_keys=True), config.sampling.to_json(sort_keys=True),
              *map(str, model)]
  return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def translate_variant(ctx: methods.Context, config: ml_collections.ConfigDict,
                      out: str, name: str, source: np.ndarray,
                      names: tuple[str, ...], model: tuple[str, int, int | None]
                      ) -> dict[str, np.ndarray]:
  """Each method's (N, H, W, 1) translation, reusing OUT/outputs/<name>.npz entries made
  with the same settings and score model (`score_model`). Each method draws the noise of
  `methods.method_key`, so a run of lmi alone draws the noise it draws in a full run."""
  path = os.path.join(out, "outputs", name.replace("=", "_").replace(",", "-") + ".npz")
  stored = dict(np.load(path)) if os.path.isfile(path) else {}
  outputs = {}
  for method in names:
    key = _settings_key(config, method, model)
    if f"{method}/{key}" in stored:
      outputs[method] = stored[f"{method}/{key}"]
      continue
    start = time.time()
    outputs[method] = methods.inside_source_brain(
        config, source, methods.METHODS[method](ctx, source, methods.method_key(config, method)))
    logging.info("%s %s: %d slices in %.1f s", name, method, len(source), time.time() - start)
    stored[f"{method}/{key}"] = outputs[method]
    files.save_npz(path, **stored)
  return outputs


def summarise(report: dict, per_slice_cnr: np.ndarray, scores: np.ndarray) -> dict:
  """The report's per-method metrics, with the variant's CNR and structure score."""
  methods = {}
  for name, entry in report["methods"].items():
    methods[name] = {m: entry[m] for m in _METRICS if m in entry}
    methods[name]["per_slice"] = entry["per_slice"]
  return {"cnr": float(np.nanmean(per_slice_cnr)), "cnr_std": float(np.nanstd(per_slice_cnr)),
          "cnr_per_slice": per_slice_cnr.tolist(), "structure": float(np.mean(scores)),
          "structure_per_slice": scores.tolist(), "methods": methods}


def paired(rows: dict, baseline: dict, variant: str, method: str, metric: str) -> tuple[float, float] | None:
  """(mean difference, its standard error) of a metric over the same slices, or None."""
  try:
    a = np.asarray(rows[variant]["methods"][method]["per_slice"][metric], float)
    b = np.asarray(baseline[variant]["methods"][method]["per_slice"][metric], float)
  except KeyError:
    return None
  if a.shape != b.shape:
    return None
  d = a - b
  d = d[np.isfinite(d)]
  return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan


def feature_study(run_cfg: lmi.LMIConfig, trained_cfg: lmi.LMIConfig, sigmas: list[float],
                  seed: int, reference: np.ndarray, target: np.ndarray,
                  labels: np.ndarray) -> dict:
  """How much guidance the conditioning carries, against what the network was trained with.

  x = target + sigma z and a wrong x (the target of the slice 3 places on: another
  subject, same noise) at each sigma. Over the brain interior (labels > 0 eroded by 2
  pixels, in both slices for the wrong x), averaged over slices:
    gap@s:   [mean cross(reference, x) - mean cross(reference, wrong x)] over the same
             for the target as reference under `trained_cfg` (training's conditioning): the
             share of the training-time signal that tells the right anatomy from a wrong one.
    level@s: mean cross(reference, x) over mean cross(target, x): the shift of the map's level.
    r@s:     Pearson correlation of cross(reference, x) with cross(target, x).
  self_r: correlation of self(reference) with self(target), and self_level, their mean ratio.
  Reference maps use `run_cfg`, target maps `trained_cfg`.
  """
  key = jax.random.PRNGKey(seed)
  inside = np.stack([ndimage.binary_erosion(m, iterations=2) for m in masks.labelled(labels)])
  wrong = np.roll(target, 3, axis=0)
  both = inside & np.roll(inside, 3, axis=0)

  def mean_in(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    return np.array([m[..., 0][k].mean() for m, k in zip(maps, regions)])

  def corr(a: np.ndarray, b: np.ndarray) -> float:
    values = [np.corrcoef(x[..., 0][k], y[..., 0][k])[0, 1] for x, y, k in zip(a, b, inside)
              if x[..., 0][k].std() > 0 and y[..., 0][k].std() > 0]
    return float(np.mean(values)) if values else 0.0

  out = {}
  self_ref = np.asarray(lmi.self_lmi(reference, run_cfg))
  self_target = np.asarray(lmi.self_lmi(target, trained_cfg))
  out["self_r"] = corr(self_ref, self_target)
  out["self_level"] = float(np.mean(mean_in(self_ref, inside) / mean_in(self_target, inside)))
  for sigma in sigmas:
    noise = sigma * np.asarray(jax.random.normal(jax.random.fold_in(key, int(sigma * 1e4)),
                                                 target.shape))
    x, x_wrong = target + noise, wrong + noise
    ref_map = np.asarray(lmi.cross_lmi(reference, x, run_cfg).value)
    ref_wrong = np.asarray(lmi.cross_lmi(reference, x_wrong, run_cfg).value)
    target_map = np.asarray(lmi.cross_lmi(target, x, trained_cfg).value)
    target_wrong = np.asarray(lmi.cross_lmi(target, x_wrong, trained_cfg).value)
    ref_gap = mean_in(ref_map, both) - mean_in(ref_wrong, both)
    target_gap = mean_in(target_map, both) - mean_in(target_wrong, both)
    out[f"gap@{sigma:g}"] = float(ref_gap.mean() / target_gap.mean())
    out[f"level@{sigma:g}"] = float(np.mean(mean_in(ref_map, inside) / mean_in(target_map, inside)))
    out[f"r@{sigma:g}"] = corr(ref_map, target_map)
  return out


# --------------------------------------------------------------------------------------
# Output


def write_csv(rows: dict, path: str) -> None:
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(["variant", "cnr", "cnr_std", "structure", "method"]
                  + [f"{m}_{s}" for m in _METRICS for s in ("mean", "std")])
  for name, row in rows.items():
    for method, entry in row.get("methods", {}).items():
      writer.writerow([name, f"{row['cnr']:.3f}", f"{row['cnr_std']:.3f}", f"{row['structure']:.3f}",
                       method] + [f"{entry[m][s]:.4f}" if m in entry else ""
                                  for m in _METRICS for s in ("mean", "std")])
  atomic_write(path, buffer.getvalue().encode())


def markdown(rows: dict, methods: tuple[str, ...], baseline: dict | None) -> str:
  """One line per variant: CNR, structure score, and Dice / PSNR / SSIM of each method."""
  head = ["variant", "CNR", "structure"]
  for method in methods:
    head += [f"{method} Dice", f"{method} PSNR", f"{method} SSIM"]
    if baseline is not None:
      head += [f"{method} ΔDice (paired SE)"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for name, row in rows.items():
    cells = [name, f"{row['cnr']:.2f}", f"{row['structure']:.2f}"]
    for method in methods:
      entry = row["methods"].get(method)
      if entry is None:
        cells += ["", "", ""] + ([""] if baseline is not None else [])
        continue
      cells += [evaluation.format_summary(entry[m], evaluation.METRIC_DECIMALS[m])
                for m in ("dice", "psnr", "ssim")]
      if baseline is not None:
        diff = paired(rows, baseline, name, method, "dice")
        cells.append("n/a" if diff is None else f"{diff[0]:+.3f} ({diff[1]:.3f})")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(rows: dict, methods: tuple[str, ...], path: str, title: str,
         baseline: dict | None = None) -> None:
  """Dice and SSIM against tissue CNR (log axis): lines over the contrast levels, markers
  for the noise and tissue-order variants; the --baseline run's methods dashed and faint."""
  fig = Figure(figsize=(10, 4.8), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2)
  colours = dict(zip(METHOD_NAMES, ("C0", "C1", "C2", "C7")))
  markers = {"noise": "s", "order": "^"}
  runs = [(rows, methods, "-o", 1.0, "")]
  if baseline:
    runs.insert(0, (baseline, METHOD_NAMES, "--o", 0.45, " (baseline)"))
  for ax, metric in zip(axes, ("dice", "ssim")):
    for run_rows, run_methods, style, alpha, suffix in runs:
      for method in run_methods:
        levels = sorted((r["cnr"], r["methods"][method][metric]["mean"])
                        for n, r in run_rows.items() if n.startswith("c=") and method in r["methods"])
        if levels:
          ax.plot(*zip(*levels), style, color=colours.get(method), label=method + suffix, ms=4,
                  alpha=alpha)
        for name, row in run_rows.items():
          kind = name.split("=")[0]
          if kind in markers and method in row["methods"]:
            ax.plot(row["cnr"], row["methods"][method][metric]["mean"], markers[kind],
                    color=colours.get(method), mfc="none", ms=7, alpha=alpha)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # Short ranges label every minor tick.
    ax.set_xlabel("source tissue CNR (log)")
    ax.set_ylabel(evaluation.METRIC_TITLES[metric])
    ax.grid(alpha=0.3)
  fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=5, fontsize=8,
             title="lines: contrast c;  □ noise, △ tissue order (markers in the method's colour)",
             title_fontsize=8)
  fig.suptitle(title, fontsize=10)
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  atomic_write(path, buffer.getvalue())


# --------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.INFO)
  names = methods.check_methods(tuple(m for m in FLAGS.methods.split(",") if m))
  config = sweep_config()
  run_lmi, trained = lmi.from_config(config.lmi), trained_lmi()
  host.split_host(int(config.host_devices))
  variants = parse_variants(FLAGS.levels, FLAGS.noise, [o for o in FLAGS.order if o])
  needed = () if FLAGS.features_only else names
  split, segmenter, ctx = translate.prepare_split(config, FLAGS.workdir, needed)
  model = score_model(ctx)
  made = make_variants(config, split, variants)
  baseline = None
  if FLAGS.baseline:
    with open(FLAGS.baseline) as f:
      baseline = json.load(f)["rows"]
  rows, features = {}, {}
  for variant in variants:
    parts = made[variant.name]
    cnr = tissue_cnr(parts["source"], parts["clean"], parts["gaps"], split["labels"])
    scores = np.array([structure.structure_score(s, structure.brain_mask(s)) for s in parts["source"]])
    if FLAGS.features_only:
      reference = reference_map.map_reference(parts["source"], str(config.lmi.reference_map),
                                              float(config.lmi.flatten_sigma))
      features[variant.name] = dict(cnr=float(np.nanmean(cnr)), structure=float(scores.mean()),
                                    **feature_study(run_lmi, trained,
                                                    [float(s) for s in FLAGS.feature_sigmas],
                                                    int(config.seed), reference, split["target"],
                                                    split["labels"]))
      logging.info("%s: %s", variant.name, features[variant.name])
      continue
    outputs = translate_variant(ctx, config, FLAGS.out, variant.name, parts["source"], names,
                                model)
    report = translate.score_split(config, outputs, dict(split, source=parts["source"]), segmenter)
    rows[variant.name] = summarise(report, cnr, scores)
  settings = {"config": config_flags.get_config_filename(FLAGS["config"]),
              "split": config.eval.split, "source": config.data.source,
              "n_slices": len(split["source"]), "lmi": config.lmi.to_dict(),
              "sampling": config.sampling.to_dict(),
              "methods": list(names)}
  if FLAGS.features_only:
    keys = list(next(iter(features.values())))
    table = ["| variant | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    table += ["| " + name + " | " + " | ".join(f"{v[k]:.3f}" for k in keys) + " |"
              for name, v in features.items()]
    text = "\n".join(table)
    atomic_write(os.path.join(FLAGS.out, "features.json"),
                 json.dumps({"settings": settings, "rows": features}, indent=1).encode())
  else:
    text = markdown(rows, names, baseline)
    atomic_write(os.path.join(FLAGS.out, "results.json"),
                 json.dumps(evaluation.json_safe({"settings": settings, "rows": rows}),
                            indent=1).encode())
    write_csv(rows, os.path.join(FLAGS.out, "results.csv"))
    folder, step, faint_step = model
    title = (f"{config.data.source} -> {config.data.target}, {config.eval.split} "
             f"({len(split['source'])} slices); "
             f"lmi reference map {config.lmi.reference_map}; "
             f"lmi {lmi_overrides() or 'as configured'}\nscore model "
             f"{os.path.relpath(folder)} step {step}"
             + (f" (structure < {config.sampling.faint_below:g}: its faint/, step {faint_step})"
                if faint_step is not None else "")
             + ("; dashed: the --baseline run" if baseline else ""))
    plot(rows, names, os.path.join(FLAGS.out, "sweep.png"), title, baseline)
  atomic_write(os.path.join(FLAGS.out, "table.md"), (text + "\n").encode())
  print(text)


if __name__ == "__main__":
  app.run(main)
