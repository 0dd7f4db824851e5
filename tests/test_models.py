"""NCSN++ over its options (output shape, parameter count against the architecture's own
formula), its behaviour (noise-level conditioning, translation equivariance), FIR resampling
against a NumPy upfirdn, the score wrapper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, tiny
from lmi_jax.errors import InputError
from lmi_jax.models import (NCSNpp, count_params, create_model, init_variables, layers,
                            noise_labels, score_fn)
from lmi_jax.sde import VESDE, VPSDE

SMALL = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))


def _traced(model, size, in_channels, batch=2):
  """Traces init and apply without running them (every option's code path, no compile):
  the output's shape and the number of parameters."""
  variables = jax.eval_shape(lambda k: init_variables(model, k, size, in_channels),
                             jax.random.key(0))
  out = jax.eval_shape(lambda v, x, s: model.apply(v, x, s, train=False), variables,
                       jax.ShapeDtypeStruct((batch, size, size, in_channels), jnp.float32),
                       jax.ShapeDtypeStruct((batch,), jnp.float32))
  return out.shape, count_params(variables)


def _output_shape(model, size, in_channels, batch=2):
  return _traced(model, size, in_channels, batch)[0]


def expected_params(size: int, in_ch: int, nf=64, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                    attn_resolutions=(16,), mid_attention=True, resblock_type="biggan",
                    resamp_with_conv=True, progressive="output_skip", progressive_input="input_skip",
                    progressive_combine="sum", embedding_type="fourier", conditional=True,
                    out_channels=1, **_) -> int:
  """Parameters of NCSN++ (Song et al. 2021) counted layer by layer from the architecture,
  walking its channel bookkeeping: a k x k conv has k^2 Cin Cout + Cout, a dense layer
  In Out + Out, a GroupNorm 2 C, the Fourier embedding nf frequencies; a residual block is
  GN-conv3-(time dense)-GN-conv3 with a 1x1 shortcut where channels change or it resamples;
  attention is GN and four C x C dense layers. Options without parameters (FIR taps, skip
  rescaling, dropout) do not enter."""
  conv = lambda cin, cout, k=3: k * k * cin * cout + cout
  dense = lambda n_in, n_out: n_in * n_out + n_out
  temb = 4 * nf if conditional else 0
  total = 0
  if conditional:
    fourier = embedding_type == "fourier"
    total += (nf if fourier else 0) + dense(2 * nf if fourier else nf, temb) + dense(temb, temb)

  def res(cin, cout, resamples=False):
    shortcut = conv(cin, cout, 1) if cin != cout or resamples else 0
    return 2 * cin + conv(cin, cout) + (dense(temb, cout) if temb else 0) + 2 * cout + \
        conv(cout, cout) + shortcut

  attn = lambda c: 2 * c + 4 * dense(c, c)
  total += conv(in_ch, nf)
  skips, h, resolution, pyramid = [nf], nf, size, in_ch
  for level, mult in enumerate(ch_mult):
    for _ in range(num_res_blocks):
      total += res(h, nf * mult)
      h = nf * mult
      total += attn(h) if resolution in attn_resolutions else 0
      skips.append(h)
    if level == len(ch_mult) - 1:
      continue
    if resblock_type == "ddpm":
      total += conv(h, h) if resamp_with_conv else 0
    else:
      total += res(h, h, resamples=True)
    resolution //= 2
    if progressive_input == "input_skip":
      total += conv(pyramid, h, 1)
      h = h if progressive_combine == "sum" else 2 * h
    elif progressive_input == "residual":
      total += conv(pyramid, h)
      pyramid = h
    skips.append(h)
  total += 2 * res(h, h) + (attn(h) if mid_attention else 0)
  pyramid = None
  for level in reversed(range(len(ch_mult))):
    for _ in range(num_res_blocks + 1):
      total += res(h + skips.pop(), nf * ch_mult[level])
      h = nf * ch_mult[level]
    total += attn(h) if resolution in attn_resolutions else 0
    if progressive == "output_skip":
      total += 2 * h + conv(h, out_channels)
    elif progressive == "residual":
      total += 2 * h + conv(h, h) if pyramid is None else conv(pyramid, h)
      pyramid = h
    if level:
      if resblock_type == "ddpm":
        total += conv(h, h) if resamp_with_conv else 0
      else:
        total += res(h, h, resamples=True)
      resolution *= 2
  assert not skips
  return total + (0 if progressive == "output_skip" else 2 * h + conv(h, out_channels))


@pytest.mark.parametrize("options", [
    dict(),
    dict(resblock_type="ddpm"),
    dict(resblock_type="ddpm", resamp_with_conv=False, fir=False),
    dict(fir=False, embedding_type="positional"),
    dict(progressive="none", progressive_input="residual"),
    dict(progressive="residual", progressive_input="residual", skip_rescale=False),
    dict(progressive_input="input_skip", progressive_combine="cat", attn_resolutions=(),
         mid_attention=False),
    dict(resblock_type="ddpm", progressive="residual", progressive_input="input_skip",
         conditional=False),
    dict(ch_mult=(1, 2, 2), attn_resolutions=(8, 4), fir_kernel=(1, 2, 1)),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
@pytest.mark.parametrize("num_features", [0, 2, 3])
def test_output_is_the_score_of_x_alone(options, num_features):
  """Every option builds a network whose output is one channel (the score of x_t) whatever
  the feature channels, with exactly the parameters its architecture has
  (`expected_params`): a layer missing, doubled or of the wrong width changes the count."""
  model = NCSNpp(**{**SMALL, **options})
  shape, params = _traced(model, 16, 1 + num_features)
  assert shape == (2, 16, 16, 1)
  assert params == expected_params(16, 1 + num_features, **{**SMALL, **options})


def _upfirdn_reference(x, taps, up, down, pad0, pad1):
  """upfirdn on one (H, W) plane, from its definition: zero-stuff, pad, convolve, subsample."""
  k = np.outer(taps, taps)
  h, w = x.shape
  stuffed = np.zeros((h * up, w * up))
  stuffed[::up, ::up] = x
  padded = np.pad(stuffed, ((pad0, pad1), (pad0, pad1)))
  kh = k.shape[0]
  out = np.zeros((padded.shape[0] - kh + 1, padded.shape[1] - kh + 1))
  for i in range(out.shape[0]):
    for j in range(out.shape[1]):
      out[i, j] = np.sum(padded[i:i + kh, j:j + kh] * k[::-1, ::-1])
  return out[::down, ::down]


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 1), (1, 4, 6, 4, 1)])
def test_fir_resampling_matches_upfirdn(taps):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  p = len(taps) - 2
  up = layers.upsample(jnp.asarray(x), True, taps)
  down = layers.downsample(jnp.asarray(x), True, taps)
  assert up.shape == (2, 16, 16, 3) and down.shape == (2, 4, 4, 3)
  for b in range(2):
    for c in range(3):
      want_up = _upfirdn_reference(x[b, :, :, c], np.asarray(taps) * 2 / np.sum(taps), 2, 1,
                                   (p + 1) // 2 + 1, p // 2)
      want_down = _upfirdn_reference(x[b, :, :, c], np.asarray(taps) / np.sum(taps), 1, 2,
                                     (p + 1) // 2, p // 2)
      np.testing.assert_allclose(up[b, :, :, c], want_up, atol=1e-5)
      np.testing.assert_allclose(down[b, :, :, c], want_down, atol=1e-5)
  # Interpolation keeps a constant image constant away from the border.
  const = layers.upsample(jnp.ones((1, 8, 8, 1)), True, taps)
  np.testing.assert_allclose(const[0, 4:-4, 4:-4, 0], 1.0, rtol=1e-6)


def test_nearest_and_mean_resampling():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_array_equal(layers.upsample(x, False, ())[0, :2, :2, 0], 0.0)
  np.testing.assert_allclose(layers.downsample(x, False, ())[0, 0, 0, 0], (0 + 1 + 4 + 5) / 4)


def test_authors_size_parameter_count():
  """nf 64, ch_mult (1,2,2,2), 2 blocks, attention at 16, 128x128, [x_t, cross, self]: the
  count is the architecture's (`expected_params`), to the parameter. (The authors' DDPM UNet
  of the same width and depth has 8.95M; the DDPM-block variant here has 8.84M.)"""
  config = default.get_config().model
  for resblock_type in ("biggan", "ddpm"):
    config.resblock_type = resblock_type
    model = create_model(config)
    count = count_params(jax.eval_shape(lambda k: init_variables(model, k, 128, 3),
                                        jax.random.key(0)))
    assert count == expected_params(128, 3, **config)


def test_tiny_config_builds():
  config = tiny.get_config()
  model = create_model(config.model)
  size = config.data.image_size
  assert _traced(model, size, 3) == ((2, size, size, 1), expected_params(size, 3, **config.model))


def test_bad_options_name_the_key():
  config = default.get_config().model
  config.progressive = "outputskip"
  with pytest.raises(InputError, match="model.progressive"):
    create_model(config)
  with pytest.raises(InputError, match="data.image_size"):
    _output_shape(NCSNpp(**{**SMALL, "ch_mult": (1, 2, 2, 2)}), 12, 3)
  config = default.get_config().model
  config.name = "unet"
  with pytest.raises(InputError, match="model.name"):
    create_model(config)


@pytest.fixture(scope="module")
def small_model():
  """A small NCSN++ with dropout and random variables of init's structure.

  Random draws stand in for Flax's initialisers, whose compilation would take most of this
  file's time; they also make the output layers non-zero, so the output depends on every input.
  """
  model = NCSNpp(**SMALL, dropout=0.5)
  shapes = jax.eval_shape(lambda k: init_variables(model, k, 16, 3), jax.random.key(0))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)
  return model, variables


def test_forward_pass(small_model):
  model, variables = small_model
  apply = jax.jit(lambda v, x, s, k, train: model.apply(
      v, x, s, train=train, rngs={"dropout": k}), static_argnums=4)
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  s = jnp.array([-2.0, 1.0])
  eval_a = apply(variables, x, s, jax.random.key(2), False)
  eval_b = apply(variables, x, s, jax.random.key(3), False)
  assert eval_a.shape == (2, 16, 16, 1) and np.all(np.isfinite(eval_a))
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = apply(variables, x, s, jax.random.key(2), True)
  train_b = apply(variables, x, s, jax.random.key(3), True)
  assert not np.allclose(train_a, train_b)
  # The noise label and the feature channels reach the output.
  assert not np.allclose(eval_a, apply(variables, x, s + 1.0, jax.random.key(2), False))
  x2 = x.at[..., 1:].set(0.0)
  assert not np.allclose(eval_a, apply(variables, x2, s, jax.random.key(2), False))


def test_fully_convolutional_network_is_translation_equivariant():
  """One level (no resampling), no attention, no time embedding: the network is a stack of
  3 x 3 convolutions and GroupNorms, so a pattern moved on an empty background gives the
  same output moved, except within its receptive field (11 convolutions: 11 pixels) of the
  border. GroupNorm's statistics are the same for both: the pattern's field and the border's
  never meet here. Without the time embedding (conditional=False) the noise label is not
  read at all."""
  model = NCSNpp(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), mid_attention=False,
                 conditional=False, dropout=0.0)
  size, shift = 64, (3, -5)
  shapes = jax.eval_shape(lambda k: init_variables(model, k, size, 3), jax.random.key(0))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)
  x = np.zeros((1, size, size, 3), np.float32)
  x[0, 28:36, 28:36] = rng.uniform(size=(8, 8, 3))
  both = np.concatenate([x, np.roll(x, shift, (1, 2))])
  apply = jax.jit(lambda v, x, s: model.apply(v, x, s, train=False))
  out = np.asarray(apply(variables, both, jnp.array([-2.0, -2.0])))
  border = 11 + max(map(abs, shift))
  inside = (slice(border, -border),) * 2
  moved = np.roll(out[0], shift, (0, 1))
  assert np.abs(out[0] - out[0].mean()).max() > 0.5  # The pattern shows in the output.
  assert np.abs(out[1] - out[0])[inside].max() > 0.5  # ... and the pattern moved.
  np.testing.assert_allclose(out[1][inside], moved[inside], atol=1e-5)
  np.testing.assert_array_equal(apply(variables, both, jnp.array([1.0, 3.0])), out)


