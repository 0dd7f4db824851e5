"""Embedded MR phantom: PDw, T1w and T2w brains built from the MNI152 2009 anatomy, no download.

Anatomy. nilearn ships the skull-stripped MNI152 2009c nonlinear symmetric T1 template and its
grey- and white-matter probability maps (1 mm, 197 x 233 x 189, RAS) inside its package. Tissue
fractions per voxel: GM and WM from the maps, restricted to the brain (template T1 > 0);
CSF = brain - GM - WM (clipped at 0); background = 1 - brain. Ground-truth labels are the
largest fraction: 0 background, 1 CSF, 2 GM, 3 WM.

Contrasts (1.5 T, IXI-like; IXI's Guy's Hospital protocol for PD/T2: dual spin echo,
TR 8178 ms, TE 8 ms and 100 ms). Partial-volume voxels mix the pure-tissue signals linearly.
  PDw, T2w: spin echo           S = PD (1 - exp(-TR/T1)) exp(-TE/T2),
                                TR = 8178 ms, TE = 8 ms (PDw) and 100 ms (T2w).
  T1w: inversion-prepared GRE   S = PD |1 - 2 exp(-TI/T1) + exp(-TS/T1)| exp(-TE/T2),
       (MPRAGE-like)            TI = 1000 ms, shot interval TS = 3000 ms, TE = 4.6 ms.
  IXI's T1w is a 3D gradient echo (TR 9.8 ms, TE 4.6 ms, flip 8 deg); as a plain spoiled echo
  with these values GM would be as bright as WM at 1.5 T, so the readout train is neglected
  and only the preparation is modelled; TI is chosen so WM > GM > CSF with CSF dark but not nulled.

Relaxation values at 1.5 T (T2 stands in for T2* in the short-TE gradient echo):
  tissue   PD (water fraction)   T1 (ms)   T2 (ms)
  CSF      1.00                  4000      2000
  GM       0.82                  1124        95
  WM       0.70                   884        72
Sources: GM/WM T1 and T2, Stanisz et al., Magn Reson Med 54:507 (2005). CSF T1 about 4 s,
Rooney et al., Magn Reson Med 57:308 (2007). CSF T2: the long-T2 limit (any value above about
0.5 s gives the same contrasts at these TEs). Water fractions: Neeb et al., NeuroImage 31:1156
(2006); Tofts (ed.), Quantitative MRI of the Brain (2003).

Pure-tissue signals with these values (PDw, T1w, T2w): CSF 0.87, 0.09, 0.83; GM 0.75, 0.19,
0.29; WM 0.63, 0.26, 0.17; so T1w WM > GM > CSF, PDw and T2w CSF > GM > WM.

Subjects. Each seed draws a small random rotation and scaling plus a smooth random displacement
field (the anatomy), per-tissue log-normal jitter of T1 and T2, a smooth multiplicative bias
field and a gain per acquisition (PDw and T2w share theirs, being two echoes of one scan), and
Rician noise. The output grid is isotropic with `phantom.voxel_mm` voxels, so the anatomy is
sampled once at the coarse resolution (the 1 mm maps are low-pass filtered first), and only
for the axial slab asked for: every random component is drawn so that a slab is exactly those
slices of the whole subject.
"""

import functools
import os
from collections.abc import Sequence

import ml_collections
import nibabel as nib
import numpy as np
from scipy import ndimage

CONTRASTS = ("PD", "T1", "T2")
# Rows CSF, GM, WM (label values 1, 2, 3; 0 is background): proton density (water fraction),
# T1 (ms), T2 (ms), at 1.5 T.
RELAXATION = np.array([[1.00, 4000.0, 2000.0], [0.82, 1124.0, 95.0], [0.70, 884.0, 72.0]])
SPIN_ECHO_TR = 8178.0
SPIN_ECHO_TE = {"PD": 8.0, "T2": 100.0}
T1W_TI, T1W_TS, T1W_TE = 1000.0, 3000.0, 4.6

