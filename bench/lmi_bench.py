"""Speed and memory of `lmi_jax.lmi.cross_lmi`: prints one Markdown table.

  python bench/lmi_bench.py            # the full table
  python bench/lmi_bench.py --quick    # 128x128 rows only

ms/image is the median wall time of a batched call divided by the batch size, after a
compile-and-warm-up call. Peak memory is XLA's own account of the compiled call
(arguments + outputs + largest set of live temporaries), which is what bounds it.
"""

import argparse
import dataclasses
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from lmi_jax import lmi


def smooth_images(batch: int, size: int, seed: int) -> jax.Array:
  """Smooth random images in [0, 1], (batch, size, size, 1)."""
  rng = np.random.default_rng(seed)
  freq = np.fft.fftfreq(size)
  envelope = np.exp(-(freq[:, None] ** 2 + freq[None, :] ** 2) / (2 * 0.05 ** 2))
  noise = rng.normal(size=(batch, size, size)) + 1j * rng.normal(size=(batch, size, size))
  field = np.real(np.fft.ifft2(noise * envelope))
  lo = field.min(axis=(1, 2), keepdims=True)
  hi = field.max(axis=(1, 2), keepdims=True)
  return jnp.asarray(((field - lo) / (hi - lo))[..., None], jnp.float32)


def measure(cfg: lmi.LMIConfig, batch: int, size: int, repeats: int) -> dict:
  a = smooth_images(batch, size, 0)
  b = smooth_images(batch, size, 1)
  compiled = jax.jit(lambda x, y: lmi.cross_lmi(x, y, cfg)).lower(a, b).compile()
  memory = compiled.memory_analysis()
  peak = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
          + memory.output_size_in_bytes) if memory is not None else float("nan")
  jax.block_until_ready(compiled(a, b))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(a, b))
    times.append(time.perf_counter() - start)
  seconds = float(np.median(times))
  return {"ms_per_image": 1000 * seconds / batch,
          "mpix_per_s": batch * size * size / seconds / 1e6,
          "peak_mb": peak / 2 ** 20}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="128x128 rows only")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  default = lmi.LMIConfig()
  rows = [("authors preset", lmi.authors_preset(radius=1), 128, 1),
          ("authors preset", lmi.authors_preset(radius=1), 128, 8)]
  for size in (128,) if args.quick else (128, 256):
    for k in (3, 5):
      for batch in (1, 8):
        rows.append((f"default, k={k}", dataclasses.replace(default, patch_size=k), size, batch))

  print(f"cross_lmi on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__} ({jax.devices()[0].platform})\n")
  print("| estimator | bins | k | r | size | batch | ms/image | Mpixel/s | peak MB |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for name, cfg, size, batch in rows:
    result = measure(cfg, batch, size, args.repeats)
    print(f"| {name} | {cfg.num_bins} | {cfg.patch_size} | {cfg.radius} | {size}x{size} "
          f"| {batch} | {result['ms_per_image']:.1f} | {result['mpix_per_s']:.3f} "
          f"| {result['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
  main()