def test_noise_labels():
  t = jnp.array([0.1, 0.5])
  ve = VESDE(0.01, 50.0)
  np.testing.assert_allclose(noise_labels("fourier", ve, t), np.log(ve.sigma(t)), rtol=1e-5)
  np.testing.assert_allclose(noise_labels("positional", VPSDE(), t), 999.0 * t)


@pytest.mark.parametrize("sde", [VESDE(0.01, 50.0), VPSDE()], ids=["ve", "vp"])
def test_score_fn_feeds_the_network(small_model, sde):
  model, variables = small_model
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1))
  features = jax.random.uniform(jax.random.key(2), (2, 16, 16, 2))
  t = jnp.array([0.2, 0.7])

  @jax.jit
  def outputs(variables, x, features, t):
    raw = model.apply(variables, jnp.concatenate([2 * x - 1, features], -1),
                      jnp.log(sde.mean_std(t)[1]), train=False)
    unscaled = score_fn(model, variables, sde, x, features, t, feeding="raw")
    scaled = score_fn(model, variables, sde, x, features, t, feeding="sigma")
    return raw, unscaled, scaled

  raw, unscaled, scaled = outputs(variables, x, features, t)
  np.testing.assert_allclose(unscaled, raw, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(scaled, raw / sde.mean_std(t)[1][:, None, None, None],
                             rtol=1e-5, atol=1e-6)


class GaussianOptimum:
  """Stands in for a network trained to the optimum on data x0 ~ N(mu, s^2) per pixel: it
  returns the F for which EDM's D = c_skip y + c_out F is the exact posterior mean of y_0
  given y (y = 2 x / alpha - 1, noise level sigma_y = 2 std / alpha). The coefficients are
  written out from Karras et al. (2022), Table 1, with sigma_data = 0.5."""

  embedding_type = "positional"

  def __init__(self, sde, mu, s):
    self.sde, self.mu, self.s = sde, mu, s

  def apply(self, variables, inputs, labels, train, rngs):
    del variables, train, rngs
    alpha, std = (np.asarray(v, np.float64)[:, None, None, None]
                  for v in self.sde.mean_std(labels / 999.0))
    sigma_y, sd = 2 * std / alpha, 0.5
    var = sigma_y**2 + sd**2
    y = np.asarray(inputs[..., :1], np.float64) * np.sqrt(var)  # c_in = 1 / sqrt(var)
    mean_y, var_y = 2 * self.mu - 1, 4 * self.s**2
    posterior = mean_y + var_y / (var_y + sigma_y**2) * (y - mean_y)
    c_skip, c_out = sd**2 / var, sigma_y * sd / np.sqrt(var)
    return jnp.asarray((posterior - c_skip * y) / c_out, jnp.float32)


@pytest.mark.parametrize("sde", [VESDE(0.01, 50.0), VPSDE()], ids=["ve", "vp"])
def test_edm_feeding_of_the_optimal_denoiser_is_the_exact_gaussian_score(sde):
  """x0 ~ N(mu, s^2): x_t ~ N(alpha mu, alpha^2 s^2 + std^2), whose score is
  -(x - alpha mu) / (alpha^2 s^2 + std^2); the edm feeding of the optimal D must give it."""
  mu, s = 0.4, 0.2
  t = jnp.array([0.02, 0.3, 0.7, 0.98])
  alpha, std = (np.asarray(v, np.float64)[:, None, None, None] for v in sde.mean_std(t))
  z = np.random.default_rng(0).normal(size=(4, 6, 6, 2))
  x = alpha * (mu + s * z[..., :1]) + std * z[..., 1:]
  features = jnp.zeros((4, 6, 6, 2))
  score = score_fn(GaussianOptimum(sde, mu, s), {}, sde, jnp.asarray(x, jnp.float32),
                   features, t, feeding="edm")
  exact = -(x - alpha * mu) / (alpha**2 * s**2 + std**2)
  np.testing.assert_allclose(np.asarray(score), exact, rtol=2e-3,
                             atol=2e-4 * np.abs(exact).max())
  # The sigma feeding of the same output is not the score: the test tells the feedings apart.
  wrong = score_fn(GaussianOptimum(sde, mu, s), {}, sde, jnp.asarray(x, jnp.float32),
                   features, t, feeding="sigma")
  assert not np.allclose(np.asarray(wrong), exact, rtol=0.1)
