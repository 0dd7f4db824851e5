"""Training throughput of the authors'-size score network: prints one Markdown table.

  python bench/train_bench.py                  # 128 and 64 px, batch 4 and 16
  python bench/train_bench.py --sizes 64 --batches 4 --steps 2

Each row is the full pmapped training step of `lmi_jax.train` (LMI features of every
example, forward, backward, Adam, EMA) for configs/default.py and configs/authors_unet.py on all local
devices. images/s is batch x steps over the wall time of `--steps` steps after one
compile-and-warm-up step; "LMI ms/batch" times the features alone (already inside the
step). Reference: the authors' PyTorch UNet of 8.95M parameters trains at 0.8 images/s at
128 px, batch 4, on 2 CPU cores.
"""

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils

from configs import authors_unet, default
from lmi_jax import lmi, train
from lmi_jax.models import count_params


def timed(fn, steps: int) -> float:
  """Seconds per call of fn() (which blocks) over `steps` calls after one warm-up call."""
  fn()
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - start) / steps


CONFIGS = {"default": default, "authors": authors_unet}


def measure(size: int, batch: int, steps: int, arch: str, kernel_grad: str) -> dict:
  config = CONFIGS[arch].get_config()
  config.data.image_size = size
  config.model.host_kernel_grad = kernel_grad == "host"
  cfg = train.step_config(config)
  devices = jax.local_device_count()
  if batch % devices:
    raise SystemExit(f"batch {batch} does not divide over {devices} devices")
  state = train.create_train_state(jax.random.key(0), cfg, size)
  params = count_params(state.params)
  images = np.random.default_rng(0).random((batch, size, size, 1), np.float32)
  batches = {"image": images.reshape(devices, -1, size, size, 1),
             "index": np.arange(batch, dtype=np.int32).reshape(devices, -1)}
  batches = next(jax_utils.prefetch_to_device(iter([batches]), 1, axis_name=train.AXIS))
  rstate = jax_utils.replicate(state, axis_name=train.AXIS)

  def step():
    nonlocal rstate
    rstate, _ = train.p_train_step(rstate, batches, cfg)
    jax.block_until_ready(rstate)

  start = time.perf_counter()
  step()
  compile_s = time.perf_counter() - start
  step_s = timed(step, steps)

  x = jnp.asarray(images)
  features = jax.jit(lambda a, b: lmi.features(a, b, cfg.lmi_cfg))
  lmi_s = timed(lambda: jax.block_until_ready(features(x, x)), steps)
  return {"params": params, "compile_s": compile_s, "images_per_s": batch / step_s,
          "step_s": step_s, "lmi_ms": 1000 * lmi_s}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[128, 64])
  parser.add_argument("--batches", type=int, nargs="+", default=[4, 16])
  parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up")
  parser.add_argument("--archs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                      help="default: configs/default.py; authors: configs/authors_unet.py")
  parser.add_argument("--kernel-grads", nargs="+", default=["host"], choices=["host", "xla"],
                      help="model.host_kernel_grad on (host: OpenBLAS) or off (xla)")
  args = parser.parse_args()

  device = jax.devices()[0]
  print(f"training step on {jax.local_device_count()} x {device.device_kind} "
        f"({platform.machine()}, {os.cpu_count()} cores), jax {jax.__version__}\n")
  print("| network | kernel grad | size | batch | params | images/s | s/step | LMI ms/batch | first step s |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for arch in args.archs:
    for size in args.sizes:
      for batch in args.batches:
        for kernel_grad in args.kernel_grads:
          r = measure(size, batch, args.steps, arch, kernel_grad)
          print(f"| {arch} | {kernel_grad} | {size}x{size} | {batch} | {r['params'] / 1e6:.2f}M "
                f"| {r['images_per_s']:.2f} | {r['step_s']:.2f} | {r['lmi_ms']:.0f} "
                f"| {r['compile_s']:.0f} |", flush=True)


if __name__ == "__main__":
  main()
