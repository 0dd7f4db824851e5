"""Brute-force NumPy local mutual information: explicit loops over pixels and shifts.

Independent of `lmi_jax.lmi` (no shared code): it follows the formula literally, one
patch pair at a time, so the fast JAX implementation can be checked against it.
"""

import numpy as np
from scipy import stats

EPS = 1e-10


def normalize(x: np.ndarray, mode: str, p_lo: float, p_hi: float,
              mask: np.ndarray | None = None) -> np.ndarray:
  """One (H, W) image to [0, 1]; pixels outside `mask` become 0."""
  x = x.astype(np.float64)
  m = np.ones(x.shape, bool) if mask is None else mask.astype(bool)
  v = x[m]
  if mode == "none":
    out = np.clip(x, 0.0, 1.0)
  elif mode == "minmax":
    lo, hi = v.min(), v.max()
    out = np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
  elif mode == "percentile":
    lo, hi = np.percentile(v, [p_lo, p_hi])
    out = np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
  elif mode == "rank":
    out = np.zeros_like(x)
    ranks = stats.rankdata(v, method="average")
    out[m] = (ranks - 1) / max(v.size - 1, 1)
  else:
    raise ValueError(mode)
  return np.where(m, out, 0.0).astype(np.float32)


def pad(u: np.ndarray, width: int, mode: str) -> np.ndarray:
  np_mode = {"zero": "constant", "edge": "edge", "reflect": "reflect"}[mode]
  return np.pad(u, width, mode=np_mode)


def patch_mi(pa: np.ndarray, pb: np.ndarray, num_bins: int, kernel_sigma: float,
             levels: int, nmi: bool) -> float:
  """MI (or NMI) of two patches of equal size, values in [0, 1], float32 arithmetic."""
  top = float(levels) if levels > 0 else 1.0
  if levels > 0:
    qa = np.trunc(pa.ravel().astype(np.float32) * np.float32(levels))
    qb = np.trunc(pb.ravel().astype(np.float32) * np.float32(levels))
  else:
    qa, qb = pa.ravel().astype(np.float32), pb.ravel().astype(np.float32)
  bins = np.linspace(0.0, top, num_bins, dtype=np.float32)
  width = np.float32(kernel_sigma * top / (num_bins - 1))
  ka = np.exp(np.float32(-0.5) * ((qa[:, None] - bins[None, :]) / width) ** 2)
  kb = np.exp(np.float32(-0.5) * ((qb[:, None] - bins[None, :]) / width) ** 2)

  def entropy(p):
    return -np.sum(p * np.log2(p + np.float32(EPS)))

  ma, mb = ka.mean(0), kb.mean(0)
  ma = ma / (ma.sum() + np.float32(EPS))
  mb = mb / (mb.sum() + np.float32(EPS))
  joint = ka.T @ kb
  joint = joint / (joint.sum() + np.float32(EPS))
  ha, hb, hab = entropy(ma), entropy(mb), entropy(joint)
  mi = ha + hb - hab
  if nmi:
    return float(2 * (mi + EPS) / (ha + hb + EPS))
  return float(mi)


def shifts(radius: int) -> list[tuple[int, int]]:
  """(0, 0) first, so that ties resolve to no shift; then raster order."""
  rest = [(dy, dx) for dy in range(-radius, radius + 1)
          for dx in range(-radius, radius + 1) if (dy, dx) != (0, 0)]
  return [(0, 0)] + rest


def lmi_maps(a: np.ndarray, b: np.ndarray, *, patch_size: int, radius: int,
             num_bins: int, kernel_sigma: float, levels: int, normalize_mode: str,
             p_lo: float, p_hi: float, nmi: bool, padding: str,
             mask: np.ndarray | None = None):
  """Cross LMI of one (H, W) pair: (value (H,W), shift (H,W,2), all values (S,H,W))."""
  h = patch_size // 2
  w = h + radius
  ua = pad(normalize(a, normalize_mode, p_lo, p_hi, mask), w, padding)
  ub = pad(normalize(b, normalize_mode, p_lo, p_hi, mask), w, padding)
  offsets = shifts(radius)
  rows, cols = a.shape
  values = np.zeros((len(offsets), rows, cols))
  for i in range(rows):
    for j in range(cols):
      ci, cj = i + w, j + w
      patch_a = ua[ci - h:ci + h + 1, cj - h:cj + h + 1]
      for n, (dy, dx) in enumerate(offsets):
        patch_b = ub[ci + dy - h:ci + dy + h + 1, cj + dx - h:cj + dx + h + 1]
        values[n, i, j] = patch_mi(patch_a, patch_b, num_bins, kernel_sigma, levels, nmi)
  best = values.argmax(0)
  shift = np.array(offsets)[best]
  return values.max(0), shift, values
