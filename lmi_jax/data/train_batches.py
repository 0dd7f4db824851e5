"""The training input pipeline on the host: each step's global batch (rows, flips and crops
drawn from (seed, step) alone, so every host draws the same batch and a resumed run draws what
the uninterrupted run would have), split into this host's share per local device."""

from typing import Iterator

import numpy as np


def global_batch(seed: int, step: int, num_examples: int, batch_size: int,
                 hflip: bool) -> tuple[np.ndarray, np.ndarray]:
  """Rows of the training set (batch_size,) and horizontal flips (batch_size,) bool of a step.

  A function of (seed, step) alone, so every host draws the same global batch and a
  resumed run draws what the uninterrupted run would have.
  """
  rng = np.random.default_rng([seed, step])
  rows = rng.choice(num_examples, batch_size, replace=num_examples < batch_size)
  flips = rng.random(batch_size) < 0.5 if hflip else np.zeros(batch_size, bool)
  return rows, flips


def brain_crops(images: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  """(B, size, size, C) crops of (B, H, W, C) images, each centred (as far as the canvas
  allows) on a pixel drawn uniformly from its brain (non-zero pixels; anywhere if none), so
  crops hold tissue in proportion to where it is."""
  height, width = images.shape[1:3]
  out = np.empty((len(images), size, size, images.shape[3]), images.dtype)
  for n, image in enumerate(images):
    inside = np.flatnonzero(image[..., 0] > 0)
    centre = rng.choice(inside) if len(inside) else rng.integers(height * width)
    y, x = divmod(int(centre), width)
    top = int(np.clip(y - size // 2, 0, height - size))
    left = int(np.clip(x - size // 2, 0, width - size))
    out[n] = image[top:top + size, left:left + size]
  return out


def host_batches(images: np.ndarray, seed: int, start_step: int, batch_size: int, hflip: bool,
                 process_index: int, process_count: int, local_devices: int,
                 crop_size: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """This host's share of every global batch from start_step on, split per local device.

  Args:
    images: (N, H, W, 1) float32 training slices.
    crop_size: >0: each slice is replaced by a `brain_crops` crop of this size, drawn from
      (seed, step) alone like the batch.
  Yields:
    "image" (local_devices, b, S, S, 1), S = crop_size or H = W, and "index"
    (local_devices, b) int32, the rows of the global batch they hold;
    b = batch_size / (process_count * local_devices).
  """
  per_host = batch_size // process_count
  own = np.arange(process_index * per_host, (process_index + 1) * per_host)
  step = start_step
  while True:
    rows, flips = global_batch(seed, step, len(images), batch_size, hflip)
    x = images[rows[own]]
    if crop_size:
      x = brain_crops(images[rows], np.random.default_rng([seed, step, 1]), crop_size)[own]
    x = np.where(flips[own, None, None, None], x[:, :, ::-1], x)
    yield {"image": x.reshape(local_devices, -1, *x.shape[1:]),
           "index": own.astype(np.int32).reshape(local_devices, -1)}
    step += 1
