"""Cost of LMI-guided translation: prints two Markdown tables.

  python bench/sample_bench.py                 # 128x128, the authors'-size model
  python bench/sample_bench.py --sizes=64 --config=configs/phantom_pd2t1_cpu.py
  python bench/sample_bench.py --sizes=64,128,256 --config=configs/real_t1.py --batches=2 \\
      --samplers=churn:35,churn:21      # the sizes users run, with the 1 mm model's network

Each reverse-SDE step costs one LMI(G; x_t) map and one network call. Both are timed
alone (median of a few jitted calls), and a short `lax.scan` run of the real sampler checks
that their sum predicts a step. Seconds per slice for 1000 steps are extrapolated from the
measured per-step cost: running 1000 steps on a CPU would take hours.

The second table runs each sampler of `--samplers` (method:NFE) end to end at each size, as
`--mode=sample` does (jitted once, the second call timed), and gives the milliseconds per
image of one LMI call and one network evaluation, the share of each evaluation that the LMI
features take, seconds per slice with the NFE, and the seconds for a 155-slice volume (a
1 mm BraTS-like scan) at that rate; `em` rows are extrapolated from
the scan above (em:1000 is the paper's setting), the others measured.

The scan runs the batch split over the local devices, as `--mode=sample` does. On a CPU,
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python bench/sample_bench.py --batches=2,8
makes two XLA devices of the host, which run two slices side by side; LMI and network
columns stay single-device timings of the whole batch.
"""

import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from lmi_jax import lmi, sampling
from lmi_jax.models import (count_params, create_model, feeding_of, init_variables, lmi_score,
                            score_fn)
from lmi_jax.sde import sde_from_config


# Axial slices of a 1 mm BraTS-like volume (240 x 240 x 155): the volume column's multiplier.
VOLUME_SLICES = 155


config_flags.DEFINE_config_file("config", "configs/default.py",
                                "Config of the model timed; --config.x=y overrides it.",
                                lock_config=True)
flags.DEFINE_list("sizes", ["128"], "Slice sizes in pixels, rows of each table.")
flags.DEFINE_list("batches", ["1", "8"], "Batch sizes, one row each.")
flags.DEFINE_integer("scan_steps", 5, "Steps of the timed sampler scan.")
flags.DEFINE_integer("repeats", 3, "Timed calls of each jitted function (the median is kept).")
flags.DEFINE_list("samplers", ["em:1000", "em:100", "heun:15", "dpm2m:10"],
                  "method:NFE rows of the second table (em: steps, no corrector); empty: none.")
FLAGS = flags.FLAGS


