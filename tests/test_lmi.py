"""lmi_jax.lmi against a brute-force NumPy reference, and its documented properties."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import lmi_reference
from lmi_jax import lmi


def _random_images(seed: int, shape=(2, 9, 11)) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return (rng.random(shape + (1,)).astype(np.float32),
          rng.random(shape + (1,)).astype(np.float32))


def _structured_images(seed: int, shape=(2, 10, 9)) -> tuple[np.ndarray, np.ndarray]:
  """Smooth blobs with a step edge, and a nonlinear 'other contrast' of them plus noise."""
  rng = np.random.default_rng(seed)
  field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=(0, 2, 2))
  field = (field - field.min()) / (field.max() - field.min())
  field[:, :, : shape[2] // 2] += 0.5
  a = field / field.max()
  b = np.clip(1.0 - a ** 2 + 0.05 * rng.normal(size=shape), 0, 1)
  return a[..., None].astype(np.float32), b[..., None].astype(np.float32)


def _reference_maps(a: np.ndarray, b: np.ndarray, cfg: lmi.LMIConfig):
  values, shifts = [], []
  for ai, bi in zip(a[..., 0], b[..., 0]):
    v, s, _ = lmi_reference.lmi_maps(
        ai, bi, patch_size=cfg.patch_size, radius=cfg.radius, num_bins=cfg.num_bins,
        kernel_sigma=cfg.kernel_sigma, levels=cfg.levels, normalize_mode=cfg.normalize,
        p_lo=cfg.p_lo, p_hi=cfg.p_hi, nmi=cfg.nmi, padding=cfg.padding)
    values.append(v)
    shifts.append(s)
  return np.stack(values), np.stack(shifts)


# Every normalisation mode with k in {3, 5}, r in {0, 1, 2}, NMI on and off, every padding.
CASES = [
    ("none", 3, 0, True, "zero"),
    ("none", 5, 2, False, "reflect"),
    ("minmax", 3, 1, False, "edge"),
    ("minmax", 5, 0, True, "zero"),
    ("percentile", 3, 2, True, "reflect"),
    ("percentile", 5, 1, False, "edge"),
    ("rank", 3, 1, True, "reflect"),
    ("rank", 5, 2, True, "edge"),
    ("rank", 3, 0, False, "zero"),
]


@pytest.mark.parametrize("images", [_random_images, _structured_images])
@pytest.mark.parametrize("mode,k,r,nmi,padding", CASES)
def test_matches_brute_force(images, mode, k, r, nmi, padding):
  a, b = images(k * 10 + r)
  cfg = lmi.LMIConfig(patch_size=k, radius=r, num_bins=12, kernel_sigma=0.7,
                      normalize=mode, nmi=nmi, padding=padding, row_chunk=3)
  out = lmi.cross_lmi(jnp.asarray(a), jnp.asarray(b), cfg)
  ref_value, ref_shift = _reference_maps(a, b, cfg)
  np.testing.assert_allclose(np.asarray(out.value[..., 0]), ref_value, atol=1e-5, rtol=0)
  # Shifts can only differ where two shifts tie to within float32 rounding.
  all_values = np.stack([lmi_reference.lmi_maps(
      ai, bi, patch_size=k, radius=r, num_bins=12, kernel_sigma=0.7, levels=0,
      normalize_mode=mode, p_lo=cfg.p_lo, p_hi=cfg.p_hi, nmi=nmi, padding=padding)[2]
                         for ai, bi in zip(a[..., 0], b[..., 0])])
  ordered = np.sort(all_values, axis=1)
  gap = ordered[:, -1] - ordered[:, -2] if ordered.shape[1] > 1 else np.ones_like(ref_value)
  clear = gap > 1e-4
  assert clear.mean() > 0.5
  np.testing.assert_array_equal(np.asarray(out.shift)[clear], ref_shift[clear])


@pytest.mark.parametrize("k,padding,row_chunk", [(9, "zero", 3), (11, "reflect", 0)])
def test_large_patches_match_brute_force(k, padding, row_chunk):
  """Patches larger than any config's, in chunks of fewer rows than a patch (k=9) and in
  one chunk (k=11): the separable box sums of per-pixel products against patch loops."""
  a, b = _structured_images(k, (2, 16, 15))
  cfg = lmi.LMIConfig(patch_size=k, radius=1, num_bins=12, kernel_sigma=0.7,
                      normalize="minmax", nmi=True, padding=padding, row_chunk=row_chunk)
  out = lmi.cross_lmi(jnp.asarray(a), jnp.asarray(b), cfg)
  ref_value, _ = _reference_maps(a, b, cfg)
  np.testing.assert_allclose(np.asarray(out.value[..., 0]), ref_value, atol=1e-5, rtol=0)
  # The marginal side: self_lmi is the entropy of each patch's mean kernel vector.
  h = k // 2
  u = lmi_reference.pad(lmi_reference.normalize(a[0, ..., 0], "minmax", 1.0, 99.0), h, padding)
  centres = np.linspace(0.0, 1.0, cfg.num_bins)
  kernels = np.exp(-0.5 * ((u[..., None] - centres) / cfg.kernel_width) ** 2)
  expected = np.zeros(a.shape[1:3])
  for i, j in np.ndindex(*expected.shape):
    p = kernels[i:i + k, j:j + k].mean(axis=(0, 1))
    p = p / (p.sum() + 1e-10)
    expected[i, j] = -np.sum(p * np.log2(p + 1e-10))
  got = np.asarray(lmi.self_lmi(jnp.asarray(a), cfg)[0, ..., 0])
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("radius", [0, 1])
def test_authors_preset_matches_their_arithmetic(radius):
  """27 bins on 0..255, kernel 8 grey levels, truncation, NMI, zero padding (smooth images)."""
  rng = np.random.default_rng(radius)
  smooth = ndimage.gaussian_filter(rng.random((2, 12, 12)), sigma=(0, 1.5, 1.5))
  a = (smooth - smooth.min()) / np.ptp(smooth)
  b = np.clip(a[:, ::-1] * 0.7 + 0.2, 0, 1)
  cfg = lmi.authors_preset(radius)
  assert cfg.kernel_width == pytest.approx(8.0)
  out = lmi.cross_lmi(jnp.asarray(a[..., None], jnp.float32),
                      jnp.asarray(b[..., None], jnp.float32), cfg)
  ref_value, _ = _reference_maps(a[..., None].astype(np.float32),
                                 b[..., None].astype(np.float32), cfg)
  np.testing.assert_allclose(np.asarray(out.value[..., 0]), ref_value, atol=1e-5, rtol=0)


def test_one_patch_pair_by_hand():
  """A single 3x3 pair in a 3x3 image, centre pixel, no padding effects at r=0."""
  a = np.array([[0.1, 0.5, 0.9], [0.2, 0.6, 0.3], [0.7, 0.4, 0.8]], np.float32)
  b = np.array([[0.9, 0.1, 0.3], [0.2, 0.2, 0.6], [0.5, 0.5, 0.0]], np.float32)
  q_a, q_b = np.trunc(a.ravel() * 255), np.trunc(b.ravel() * 255)
  bins = np.linspace(0, 255, 27)
  k_a = np.exp(-0.5 * ((q_a[:, None] - bins) / 8) ** 2)
  k_b = np.exp(-0.5 * ((q_b[:, None] - bins) / 8) ** 2)
  p_a = k_a.mean(0) / (k_a.mean(0).sum() + 1e-10)
  p_b = k_b.mean(0) / (k_b.mean(0).sum() + 1e-10)
  joint = k_a.T @ k_b
  joint /= joint.sum() + 1e-10
  h = lambda p: -np.sum(p * np.log2(p + 1e-10))
  mi = h(p_a) + h(p_b) - h(joint)
  expected = 2 * (mi + 1e-10) / (h(p_a) + h(p_b) + 1e-10)
  out = lmi.cross_lmi(jnp.asarray(a)[None, ..., None], jnp.asarray(b)[None, ..., None],
                      lmi.authors_preset(radius=0))
  assert float(out.value[0, 1, 1, 0]) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("k", [3, 5])
def test_property1_self_bounds_cross(k):
  a, _ = _random_images(7, (3, 16, 16))
  rng = np.random.default_rng(8)
  b = rng.random(a.shape).astype(np.float32)
  cfg = lmi.LMIConfig(patch_size=k, radius=1, nmi=False)
  bound = lmi.self_lmi(jnp.asarray(a), cfg)
  for moving in (b, a[:, ::-1], np.roll(a, 1, axis=2)):
    cross = lmi.cross_lmi(jnp.asarray(a), jnp.asarray(moving), cfg).value
    assert np.all(np.asarray(bound) >= np.asarray(cross) - 1e-6)
  # The same image is the tightest match: its cross map is the largest of the three.
  cross_same = lmi.cross_lmi(jnp.asarray(a), jnp.asarray(a), cfg).value
  cross_other = lmi.cross_lmi(jnp.asarray(a), jnp.asarray(b), cfg).value
  assert float(jnp.mean(cross_same)) > float(jnp.mean(cross_other))


def test_rank_normalisation_invariant_to_monotone_maps():
  a, b = _structured_images(3, (2, 14, 12))
  cfg = lmi.LMIConfig(patch_size=3, radius=1, normalize="rank")
  base = lmi.cross_lmi(jnp.asarray(a), jnp.asarray(b), cfg)
  warped = np.exp(3.0 * a) - 0.5 * a  # strictly increasing on [0, 1]
  out = lmi.cross_lmi(jnp.asarray(warped.astype(np.float32)), jnp.asarray(b), cfg)
  np.testing.assert_allclose(np.asarray(out.value), np.asarray(base.value), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out.shift), np.asarray(base.shift))
  np.testing.assert_allclose(np.asarray(lmi.self_lmi(jnp.asarray(warped), cfg)),
                             np.asarray(lmi.self_lmi(jnp.asarray(a), cfg)), atol=1e-6)


def _texture(seed: int, size: int = 40) -> np.ndarray:
  rng = np.random.default_rng(seed)
  field = ndimage.gaussian_filter(rng.normal(size=(size, size)), 1.0)
  return ((field - field.min()) / np.ptp(field)).astype(np.float32)


def shift_recovery_rate(patch_size: int, seed: int = 0) -> float:
  """Fraction of interior pixels whose arg-max shift equals the true one, over all 9 shifts.

  The moving image is the reference shifted by s and in another 'contrast' (a
  non-monotone intensity map), as for PDw vs T1w.
  """
  a = _texture(seed)
  cfg = lmi.LMIConfig(patch_size=patch_size, radius=1)
  hits, total = 0, 0
  margin = patch_size
  for dy, dx in cfg.shifts:
    moved = np.roll(a, (dy, dx), axis=(0, 1))
    other = 1.0 - 4.0 * (moved - 0.5) ** 2
    out = lmi.cross_lmi(jnp.asarray(a)[None, ..., None], jnp.asarray(other)[None, ..., None], cfg)
    found = np.asarray(out.shift[0, margin:-margin, margin:-margin])
    hits += np.sum(np.all(found == (dy, dx), axis=-1))
    total += found.shape[0] * found.shape[1]
  return hits / total


@pytest.mark.parametrize("patch_size,minimum", [(3, 0.4), (5, 0.6)])
def test_shift_recovery_far_above_chance(patch_size, minimum):
  rate = shift_recovery_rate(patch_size)
  assert rate > minimum, rate  # chance is 1/9


def test_aligned_is_moving_at_argmax_shift():
  a = _texture(1, 20)
  moved = np.roll(a, (1, -1), axis=(0, 1))
  cfg = lmi.LMIConfig(patch_size=5, radius=1)
  out = lmi.cross_lmi(jnp.asarray(a)[None, ..., None], jnp.asarray(moved)[None, ..., None], cfg)
  aligned = np.asarray(lmi.align(jnp.asarray(moved)[None, ..., None], out.shift, cfg))
  shift = np.asarray(out.shift[0])
  padded = np.pad(moved, 1, mode="reflect")
  rows, cols = np.indices(a.shape)
  expected = padded[rows + 1 + shift[..., 0], cols + 1 + shift[..., 1]]
  np.testing.assert_allclose(aligned[0, ..., 0], expected)
  interior = (slice(3, -3), slice(3, -3))
  np.testing.assert_allclose(aligned[0, ..., 0][interior], a[interior])


def test_noise_lowers_cross_lmi():
  """x_t far outside [0, 1]: more noise means less shared information, down to the level
  of pure noise (the authors' estimator instead lets out-of-range values lose their
  kernel mass, so that noise can reach the maximum NMI)."""
  a = _texture(2, 32)[None, ..., None]
  rng = np.random.default_rng(0)
  noise = rng.normal(size=a.shape).astype(np.float32)
  cfg = lmi.LMIConfig(patch_size=5, radius=1, normalize="minmax")

  def mean_lmi(moving):
    return float(jnp.mean(lmi.cross_lmi(jnp.asarray(a), jnp.asarray(moving), cfg).value))

  means = [mean_lmi(a + s * noise) for s in (0.0, 0.1, 0.3, 1.0)]
  assert means == sorted(means, reverse=True), means
  floor = mean_lmi(noise)
  assert abs(mean_lmi(a + 10.0 * noise) - floor) < 0.02
  assert means[0] > floor + 0.05


def test_batch_jit_and_vmap_agree_with_single_images():
  a, b = _structured_images(5, (3, 12, 12))
  cfg = lmi.LMIConfig(patch_size=3, radius=1, features=("cross", "self", "self_parzen", "aligned"))
  batched = lmi.features(jnp.asarray(a), jnp.asarray(b), cfg)
  assert batched.shape == (3, 12, 12, 4)
  singles = [lmi.features(jnp.asarray(a[i:i + 1]), jnp.asarray(b[i:i + 1]), cfg) for i in range(3)]
  np.testing.assert_allclose(np.asarray(batched), np.concatenate(singles), atol=1e-6)
  vmapped = jax.vmap(lambda x, y: lmi.features(x[None], y[None], cfg)[0])(jnp.asarray(a), jnp.asarray(b))
  np.testing.assert_allclose(np.asarray(vmapped), np.asarray(batched), atol=1e-6)
  eager = jax.jit(lambda x, y: lmi.cross_lmi(x, y, cfg).value)(jnp.asarray(a), jnp.asarray(b))
  np.testing.assert_allclose(np.asarray(eager), np.asarray(batched[..., :1]), atol=1e-6)


def test_features_follow_config_order():
  a, b = _random_images(4, (1, 8, 8))
  cfg = lmi.LMIConfig(features=("self", "cross"))
  feats = lmi.features(jnp.asarray(a), jnp.asarray(b), cfg)
  np.testing.assert_allclose(np.asarray(feats[..., :1]), np.asarray(lmi.self_lmi(jnp.asarray(a), cfg)))
  np.testing.assert_allclose(np.asarray(feats[..., 1:]),
                             np.asarray(lmi.cross_lmi(jnp.asarray(a), jnp.asarray(b), cfg).value))


def test_mask_restricts_normalisation_statistics():
  a, b = _random_images(6, (1, 10, 10))
  mask = np.zeros(a.shape, bool)
  mask[:, 2:8, 2:8] = True
  cfg = lmi.LMIConfig(normalize="minmax")
  u = np.asarray(lmi.normalize(jnp.asarray(a), cfg, jnp.asarray(mask)))
  inside = a[mask]
  np.testing.assert_allclose(u[mask], (inside - inside.min()) / np.ptp(inside), atol=1e-6)
  assert np.all(u[~mask] == 0)
  for mode in ("minmax", "percentile", "rank"):
    ref = lmi_reference.normalize(a[0, ..., 0], mode, 1.0, 99.0, mask[0, ..., 0])
    got = lmi.normalize(jnp.asarray(a), dataclasses.replace(cfg, normalize=mode), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got[0, ..., 0]), ref, atol=1e-6)


def test_config_round_trip_and_errors():
  from configs import default
  cfg = lmi.from_config(default.get_config().lmi)
  assert cfg == lmi.LMIConfig()
  with pytest.raises(ValueError, match="patch_size"):
    lmi.LMIConfig(patch_size=4)
  with pytest.raises(ValueError, match="normalize"):
    lmi.LMIConfig(normalize="zscore")
  with pytest.raises(ValueError, match="features"):
    lmi.LMIConfig(features=("cross", "entropy"))
  with pytest.raises(ValueError, match="shapes differ"):
    lmi.cross_lmi(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 9, 1)), cfg)