_MARGIN_MM = 12.0  # Room around the brain for rotation, scaling and displacement.
_DEFORM_SPACING_MM = 30.0  # Feature size of the random displacement field.
_BIAS_SPACING_MM = 80.0  # Feature size of the bias field: a few smooth bumps per head.
_GAIN_SIGMA = 0.2  # Log-normal spread of the scanner gain.


def spin_echo(pd: np.ndarray, t1: np.ndarray, t2: np.ndarray, tr: float, te: float) -> np.ndarray:
  """Spin-echo magnitude PD (1 - exp(-TR/T1)) exp(-TE/T2); times in ms, any broadcastable shapes."""
  return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_gradient_echo(pd: np.ndarray, t1: np.ndarray, t2: np.ndarray, ti: float, ts: float,
                            te: float) -> np.ndarray:
  """Magnitude after inversion: PD |1 - 2 exp(-TI/T1) + exp(-TS/T1)| exp(-TE/T2); times in ms."""
  return pd * np.abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-ts / t1)) * np.exp(-te / t2)


def tissue_signals(relaxation: np.ndarray) -> dict[str, np.ndarray]:
  """Pure-tissue signal per contrast.

  Args:
    relaxation: (3, 3) rows CSF, GM, WM; columns PD, T1 (ms), T2 (ms).
  Returns:
    {"PD", "T1", "T2"} -> (3,) signals of CSF, GM, WM.
  """
  pd, t1, t2 = relaxation.T
  return {
      "PD": spin_echo(pd, t1, t2, SPIN_ECHO_TR, SPIN_ECHO_TE["PD"]),
      "T1": inversion_gradient_echo(pd, t1, t2, T1W_TI, T1W_TS, T1W_TE),
      "T2": spin_echo(pd, t1, t2, SPIN_ECHO_TR, SPIN_ECHO_TE["T2"]),
  }


def _mni_path(name: str) -> str:
  import nilearn  # Only its packaged data is used; the import finds the folder.
  return os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data",
                      f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")


@functools.lru_cache(maxsize=1)
def _mni_fractions() -> tuple[np.ndarray, np.ndarray]:
  """CSF, GM, WM fractions at 1 mm, cropped to the brain plus a margin.

  Returns:
    fractions (3, X, Y, Z) float32 (read-only) and its 4x4 RAS affine (mm).
  """
  t1 = nib.load(_mni_path("t1"))
  brain = np.asarray(t1.dataobj) > 0
  gm = np.asarray(nib.load(_mni_path("gm")).dataobj, np.float32) / 255.0 * brain
  wm = np.asarray(nib.load(_mni_path("wm")).dataobj, np.float32) / 255.0 * brain
  csf = np.clip(brain - gm - wm, 0.0, 1.0)
  margin = int(np.ceil(_MARGIN_MM))
  lo = np.maximum(np.argwhere(brain).min(0) - margin, 0)
  hi = np.minimum(np.argwhere(brain).max(0) + 1 + margin, brain.shape)
  box = tuple(slice(a, b) for a, b in zip(lo, hi))
  fractions = np.stack([csf[box], gm[box], wm[box]]).astype(np.float32)
  affine = t1.affine.copy()
  affine[:3, 3] += affine[:3, :3] @ lo
  fractions.flags.writeable = False
  return fractions, affine


@functools.lru_cache(maxsize=2)
def _prefiltered_fractions(voxel_mm: float) -> np.ndarray:
  """The 1 mm fractions low-pass filtered for sampling at voxel_mm, (3, X, Y, Z) read-only."""
  fractions, _ = _mni_fractions()
  sigma = 0.4 * voxel_mm if voxel_mm > 1.0 else 0.0  # Anti-aliasing for the coarser grid.
  out = np.stack([ndimage.gaussian_filter(f, sigma) for f in fractions]) if sigma else fractions
  out.flags.writeable = False
  return out


