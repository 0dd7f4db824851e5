"""Full-resolution designs side by side on a split (validation for choices), one low-resolution
start shared by all, so their differences are paired:

  python bench/full_res_designs.py --config=configs/real_t1.py --workdir=runs/designs \\
      --config.eval.split=val

Rows: the low-resolution model's translation enlarged (`none`), made full resolution by the
guided filter over a small grid of radius and ridge, by LMI-guided diffusion from a few start
times, with other samplers or budgets (`--samplers`), guidance scales (`--guidance_scales`) or
full-resolution models (`--priors`), from fewer or more averaged low-resolution draws
(`--draws`) or draws by other samplers, guidance scales or models (`--lowres_samplers`,
`--lowres_guidance_scales`, `--lowres_models`), and lmi at full resolution
from the prior (no low-resolution start); source_kmeans and identity beside them. With
`--finish` the diffusion rows end with the config's guided filter, as lmi does. Scores as
`--mode=eval` (Dice, PSNR, SSIM, edge correlation, inside the brain), with the paired
difference to `--paired_to` and its standard error across slices; network evaluations per
slice at full and at low resolution (a guidance scale other than 1 makes each two network
calls); seconds per slice. Prints one Markdown table. The sampler budget of issue 27 was
chosen with

  python bench/full_res_designs.py --config=configs/real_t1.py --workdir=runs/designs \
      --config.eval.split=val --config.eval.max_slices=40 --t0=0.7 --guided= --from_prior=false \
      --samplers=churn:21,dpm2m:15,heun:21 --draws=2 --paired_to="diffusion t0=0.7"
"""

import dataclasses
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from lmi_jax import checkpoints, host, methods, multiscale, sampling, translate

config_flags.DEFINE_config_file("config", None, "A config with sampling.lowres_model set.",
                                lock_config=False)
flags.DEFINE_string("workdir", None, "Run folder (its checkpoint, else the shipped model).")
flags.DEFINE_list("t0", ["0.3", "0.5"], "Start times of the diffusion rows.")
flags.DEFINE_list("guided", ["2:0.001", "4:0.001", "4:0.01", "8:0.01"],
                  "radius:eps of the guided rows.")
flags.DEFINE_bool("from_prior", True, "Add lmi at full resolution from the prior.")
flags.DEFINE_list("prior_samplers", [], "method:nfe of rows from the prior beside the config's "
                  "sampler (with --from_prior), e.g. dpm2m:15.")
flags.DEFINE_list("samplers", [], "method:nfe[:t0] of diffusion rows (t0: the config's if not "
                  "given), e.g. dpm2m:21:0.8; the sampler takes t0 of the nfe.")
flags.DEFINE_list("draws", [], "Numbers of low-resolution draws averaged, beside the config's "
                  "(rows: enlarged, and diffusion with the config's sampler).")
flags.DEFINE_list("lowres_samplers", [], "method:nfe of the low-resolution draws of extra rows "
                  "(the config's number of draws, refined as the config does), e.g. dpm2m:15.")
flags.DEFINE_list("lowres_guidance_scales", [], "LMI guidance scales of the low-resolution "
                  "draws of extra rows, in place of that model's own sampling.guidance_scale "
                  "(refined as the config does), e.g. 2.")
flags.DEFINE_list("lowres_models", [], "Shipped folders of other low-resolution models "
                  "(python -m lmi_jax.pretrained) whose draws start extra rows, refined as the "
                  "config does, e.g. a 64 px model trained on more T1w.")
flags.DEFINE_list("guidance_scales", [], "LMI guidance scales of diffusion rows beside the "
                  "config's (sampling.guidance_scale; above 1 each step also calls the network "
                  "without LMI), e.g. 1.5,2.")
flags.DEFINE_list("priors", [], "Run folders of other full-resolution models (each its latest "
                  "checkpoint's EMA parameters) for diffusion rows beside the config's model, "
                  "e.g. a longer-trained prior.")
flags.DEFINE_bool("finish", False, "End the diffusion rows with the config's guided finish "
                  "(sampling.finish_radius; `methods.source_guided_finish`), as lmi does.")
