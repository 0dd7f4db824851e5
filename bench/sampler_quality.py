"""Samplers against NFE on the validation split: Dice, PSNR, SSIM and seconds per slice.

  python bench/sampler_quality.py --config=configs/phantom_pd2t1_cpu.py --workdir=runs/samplers
  python bench/sampler_quality.py --config=configs/brats_flair2t1.py --workdir=runs/brats \
      --candidates=heun:9,15,21 --candidates=dpm2m:5,10,20

Every row translates the same validation slices with the same noise (`lmi_jax.ablation`, the
model of the workdir, else the shipped one). The first row is the reference: the config's own
sampler (Euler-Maruyama for the shipped configs). A row is "within" when its mean Dice, PSNR
and SSIM each lie within one standard error (std / sqrt(slices)) of the reference's, or above
it; the suggested default is the within-row with the fewest network evaluations (NFE).
Seconds per slice include compilation, as a user's run does. Prints one Markdown table.
"""

import json
import os
import platform

import jax
from absl import app, flags
from ml_collections import config_flags

from lmi_jax import ablation, host, sampling

METRICS = ("dice", "psnr", "ssim")
flags.DEFINE_multi_string("candidates", ["heun:9,15,21,35", "dpm2m:5,10,15,20,30",
                                          "churn:21,35", "em:10,25,50"],
                          "<method>:<nfe>,<nfe>,...; repeatable (em: its steps).")
flags.DEFINE_float("churn", 10.0, "S_churn of the churn rows.")
flags.DEFINE_bool("reuse_reference", False, "Read the reference row from an earlier run's "
                  "WORKDIR/reference/ablation/ablation.json (same config and model) instead of "
                  "translating again.")
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder: its checkpoint, else the shipped model.")
flags.mark_flags_as_required(["config", "workdir"])


def within(row: dict, reference: dict, n: int) -> bool:
  """Each metric's mean is above the reference's less one standard error of the reference."""
  return all(row["metrics"][m]["mean"] >= reference["metrics"][m]["mean"]
             - reference["metrics"][m]["std"] / n ** 0.5 for m in METRICS)


def main(argv: list[str]) -> None:
  del argv
  config = flags.FLAGS.config
  config.eval.split, config.eval.methods = "val", ("lmi",)
  host.split_host(int(config.host_devices))
  rows = []
  reference_dir = os.path.join(flags.FLAGS.workdir, "reference")
  saved = os.path.join(reference_dir, "ablation", "ablation.json")
  if flags.FLAGS.reuse_reference and os.path.isfile(saved):
    with open(saved) as f:
      reference_rows = json.load(f)["rows"]
  else:
    reference_rows, _ = ablation.ablate(config, reference_dir, [])
  reference = dict(reference_rows[0], nfe=sampling.network_evaluations(config.sampling),
                   setting=f"{config.sampling.method} (reference)")
  rows.append(reference)
  for text in flags.FLAGS.candidates:
    method, _, values = text.partition(":")
    counts = [int(v) for v in values.split(",")]
    key = "num_steps" if method == "em" else "nfe"  # em's count is its steps.
    base = config.copy_and_resolve_references()
    base.sampling.method, base.sampling.churn = method, flags.FLAGS.churn
    # The first count is the baseline row, the others vary from it.
    base.sampling[key] = counts[0]
    found, _ = ablation.ablate(base, os.path.join(flags.FLAGS.workdir, method),
                               [(f"sampling.{key}", counts[1:])] if counts[1:] else [])
    for row in found:
      cfg = base.sampling.copy_and_resolve_references()
      if row["setting"] != "baseline":
        cfg[key] = int(row["setting"].split("=")[1])
      rows.append(dict(row, nfe=sampling.network_evaluations(cfg), setting=method))
  n = len(config_slices(config, flags.FLAGS.workdir))
  chosen = min((r for r in rows[1:] if within(r, reference, n)), key=lambda r: r["nfe"],
               default=None)
  print(f"{n} validation slices, {config.data.dataset} {config.data.source} -> "
        f"{config.data.target}; {jax.devices()[0].device_kind}, {len(jax.devices())} device(s), "
        f"{platform.processor() or platform.machine()}, JAX {jax.__version__}\n")
  print("| sampler | NFE | Dice | PSNR | SSIM | s / slice | within 1 SE |")
  print("| --- | ---: | --- | --- | --- | ---: | --- |")
  for r in rows:
    cells = [f"{r['metrics'][m]['mean']:.3f} ± {r['metrics'][m]['std'] / n ** 0.5:.3f}"
             for m in METRICS]
    mark = "reference" if r is reference else ("yes" if within(r, reference, n) else "no")
    print(f"| {r['setting']} | {r['nfe']} | " + " | ".join(cells)
          + f" | {r['seconds'] / n:.2f} | {mark} |")
  print("\n(mean ± standard error across slices)")
  print("\nFewest NFE within one standard error of the reference on all three: "
        + (f"{chosen['setting']} at NFE {chosen['nfe']}." if chosen else "none."))


def config_slices(config, workdir: str):
  from lmi_jax import translate
  from lmi_jax.data import load_dataset
  data = load_dataset(config, os.path.join(workdir, "reference"))
  return translate.select_split(data, "val", int(config.eval.max_slices))["source"]


if __name__ == "__main__":
  app.run(main)