def phantom_grid(voxel_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
  """Shape and 4x4 RAS affine of the isotropic voxel_mm grid that phantom volumes live on."""
  fractions, affine = _mni_fractions()
  shape = tuple(int(np.ceil(n / voxel_mm)) for n in fractions.shape[1:])
  grid_affine = affine.copy()
  grid_affine[:3, :3] *= voxel_mm
  return shape, grid_affine


def _bumps(n: int, spacing: float) -> np.ndarray:
  """(n, m) Gaussian bumps `spacing` voxels apart, running past both ends so borders vary too."""
  centres = np.arange(-spacing, n + spacing, spacing)
  return np.exp(-0.5 * ((np.arange(n)[:, None] - centres) / spacing) ** 2)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], spacing: float,
                 z_range: tuple[int, int] | None = None) -> np.ndarray:
  """Random smooth field with zero mean and unit standard deviation over the whole grid.

  A tensor product of 1D Gaussian bumps `spacing` voxels apart with normal weights: separable,
  so it costs a few small matrix products instead of a 3D filter, and its mean and variance
  over the whole grid follow from the 1D bases, so a slab is exactly part of the whole field.

  Args:
    shape: (X, Y, Z) of the whole field.
    z_range: (z0, z1) to return only axial slices z0..z1-1; None for all.
  Returns:
    (X, Y, z1 - z0) float32.
  """
  bases = [_bumps(n, spacing) for n in shape]
  weights = rng.standard_normal([b.shape[1] for b in bases])
  mean = np.einsum("abc,a,b,c->", weights, *(b.mean(0) for b in bases))
  grams = [b.T @ b / len(b) for b in bases]
  square = np.einsum("abc,ABC,aA,bB,cC->", weights, weights, *grams, optimize=True)
  z0, z1 = z_range or (0, shape[2])
  bx, by, bz = (b.astype(np.float32) for b in bases)
  field = np.einsum("abc,xa,yb,zc->xyz", weights.astype(np.float32), bx, by, bz[z0:z1], optimize=True)
  return ((field - mean) / np.sqrt(square - mean * mean)).astype(np.float32)


def _rotation(angles: np.ndarray) -> np.ndarray:
  """3x3 rotation from angles (radians) about x, y and z, applied in that order."""
  cx, cy, cz = np.cos(angles)
  sx, sy, sz = np.sin(angles)
  rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return rz @ ry @ rx


def _warped_fractions(rng: np.random.Generator, p: ml_collections.ConfigDict,
                      z_range: tuple[int, int]) -> np.ndarray:
  """Subject anatomy: the MNI fractions under a random similarity plus smooth displacement.

  Returns:
    (3, X, Y, z1 - z0) float32 CSF, GM, WM fractions on slices z0..z1-1 of
    `phantom_grid(p.voxel_mm)`.
  """
  shape, _ = phantom_grid(p.voxel_mm)
  slab = (shape[0], shape[1], z_range[1] - z_range[0])
  fractions = _prefiltered_fractions(p.voxel_mm)
  linear = _rotation(np.deg2rad(p.rotation_deg) * rng.uniform(-1, 1, 3))
  linear = linear * np.exp(p.scale_jitter * rng.standard_normal())
  # Output voxel -> mm offset from the centre -> mm in the 1 mm anatomy grid (same origin).
  grid = np.indices(slab, dtype=np.float32).reshape(3, -1)
  grid[2] += z_range[0]
  grid *= np.float32(p.voxel_mm)
  centre = (np.array(fractions.shape[1:], np.float32) - 1) / 2
  coords = linear.astype(np.float32) @ (grid - centre[:, None]) + centre[:, None]
  spacing = _DEFORM_SPACING_MM / p.voxel_mm
  for axis in range(3):
    coords[axis] += p.deform_mm * smooth_field(rng, shape, spacing, z_range).reshape(-1)
  return np.stack([
      ndimage.map_coordinates(f, coords, order=1, mode="constant", cval=0.0).reshape(slab)
      for f in fractions
  ])


