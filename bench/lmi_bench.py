"""Speed and memory of `lmi_jax.lmi.cross_lmi`: prints one Markdown table.

  python bench/lmi_bench.py            # 64, 128 and 256 pixels, and k = 3..11 at 128
  python bench/lmi_bench.py --quick    # 128x128 rows only

ms/image is the fastest of `--repeats` timed batched calls divided by the batch size,
after a compile-and-warm-up call: on a VM shared with other work the fastest run is the
one least disturbed by it (the load average is printed before and after). CPU ms/image
is the process's CPU time of its least costly call: more than the wall time when XLA
runs parts of the call on several threads, less when other work took the core. Peak
memory is XLA's own account of the compiled call (arguments + outputs + largest set of
live temporaries), which is what bounds it; the process's peak RSS over all rows is
printed below the table.

The authors' PyTorch `statistical_align` is not run here (it is not in this project, and it
is hard-coded to 128 x 128): its 3.1-3.4 s per 128 x 128 image were measured on a 2-core CPU
of this kind on another day (../shared/docs/reference-implementation.md), and the "recorded"
speed-up divides those by ours. Machines of this kind differ: our own time at 128 x 128 was
100 ms on one and 330 ms on another (2 GHz first-generation EPYC), so that ratio says more
about the machine than about the code. With PyTorch installed (`pip install torch==2.13.0`),
the authors' estimator in PyTorch (`bench/authors_lmi_torch.py`: their layout, written from
those facts) also runs on the same images, batch 1, and the "side by side" speed-up divides
its time by ours, measured minutes apart on the same machine; the largest difference between
the two maps is printed below the table. The CPU model is printed above it.
"""

import argparse
import dataclasses
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from lmi_jax import lmi

AUTHORS_MS_PER_IMAGE = (3100.0, 3400.0)  # 128 x 128, 2 CPU cores, torch 2.13.
AUTHORS_SIZE = 128


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


def fastest_call(call, repeats: int) -> tuple[float, float, object]:
  """(wall s, process CPU s) of the least costly of `repeats` calls, after one warm-up, and
  what the warm-up returned."""
  output = call()
  times, cpu_times = [], []
  for _ in range(repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    call()
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  return min(times), min(cpu_times), output


def measure(cfg: lmi.LMIConfig, batch: int, size: int, repeats: int) -> dict:
  a = smooth_images(batch, size, 0)
  b = smooth_images(batch, size, 1)
  compiled = jax.jit(lambda x, y: lmi.cross_lmi(x, y, cfg)).lower(a, b).compile()
  memory = compiled.memory_analysis()
  peak = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
          + memory.output_size_in_bytes) if memory is not None else float("nan")
  seconds, cpu_seconds, output = fastest_call(lambda: jax.block_until_ready(compiled(a, b)),
                                              repeats)
  return {"ms_per_image": 1000 * seconds / batch,
          "cpu_ms_per_image": 1000 * cpu_seconds / batch,
          "mpix_per_s": batch * size * size / seconds / 1e6,
          "peak_mb": peak / 2 ** 20, "value": output.value}


def measure_torch(size: int, repeats: int, ours: jax.Array) -> tuple[float, float] | None:
  """ms per image of the authors' estimator in PyTorch (batch 1) and its largest difference
  from our map `ours`; None without PyTorch."""
  try:
    import authors_lmi_torch
  except ImportError:
    return None
  a, b = np.asarray(smooth_images(1, size, 0)), np.asarray(smooth_images(1, size, 1))
  seconds, _, theirs = fastest_call(lambda: authors_lmi_torch.cross_nmi(a, b), repeats)
  difference = np.max(np.abs(theirs - np.asarray(ours)))
  return 1000 * seconds, float(difference)


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as info:
      names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
  except OSError:
    names = []
  return names[0] if names else (platform.processor() or platform.machine())


def rows_to_run(quick: bool) -> list[tuple[str, lmi.LMIConfig, int, int]]:
  """(name, config, size, batch) per table row: every size, then patch sizes at 128."""
  default, authors = lmi.LMIConfig(), lmi.authors_preset(radius=1)
  rows = []
  for size in (128,) if quick else (64, 128, 256):
    for batch in (1, 8):
      rows.append(("authors preset", authors, size, batch))
      rows.append((f"default, k={default.patch_size}", default, size, batch))
  for k in (3, 9, 11):
    rows.append((f"default, k={k}", dataclasses.replace(default, patch_size=k), 128, 1))
  return rows


def recorded_columns(name: str, size: int, ms_per_image: float) -> tuple[str, str]:
  """Their recorded time and our speed-up over it, for their preset at their size."""
  if name != "authors preset" or size != AUTHORS_SIZE:
    return "", ""
  lo, hi = AUTHORS_MS_PER_IMAGE
  return f"{lo:.0f}-{hi:.0f}", f"{lo / ms_per_image:.0f}-{hi / ms_per_image:.0f}x"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="128x128 rows only")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--torch_repeats", type=int, default=3,
                      help="timed calls of the PyTorch estimator per row (seconds each)")
  args = parser.parse_args()

  print(f"cross_lmi on {cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, "
        f"jax {jax.__version__} ({jax.devices()[0].platform}), "
        "load average %.1f %.1f %.1f before\n" % os.getloadavg())
  print("| estimator | bins | k | r | size | batch | ms/image | CPU ms/image | Mpixel/s "
        "| peak MB | PyTorch, same estimator, ms/image | side by side | authors' code ms/image "
        "(recorded) | recorded speed-up |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  recorded, side_by_side, differences = [], [], []
  for name, cfg, size, batch in rows_to_run(args.quick):
    result = measure(cfg, batch, size, args.repeats)
    theirs, speedup = recorded_columns(name, size, result["ms_per_image"])
    if speedup:
      recorded.append(speedup)
    torch_ms, ratio = "", ""
    torch_result = (measure_torch(size, args.torch_repeats, result["value"])
                    if name == "authors preset" and batch == 1 else None)
    if torch_result is not None:
      torch_ms, ratio = f"{torch_result[0]:.0f}", f"{torch_result[0] / result['ms_per_image']:.1f}x"
      side_by_side.append(f"{ratio} at {size}x{size}")
      differences.append(torch_result[1])
    print(f"| {name} | {cfg.num_bins} | {cfg.patch_size} | {cfg.radius} | {size}x{size} "
          f"| {batch} | {result['ms_per_image']:.1f} | {result['cpu_ms_per_image']:.1f} "
          f"| {result['mpix_per_s']:.3f} | {result['peak_mb']:.0f} | {torch_ms} | {ratio} "
          f"| {theirs} | {speedup} |", flush=True)
  peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"\nAuthors' preset at {AUTHORS_SIZE}x{AUTHORS_SIZE}: {', '.join(recorded)} faster than "
        "their code's recorded time (batch 1, batch 8).")
  if side_by_side:
    print(f"Side by side with the same estimator in PyTorch: {', '.join(side_by_side)} "
          f"(batch 1); largest difference of the maps {max(differences):.1e}.")
  else:
    print("PyTorch is not installed: no side-by-side rows (pip install torch==2.13.0).")
  print(f"Process peak RSS over all rows: {peak_rss_mb:.0f} MB. "
        "Load average %.1f %.1f %.1f after." % os.getloadavg())


if __name__ == "__main__":
  main()
