"""Full-resolution designs side by side on a split (validation for choices), one low-resolution
start shared by all, so their differences are paired:

  python bench/full_res_designs.py --config=configs/real_t1.py --workdir=runs/designs \\
      --config.eval.split=val

Rows: the low-resolution model's translation enlarged (`none`), made full resolution by the
guided filter over a small grid of radius and ridge, by LMI-guided diffusion from a few start
times, and lmi at full resolution from the prior (no low-resolution start); source_kmeans
and identity beside them. Scores as `--mode=eval` (Dice, PSNR, SSIM, edge correlation,
inside the brain), with the paired difference to `none` and its standard error across
slices; seconds per slice. Prints one Markdown table.
"""

import dataclasses
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from lmi_jax import host, multiscale, translate

config_flags.DEFINE_config_file("config", None, "A config with sampling.lowres_model set.",
                                lock_config=False)
flags.DEFINE_string("workdir", None, "Run folder (its checkpoint, else the shipped model).")
flags.DEFINE_list("t0", ["0.3", "0.5"], "Start times of the diffusion rows.")
flags.DEFINE_list("guided", ["2:0.001", "4:0.001", "4:0.01", "8:0.01"],
                  "radius:eps of the guided rows.")
flags.DEFINE_bool("from_prior", True, "Add lmi at full resolution from the prior.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  del argv
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  host.split_host(int(config.host_devices))
  methods = ("source_kmeans", "identity")
  split, segmenters, ctx = translate.prepare_split(config, workdir, ("lmi",) + methods)
  if ctx.lowres is None:
    raise SystemExit("set --config.sampling.lowres_model (e.g. checkpoints/brats_t1)")
  source = split["source"]
  outputs, seconds = translate.run_methods(ctx, methods, source)
  # lmi's own key, so the row of the shipped design is what --mode=sample gives.
  start_key, refine_key = jax.random.split(translate.method_key(config, "lmi"))
  began = time.time()
  start = multiscale.lowres_start(ctx, source, start_key, translate.translate_lmi)
  seconds["none"] = time.time() - began
  outputs["none"] = translate.inside_source_brain(config, source, start)
  reference = translate.lmi_reference(ctx, source)

  def run(name, **sampling):
    cfg = config.copy_and_resolve_references()
    cfg.sampling.update(sampling)
    began = time.time()
    out = multiscale.refine(dataclasses.replace(ctx, config=cfg), reference, start, refine_key)
    seconds[name] = seconds["none"] + time.time() - began
    outputs[name] = translate.inside_source_brain(config, source, out)

  for item in flags.FLAGS.guided:
    radius, eps = item.split(":")
    run(f"guided r{radius} eps{eps}", lowres_refine="guided", guided_radius=int(radius),
        guided_eps=float(eps))
  for t0 in flags.FLAGS.t0:
    run(f"diffusion t0={t0}", lowres_refine="diffusion", lowres_t0=float(t0))
  if flags.FLAGS.from_prior:
    began = time.time()
    outputs["from prior"] = translate.inside_source_brain(
        config, source, translate.translate_lmi(dataclasses.replace(ctx, lowres=None), source, key))
    seconds["from prior"] = time.time() - began
  report = translate.score_split(config, outputs, split, segmenters)
  base = report["methods"]["none"]["per_slice"]
  print(f"{config.eval.split} split, {len(source)} slices of {source.shape[1]} px "
        f"(data.pixel_mm={config.data.pixel_mm}); model step {ctx.step}, low-resolution "
        f"{ctx.lowres.model_folder} step {ctx.lowres.step}\n")
  print("| row | Dice | d Dice vs none (SE) | PSNR | SSIM | d SSIM (SE) | edge corr | s / slice |")
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  for name, entry in report["methods"].items():
    per = entry["per_slice"]
    diff = lambda m: np.asarray(per[m]) - np.asarray(base[m])
    paired = lambda m: (f"{np.nanmean(diff(m)):+.3f} ({np.nanstd(diff(m)) / np.sqrt(np.sum(~np.isnan(diff(m)))):.3f})")
    print(f"| {name} | {entry['dice']['mean']:.3f} | {paired('dice')} | {entry['psnr']['mean']:.2f} "
          f"| {entry['ssim']['mean']:.3f} | {paired('ssim')} | {entry['edge_corr']['mean']:.3f} "
          f"| {seconds[name] / len(source):.2f} |")


if __name__ == "__main__":
  app.run(main)
