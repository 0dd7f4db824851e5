"""Figures of translations: the paper's Fig. 2 layout and plain image grids, as PNGs."""

import io
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmi_jax.errors import InputError
from lmi_jax.files import atomic_write
from lmi_jax.metrics import as_mask, as_slices
from lmi_jax.segmentation import KMeansSegmenter, foreground_mask, segment


def _save_png(fig: Figure, path: str) -> None:
  """The figure as a PNG at `path`, written atomically."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  atomic_write(path, buffer.getvalue())


def plot_comparison(
    target: np.ndarray,
    source: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    segmenter: KMeansSegmenter,
    path: str,
    index: int = 0,
    mask: np.ndarray | None = None,
) -> None:
  """Saves a PNG like the paper's Fig. 2 for slice `index`.

  Rows: target, source, then each method; left the image, right its K-means
  segmentation. The source is segmented too, to show why translation is needed. All
  rows share the foreground of `evaluate_methods` without labels: `mask` if given, else
  the target above the background threshold.

  Args:
    target, source: (N, H, W, 1) slices in [0, 1].
    outputs: method name -> (N, H, W, 1) translations.
    segmenter: from `fit_kmeans`.
    path: the PNG file to write (its folder is created).
    index: which slice to show.
    mask: optional (N, H, W) bool foreground.
  """
  target_slices = as_slices("target", target)
  n = target_slices.shape[0]
  if not 0 <= index < n:
    raise InputError(f"plot_comparison: index {index} is outside the {n} slices; pass 0..{n - 1}.")
  # A list, not a dict: a method may itself be called "source" (the identity baseline).
  rows = [("target", target), ("source", source), *outputs.items()]
  for name, images in rows:
    if np.shape(images) != np.shape(target):
      raise InputError(f"{name}: shape {np.shape(images)} does not match the target's {np.shape(target)}.")
  if mask is None:
    foreground = foreground_mask(segmenter, np.asarray(target)[index:index + 1])
  else:
    foreground = as_mask("mask", mask, target_slices.shape)[index:index + 1]

  fig = Figure(figsize=(4.0, 2.0 * len(rows)), dpi=100)
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(rows), 2, squeeze=False)
  for (name, images), (ax_image, ax_seg) in zip(rows, axes):
    one = np.asarray(images)[index:index + 1]
    ax_image.imshow(one[0, ..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax_seg.imshow(segment(segmenter, one, foreground)[0], cmap="viridis", vmin=0, vmax=segmenter.k,
                  interpolation="nearest")
    ax_image.set_ylabel(name)
    for ax in (ax_image, ax_seg):
      ax.set_xticks([])
      ax.set_yticks([])
  axes[0, 0].set_title("image")
  axes[0, 1].set_title(f"K-means ({segmenter.k} classes)")
  fig.tight_layout()
  _save_png(fig, path)


def plot_rows(rows: Mapping[str, np.ndarray], path: str, max_columns: int = 8) -> None:
  """Saves a PNG grid: one row per entry of `rows`, one column per slice.

  Args:
    rows: name -> (N, H, W, 1) images in [0, 1], all with the same N (e.g. source,
      translation, target).
    path: the PNG file to write (its folder is created).
    max_columns: at most this many slices, the first ones.
  """
  columns = min(max_columns, min(len(v) for v in rows.values()))
  fig = Figure(figsize=(1.6 * columns, 1.6 * len(rows)), dpi=100)
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(rows), columns, squeeze=False)
  for (name, images), row in zip(rows.items(), axes):
    for j, ax in enumerate(row):
      ax.imshow(np.asarray(images)[j, ..., 0], cmap="gray", vmin=0.0, vmax=1.0,
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
    row[0].set_ylabel(name)
  fig.tight_layout()
  _save_png(fig, path)


def plot_qc(source: np.ndarray, brain: np.ndarray, translation: np.ndarray, labels: np.ndarray,
            spacing: np.ndarray, path: str, title: str = "") -> None:
  """The QC picture of one translated volume: axial, coronal and sagittal views (rows) through
  the brain's centre of the source, its brain mask, the translation and the segmentation.

  Args:
    source, translation: (X, Y, Z) canonical (RAS) float volumes on one grid.
    brain: (X, Y, Z) bool; labels: (X, Y, Z) int tissue classes (0 background).
    spacing: (3,) voxel sizes in mm, so each view has the head's true proportions.
  """
  centre = np.round(np.argwhere(brain).mean(0)).astype(int) if brain.any() else np.array(source.shape) // 2
  top = float(np.percentile(source[brain], 99.5)) if brain.any() else float(source.max())
  views = {  # name -> (cut of a volume, aspect of the shown image: row mm / column mm)
      "axial": (lambda v: np.rot90(v[:, :, centre[2]]), spacing[1] / spacing[0]),
      "coronal": (lambda v: np.rot90(v[:, centre[1], :]), spacing[2] / spacing[0]),
      "sagittal": (lambda v: np.rot90(v[centre[0], :, :]), spacing[2] / spacing[1]),
  }
  fig = Figure(figsize=(8.0, 6.4), dpi=100)
  FigureCanvasAgg(fig)
  axes = fig.subplots(3, 4, squeeze=False)
  for row, (name, (cut, aspect)) in zip(axes, views.items()):
    shown = cut(source) / max(top, np.finfo(np.float32).tiny)
    row[0].imshow(shown, cmap="gray", vmin=0, vmax=1, aspect=aspect)
    row[1].imshow(shown, cmap="gray", vmin=0, vmax=1, aspect=aspect)
    row[1].imshow(np.ma.masked_where(~cut(brain), cut(brain)), cmap="autumn", alpha=0.4, aspect=aspect)
    row[2].imshow(cut(translation), cmap="gray", vmin=0, vmax=1, aspect=aspect)
    row[3].imshow(cut(labels), cmap="viridis", vmin=0, vmax=max(int(labels.max()), 1),
                  interpolation="nearest", aspect=aspect)
    row[0].set_ylabel(name)
    for ax in row:
      ax.set_xticks([])
      ax.set_yticks([])
  for ax, heading in zip(axes[0], ("source", "brain mask", "translation", "segmentation")):
    ax.set_title(heading, fontsize=10)
  if title:
    fig.suptitle(title if len(title) < 90 else "..." + title[-87:], fontsize=9)
  fig.tight_layout()
  _save_png(fig, path)