def median_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def measure_size(config, size: int, batch: int) -> dict:
  """Per-step costs at one size and batch: the LMI features and the network timed alone (s
  per call of the whole batch, one device), a short em scan split over the local devices (s
  per step); and what the sampler rows need to run end to end."""
  lmi_cfg = lmi.from_config(config.lmi)
  sde = sde_from_config(config.sde)
  model = create_model(config.model)
  variables = init_variables(model, jax.random.PRNGKey(0), size, 1 + len(lmi_cfg.features))
  feeding = feeding_of(config.model)
  rng = np.random.default_rng(0)
  source = jnp.asarray(rng.random((batch, size, size, 1)), jnp.float32)
  x = source + 0.3 * jnp.asarray(rng.normal(size=source.shape), jnp.float32)
  t = jnp.full((batch,), 0.5)
  fixed = lmi.reference_channels(source, lmi_cfg)
  feats = lmi.features(source, x, lmi_cfg, fixed=fixed)
  lmi_s = median_seconds(jax.jit(lambda s, y: lmi.features(s, y, lmi_cfg, fixed=fixed)),
                         source, x, repeats=FLAGS.repeats)
  net = jax.jit(lambda v, y, f, tt: score_fn(model, v, sde, y, f, tt, feeding=feeding))
  net_s = median_seconds(net, variables, x, feats, t, repeats=FLAGS.repeats)

  def score_of(v, s):
    return lmi_score(model, v, sde, lmi_cfg, s, feeding=feeding)

  def run(v, s, key):
    return sampling.em_sampler(score_of(v, s), sde, s.shape, key, FLAGS.scan_steps, denoise=False)[0]

  # As `--mode=sample` does: the batch split over the local devices by pmap.
  devices = jax.local_device_count() if batch % jax.local_device_count() == 0 else 1
  sharded = source.reshape(devices, batch // devices, *source.shape[1:])
  keys = jax.random.split(jax.random.PRNGKey(1), devices)
  scan_s = median_seconds(jax.pmap(run, in_axes=(None, 0, 0), devices=jax.local_devices()[:devices]),
                          variables, sharded, keys, repeats=1) / FLAGS.scan_steps
  return {"size": size, "batch": batch, "devices": devices, "lmi_s": lmi_s, "net_s": net_s,
          "scan_s": scan_s, "params": count_params(variables), "lmi_cfg": lmi_cfg, "sde": sde,
          "score_of": score_of, "variables": variables, "sharded": sharded, "keys": keys}


def sampler_seconds(config, row: dict, method: str, count: int) -> tuple[int, float, str]:
  """NFE, seconds per slice and how they were found, for sampler `method` at `count` steps
  or NFE: em extrapolated from the scan, the others run end to end (second call timed)."""
  cfg = config.sampling.copy_and_resolve_references()
  cfg.method, cfg.corrector_steps, cfg.denoise = method, 0, False
  cfg.num_steps = cfg.nfe = count
  nfe = sampling.network_evaluations(cfg)
  if method == "em":
    return nfe, nfe * row["scan_s"] / row["batch"], "extrapolated"
  sde, score_of = row["sde"], row["score_of"]

  def run_sampler(v, s, key):
    return sampling.sample(score_of(v, s), sde, s.shape, key, cfg)

  seconds = median_seconds(jax.pmap(run_sampler, in_axes=(None, 0, 0),
                                    devices=jax.local_devices()[:row["devices"]]),
                           row["variables"], row["sharded"], row["keys"], repeats=1)
  return nfe, seconds / row["batch"], "measured"


def main(argv: list[str]) -> None:
  del argv
  config = FLAGS.config
  rows = [measure_size(config, int(size), int(batch))
          for size in FLAGS.sizes for batch in FLAGS.batches]
  lmi_cfg = rows[0]["lmi_cfg"]
  config_file = config_flags.get_config_filename(FLAGS["config"])
  print(f"LMI-guided sampling on {platform.machine()}, {os.cpu_count()} cores, jax "
        f"{jax.__version__} ({jax.devices()[0].platform}); {config_file}: "
        f"{rows[0]['params'] / 1e6:.2f}M parameters, LMI k={lmi_cfg.patch_size} "
        f"r={lmi_cfg.radius} bins={lmi_cfg.num_bins}\n")
  print("| size | batch | devices | LMI s/step | network s/step | scan s/step | s/slice, 1000 steps |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for row in rows:
    print(f"| {row['size']}x{row['size']} | {row['batch']} | {row['devices']} | {row['lmi_s']:.3f} "
          f"| {row['net_s']:.3f} | {row['scan_s']:.3f} | {1000 * row['scan_s'] / row['batch']:.0f} |",
          flush=True)
  if not FLAGS.samplers:
    return
  print("\n| size | sampler | NFE | batch | devices | LMI ms/image | network ms/image | LMI share "
        "of an evaluation | s/slice | s per 155-slice volume | how |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for row in rows:
    per_image = lambda s: 1000 * s / row["batch"]
    share = row["lmi_s"] / (row["lmi_s"] + row["net_s"])
    for text in FLAGS.samplers:
      method, _, count = text.partition(":")
      nfe, per_slice, how = sampler_seconds(config, row, method, int(count))
      print(f"| {row['size']}x{row['size']} | {method} | {nfe} | {row['batch']} | {row['devices']} "
            f"| {per_image(row['lmi_s']):.0f} | {per_image(row['net_s']):.0f} | {share:.0%} "
            f"| {per_slice:.2f} | {VOLUME_SLICES * per_slice:.0f} | {how} |", flush=True)


if __name__ == "__main__":
  app.run(main)
