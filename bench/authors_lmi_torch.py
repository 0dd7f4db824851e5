"""The authors' LMI estimator in PyTorch, for timing it beside ours on the same machine.

Written here from the facts in ../shared/docs/reference-implementation.md, not from their
code: 3 x 3 patches, intensities truncated to 256 grey levels, 27 Gaussian Parzen bins on
0..255 with a kernel width of 8 levels, zero padding, normalised MI, the best of the 9
shifts of radius 1. It keeps their layout, which sets their cost: every pixel's 9 x 27
kernel matrix is formed, and the joints of all 9 shifts are one product over the 9 samples
of each patch, 9 x H x W x 27 x 27 floats at once (430 MB per 128 x 128 image, as measured
for their code). One difference: the shifted windows are true shifts, as in
`lmi_jax.lmi.authors_preset`, not their partly mirrored copies; that costs the same and makes
the two implementations comparable number for number (`bench/lmi_bench.py` prints the
largest difference).

PyTorch is not in requirements.txt: `pip install torch==2.13.0` (the CPU build) adds these
rows to the bench.
"""

import numpy as np
import torch

EPS = 1e-10  # Their epsilon in every normalisation and logarithm.
BINS = 27
WIDTH = 8.0  # Kernel width in grey levels (their sigma = 2, w = 2 sigma^2).


def _entropy(p: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
  return -(p * torch.log2(p + EPS)).sum(dims)


def cross_nmi(reference: np.ndarray, moving: np.ndarray) -> np.ndarray:
  """The best NMI over 9 shifts per pixel: (B, H, W, 1) images in [0, 1] -> (B, H, W, 1)."""
  with torch.no_grad():
    a = torch.from_numpy(np.array(reference[..., 0], np.float32))[:, None]
    b = torch.from_numpy(np.array(moving[..., 0], np.float32))[:, None]
    batch, _, height, width = a.shape
    levels_a = (a.clamp(0, 1) * 255).int().float()
    levels_b = (b.clamp(0, 1) * 255).int().float()
    patches_a = torch.nn.functional.unfold(levels_a, 3, padding=1)  # (B, 9, HW)
    padded_b = torch.nn.functional.pad(levels_b, (2, 2, 2, 2))
    patches_b = torch.stack([
        torch.nn.functional.unfold(padded_b[..., 1 + dy:3 + dy + height, 1 + dx:3 + dx + width], 3)
        for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 1)  # (B, 9 shifts, 9, HW)
    centres = torch.linspace(0, 255, BINS)
    kernel = lambda q: torch.exp(-0.5 * ((q[..., None] - centres) / WIDTH) ** 2)
    k_a = kernel(patches_a.transpose(1, 2))  # (B, HW, 9, 27)
    k_b = kernel(patches_b.transpose(2, 3))  # (B, S, HW, 9, 27)
    p_a = k_a.mean(2)
    p_b = k_b.mean(3)
    joint = torch.einsum("bpna,bspnc->bspac", k_a, k_b)  # (B, S, HW, 27, 27)
    h_a = _entropy(p_a / (p_a.sum(-1, keepdim=True) + EPS), (-1,))[:, None]
    h_b = _entropy(p_b / (p_b.sum(-1, keepdim=True) + EPS), (-1,))
    h_ab = _entropy(joint / (joint.sum((-2, -1), keepdim=True) + EPS), (-2, -1))
    nmi = 2 * (h_a + h_b - h_ab + EPS) / (h_a + h_b + EPS)
    return nmi.max(1).values.reshape(batch, height, width, 1).numpy()