def _stream(seed: int, *key: int) -> np.random.Generator:
  """The independent random stream `key` of a subject."""
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _rician(signal: np.ndarray, sigma: float, seed: int, key: int, z0: int) -> np.ndarray:
  """Magnitude of the signal plus complex Gaussian noise of std sigma per channel.

  Each axial slice draws from its own stream (key, z), so a slab's noise is the whole volume's.

  Args:
    signal: (X, Y, Zs) slices z0..z0+Zs-1.
  """
  noise = np.stack([_stream(seed, key, z0 + k).standard_normal((2,) + signal.shape[:2], np.float32)
                    for k in range(signal.shape[2])], axis=-1)
  real = signal + sigma * noise[0]
  imag = sigma * noise[1]
  return np.sqrt(real * real + imag * imag)


def phantom_subject(seed: int, config: ml_collections.ConfigDict,
                    contrasts: Sequence[str] = CONTRASTS,
                    z_range: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
  """One synthetic subject, fully determined by `seed` and the `data` config section.

  Each random component has its own stream derived from `seed`, so leaving out a contrast
  changes nothing in the others, and a slab (`z_range`) is exactly those slices of the whole.

  Args:
    seed: subject seed (non-negative int).
    config: the `data` section; uses `phantom.*`.
    contrasts: which of "PD", "T1", "T2" to simulate (all by default).
    z_range: (z0, z1): simulate only axial slices z0..z1-1 of `phantom_grid` (cheaper); None: all.
  Returns:
    "PD", "T1", "T2" (those asked for): (X, Y, Z) float32 magnitude images in scanner units
    (not normalised), "labels": (X, Y, Z) int32 (0 background, 1 CSF, 2 GM, 3 WM),
    "affine": (4, 4) float64 RAS affine in mm of these volumes (of the slab, with z_range).
  """
  p = config.phantom
  names = ("anatomy", "relaxation", "T1 scan", "PD/T2 scan") + CONTRASTS
  shape, affine = phantom_grid(p.voxel_mm)
  z_range = z_range or (0, shape[2])
  if not 0 <= z_range[0] < z_range[1] <= shape[2]:
    raise ValueError(f"z_range={z_range} is not within the {shape[2]} axial slices of the phantom.")
  fractions = _warped_fractions(_stream(seed, names.index("anatomy")), p, z_range)
  relaxation = RELAXATION.copy()
  jitter = _stream(seed, names.index("relaxation")).standard_normal((3, 2))
  relaxation[:, 1:] *= np.exp(p.relax_jitter * jitter)
  signals = tissue_signals(relaxation)
  background = 1.0 - fractions.sum(0, keepdims=True)
  slab_affine = affine.copy()
  slab_affine[:3, 3] += affine[:3, 2] * z_range[0]
  out = {"labels": np.argmax(np.concatenate([background, fractions]), axis=0).astype(np.int32),
         "affine": slab_affine}
  spacing = _BIAS_SPACING_MM / p.voxel_mm
  # PDw and T2w are two echoes of one scan, so they share the coil's bias field and gain.
  for scan, echoes in (("T1 scan", ("T1",)), ("PD/T2 scan", ("PD", "T2"))):
    rng = _stream(seed, names.index(scan))
    bias = np.exp(p.bias * smooth_field(rng, shape, spacing, z_range))
    gain = np.exp(_GAIN_SIGMA * rng.standard_normal())
    for c in (c for c in echoes if c in contrasts):
      clean = np.tensordot(signals[c].astype(np.float32), fractions, axes=1)
      sigma = p.noise * gain * float(signals[c].max())
      out[c] = _rician(gain * bias * clean, sigma, seed, names.index(c), z_range[0]).astype(np.float32)
  return out