flags.DEFINE_string("paired_to", "none", "Row the paired differences are taken against.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  del argv
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  host.split_host(int(config.host_devices))
  competitors = ("source_kmeans", "identity")
  split, segmenters, ctx = translate.prepare_split(config, workdir, ("lmi",) + competitors)
  if ctx.lowres is None:
    raise SystemExit("set --config.sampling.lowres_model (e.g. checkpoints/brats_t1)")
  source = split["source"]
  outputs, seconds = methods.run_methods(ctx, competitors, source)
  nfe = {name: (0, 0) for name in competitors}  # Network evaluations per slice: (full res, low res).
  lmi_key = methods.method_key(config, "lmi")
  # lmi's own keys, so the row of the shipped design is what --mode=sample gives.
  start_key, refine_key = jax.random.split(lmi_key)
  configured = int(config.sampling.lowres_samples)
  counts = sorted({configured, *map(int, flags.FLAGS.draws)})
  lowres_nfe = sampling.network_evaluations(ctx.lowres.config.sampling)
  began = time.time()
  draws = multiscale.lowres_draws(ctx, source, start_key, methods.translate_lmi, max(counts))
  per_draw = (time.time() - began) / len(draws)  # Every draw costs the same.
  starts = {d: multiscale.enlarged_mean(draws[:d], source.shape[1:3]) for d in counts}
  for d in counts:
    name = "none" if d == configured else f"none, {d} draws"
    outputs[name] = methods.inside_source_brain(config, source, starts[d])
    seconds[name], nfe[name] = d * per_draw, (0, d * lowres_nfe)
  reference = methods.lmi_reference(ctx, source)

  def finished(cfg: ml_collections.ConfigDict, out: np.ndarray) -> np.ndarray:
    """A diffusion row's output ended as lmi ends it (`methods.source_guided_finish`) with
    --finish; other rows, or without the flag, as they are."""
    if flags.FLAGS.finish and cfg.sampling.lowres_refine == "diffusion":
      return methods.source_guided_finish(cfg, source, out)
    return out

  def run(name: str, d: int = configured, model: methods.Context = ctx, **settings) -> None:
    cfg = config.copy_and_resolve_references()
    cfg.sampling.update(settings)
    began = time.time()
    out = finished(cfg, multiscale.refine(dataclasses.replace(model, config=cfg), reference,
                                          starts[d], refine_key))
    seconds[name] = d * per_draw + time.time() - began
    outputs[name] = methods.inside_source_brain(config, source, out)
    full = (sampling.network_evaluations(cfg.sampling, float(cfg.sampling.lowres_t0))
            if cfg.sampling.lowres_refine == "diffusion" else 0)
    nfe[name] = (full, d * lowres_nfe)

  for item in flags.FLAGS.guided:
    radius, eps = item.split(":")
    run(f"guided r{radius} eps{eps}", lowres_refine="guided", guided_radius=int(radius),
        guided_eps=float(eps))
  for t0 in flags.FLAGS.t0:
    run(f"diffusion t0={t0}", lowres_refine="diffusion", lowres_t0=float(t0))
  for item in flags.FLAGS.samplers:
    method, count, *t0 = item.split(":")
    t0 = float(t0[0]) if t0 else float(config.sampling.lowres_t0)
    run(f"diffusion {method} nfe={count} t0={t0:g}", lowres_refine="diffusion", method=method,
        nfe=int(count), lowres_t0=t0)
  for scale in flags.FLAGS.guidance_scales:
    run(f"diffusion guidance_scale={scale}", lowres_refine="diffusion",
        guidance_scale=float(scale))
  for d in counts:
    if d != configured:
      run(f"diffusion, {d} draws", d, lowres_refine="diffusion")
  for folder in flags.FLAGS.priors:
    variables, step = checkpoints.restore_ema_params(config, folder)
    run(f"diffusion, prior {folder} step {step}",
        model=dataclasses.replace(ctx, variables=variables, step=step), lowres_refine="diffusion")

  def run_lowres(name: str, lowres: methods.Context) -> None:
    began = time.time()
    start = multiscale.lowres_start(dataclasses.replace(ctx, lowres=lowres), source, start_key,
                                    methods.translate_lmi)
    out = finished(config, multiscale.refine(ctx, reference, start, refine_key))
    seconds[name] = time.time() - began
    outputs[name] = methods.inside_source_brain(config, source, out)
    nfe[name] = (sampling.network_evaluations(config.sampling, float(config.sampling.lowres_t0)),
                 configured * sampling.network_evaluations(lowres.config.sampling))

  def lowres_with(**settings) -> methods.Context:
    """The low-resolution context with a copy of its config, its sampling settings updated,
    and its samplers compiled afresh."""
    lowres_config = ctx.lowres.config.copy_and_resolve_references()
    lowres_config.sampling.update(settings)
    return dataclasses.replace(ctx.lowres, config=lowres_config, runners=None)

  for item in flags.FLAGS.lowres_samplers:
    lowres = lowres_with()
    sampling.set_sampler(lowres.config.sampling, item)
    run_lowres(f"diffusion, draws by {item}", lowres)
  for scale in flags.FLAGS.lowres_guidance_scales:
    run_lowres(f"diffusion, draws with guidance_scale={scale}",
               lowres_with(guidance_scale=float(scale)))
  for folder in flags.FLAGS.lowres_models:
    cfg = config.copy_and_resolve_references()
    cfg.sampling.lowres_model = folder
    lowres = multiscale.load_lowres(dataclasses.replace(ctx, config=cfg)).lowres
    run_lowres(f"diffusion, draws by {folder} step {lowres.step}", lowres)
  if flags.FLAGS.from_prior:
    configured_sampler = f"{config.sampling.method}:{config.sampling.nfe}"
    for item in dict.fromkeys([configured_sampler, *flags.FLAGS.prior_samplers]):
      cfg = config.copy_and_resolve_references()
      sampling.set_sampler(cfg.sampling, item)
      name = ("from prior" if item == configured_sampler
              else f"from prior {cfg.sampling.method} nfe={cfg.sampling.nfe}")
      began = time.time()
      outputs[name] = methods.inside_source_brain(config, source, methods.translate_lmi(
          dataclasses.replace(ctx, config=cfg, lowres=None), source, lmi_key))
      seconds[name] = time.time() - began
      nfe[name] = (sampling.network_evaluations(cfg.sampling), 0)
  report = translate.score_split(config, outputs, split, segmenters)
  paired_to = flags.FLAGS.paired_to
  base = report["methods"][paired_to]["per_slice"]
  print(f"{config.eval.split} split, {len(source)} slices of {source.shape[1]} px "
        f"(data.pixel_mm={config.data.pixel_mm}); model step {ctx.step}, low-resolution "
        f"{ctx.lowres.model_folder} step {ctx.lowres.step}; sampler {config.sampling.method}, "
        f"nfe {config.sampling.nfe}, t0 {config.sampling.lowres_t0}\n")
  print(f"| row | NFE full res | NFE low res | Dice | d Dice vs {paired_to} (SE) | PSNR | SSIM "
        "| d SSIM (SE) | edge corr | s / slice |")
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  for name, entry in report["methods"].items():
    per = entry["per_slice"]
    diff = lambda m: np.asarray(per[m]) - np.asarray(base[m])
    paired = lambda m: (f"{np.nanmean(diff(m)):+.3f} ({np.nanstd(diff(m)) / np.sqrt(np.sum(~np.isnan(diff(m)))):.3f})")
    print(f"| {name} | {nfe[name][0]} | {nfe[name][1]} | {entry['dice']['mean']:.3f} "
          f"| {paired('dice')} | {entry['psnr']['mean']:.2f} | {entry['ssim']['mean']:.3f} "
          f"| {paired('ssim')} | {entry['edge_corr']['mean']:.3f} | {seconds[name] / len(source):.2f} |")


if __name__ == "__main__":
  app.run(main)
