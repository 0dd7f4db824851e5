"""The StyleGAN2-ADA inversion baseline: modulated convolution against NumPy, ADA's p,
the direction of the G and D steps, inversion of a generated latent, and load's checks.

Every network is the tiny config's 32 x 32 with a few channels.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from lmi_jax.baselines import common, stylegan
from lmi_jax.errors import InputError


def tiny_config(**overrides):
  """configs/tiny.py with a StyleGAN of 4-8 channels; overrides are stylegan.* keys."""
  config = tiny.get_config()
  sg = config.stylegan
  sg.z_dim, sg.w_dim, sg.mapping_layers = 8, 8, 1
  sg.channel_base, sg.channel_max = 128, 8
  sg.batch_size, sg.mbstd_group = 4, 2
  for key, value in overrides.items():
    sg[key] = value
  return config


def numpy_modulated_conv(x, weight, styles, eps=1e-8):
  """Brute force: each sample's own kernel w[..., i, o] * s[i], divided by its norm over
  (kh, kw, i), correlated with the zero-padded input."""
  n, h, w, _ = x.shape
  k = weight.shape[0]
  pad = k // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = np.zeros((n, h, w, weight.shape[-1]))
  for b in range(n):
    kernel = weight * styles[b][None, None, :, None]
    kernel = kernel / np.sqrt(np.sum(kernel ** 2, axis=(0, 1, 2), keepdims=True) + eps)
    for i in range(h):
      for j in range(w):
        out[b, i, j] = np.einsum("abi,abio->o", xp[b, i:i + k, j:j + k], kernel)
  return out


def test_modulated_conv_matches_numpy_and_keeps_unit_variance():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 6, 5))
  weight = rng.standard_normal((3, 3, 5, 4))
  styles = rng.uniform(0.2, 3.0, (2, 5))
  got = stylegan.modulated_conv(jnp.asarray(x, jnp.float32), jnp.asarray(weight, jnp.float32),
                                jnp.asarray(styles, jnp.float32), demodulate=True)
  np.testing.assert_allclose(got, numpy_modulated_conv(x, weight, styles), rtol=1e-4,
                             atol=1e-4)

  # Demodulation: unit-variance inputs give unit-variance outputs whatever the weights and
  # styles (measured away from the zero-padded border).
  x = rng.standard_normal((8, 40, 40, 32))
  weight = rng.standard_normal((3, 3, 32, 6)) * rng.uniform(0.1, 5.0, (1, 1, 32, 6))
  styles = rng.uniform(0.1, 4.0, (8, 32))
  y = np.asarray(stylegan.modulated_conv(jnp.asarray(x, jnp.float32),
                                         jnp.asarray(weight, jnp.float32),
                                         jnp.asarray(styles, jnp.float32), demodulate=True))
  variance = y[:, 1:-1, 1:-1].var(axis=(0, 1, 2))
  np.testing.assert_allclose(variance, 1.0, atol=0.06)
  # Without demodulation the variance follows the weights: the check above can fail.
  y_raw = np.asarray(stylegan.modulated_conv(jnp.asarray(x, jnp.float32),
                                             jnp.asarray(weight, jnp.float32),
                                             jnp.asarray(styles, jnp.float32), False))
  assert np.abs(y_raw[:, 1:-1, 1:-1].var(axis=(0, 1, 2)) - 1.0).max() > 1.0


def test_ada_p_rises_when_d_overfits_and_falls_otherwise():
  p = jnp.asarray(0.3)
  step = 8 * 4 / (100 * 1000.0)
  # D sure of every real (E[sign D(real)] = 1 > 0.6): overfitting, more augmentation.
  assert float(stylegan.ada_adjust(p, jnp.asarray(1.0), 32, 0.6, 100.0)) == pytest.approx(
      0.3 + step)
  assert float(stylegan.ada_adjust(p, jnp.asarray(0.2), 32, 0.6, 100.0)) == pytest.approx(
      0.3 - step)
  assert float(stylegan.ada_adjust(jnp.asarray(0.0), jnp.asarray(-1.0), 32, 0.6, 100.0)) == 0.0

  # The training loop feeds it D's signs on reals: after ada_interval steps of a D that
  # says "real" to everything p has risen, and it falls for a D that says "fake".
  config = tiny_config(ada_interval=2, pl_weight=0.0, r1_gamma=0.0)
  settings = stylegan.GanSettings.from_config(config.stylegan)
  zero = jnp.zeros((), jnp.float32)
  state = stylegan.GanState(step=jnp.asarray(0), key=None, g=None, d=None, g_ema=None,
                            g_opt=None, d_opt=None, w_avg=None, pl_mean=zero,
                            ada_p=jnp.asarray(0.5), ada_sum=zero, ada_count=zero, ada_rt=zero,
                            pl_penalty=zero, r1_penalty=zero)
  for sign in (1.0, -1.0):
    fake_steps = {"g": lambda s, i: (s, {}),
                  "d": lambda s, i, sign=sign: (s.replace(ada_sum=s.ada_sum + sign,
                                                          ada_count=s.ada_count + 1), {})}
    start = float(state.ada_p)
    for _ in range(2):
      state, metrics = stylegan.gan_iteration(fake_steps, state, None, settings,
                                              config.stylegan)
    assert np.sign(float(state.ada_p) - start) == sign
    assert float(metrics["ada_rt"]) == sign


def test_augment_is_identity_at_p0_and_differentiable():
  images = jax.random.uniform(common.fast_key(1), (6, 8, 8, 1))
  augment = jax.jit(jax.value_and_grad(lambda x, p, k: jnp.sum(stylegan.augment(x, p, k) ** 2)))
  value, grads = augment(images, jnp.asarray(0.0), common.fast_key(2))
  assert float(value) == pytest.approx(float(jnp.sum(images ** 2)), rel=1e-5)
  np.testing.assert_allclose(grads, 2 * images, rtol=1e-5)
  value, grads = augment(images, jnp.asarray(1.0), common.fast_key(3))
  assert np.isfinite(float(value)) and abs(float(value) - float(jnp.sum(images ** 2))) > 1e-3
  assert np.abs(np.asarray(grads)).sum() > 0


@pytest.fixture(scope="module")
def gan_setup():
  """(jitted phases, initial state, 4 training images in [-1, 1]) of the tiny GAN."""
  config = tiny_config(d_lr=0.002, g_lr=0.002)
  settings = stylegan.GanSettings.from_config(config.stylegan)
  nets = stylegan.build_nets(config)
  state = jax.jit(stylegan.create_gan_state, static_argnums=(0, 1))(
      nets, settings, common.fast_key(0))
  images = jax.random.uniform(common.fast_key(1), (4, 32, 32, 1)) * 2 - 1
  return stylegan.make_gan_steps(nets, settings), state, images


def repeated_losses(step, state, images, name, count=6):
  """The loss `name` reported by `count` calls of `step` from `state`. The phases draw their
  batch from the state's step, which only gan_iteration advances, so every call sees the same
  batch; each reports its loss before its update."""
  losses = []
  for _ in range(count):
    state, metrics = step(state, images)
    losses.append(float(metrics[name]))
  return losses


def test_d_step_lowers_the_discriminator_loss(gan_setup):
  steps, state, images = gan_setup
  losses = repeated_losses(steps["d"], state, images, "loss_d")
  assert losses[-1] < losses[0] - 0.05, losses


def test_g_step_lowers_the_generator_loss(gan_setup):
  steps, state, images = gan_setup
  # Against the untrained discriminator: a steady fall (measured 0.725 -> 0.690).
  losses = repeated_losses(steps["g"], state, images, "loss_g")
  assert np.all(np.diff(losses) < 0) and losses[-1] < losses[0] - 0.02, losses


def test_inversion_recovers_a_generated_latent():
  # Pixel loss only: the features of an untrained discriminator make the landscape of an
  # untrained generator rough (measured: stuck at ~4e-3 from the same start).
  config = tiny_config(inversion_lr=0.02, inversion_feature_weight=0.0,
                       inversion_log_every=300)
  nets = stylegan.build_nets(config)
  make = jax.jit(lambda k: {**stylegan.init_gan(nets, k),
                            "encoder": stylegan.init_encoder(nets, k)})
  initial = make(common.fast_key(0))
  # The encoder's head starts at zero, so the inversion starts at w_avg for every image.
  params = {"g": initial["g"], "d": initial["d"], "encoder": initial["encoder"],
            "w_avg": jnp.zeros((nets.w_dim,))}
  ws_true = 0.2 * jax.random.normal(common.fast_key(3), (3, nets.num_ws, nets.w_dim))
  render = jax.jit(lambda ws: stylegan.synthesize(nets, params["g"], ws, None))
  targets = (render(ws_true) + 1) / 2
  error = lambda ws: float(jnp.mean(jnp.square(render(ws) - (targets * 2 - 1))))
  start = error(jnp.zeros_like(ws_true))
  ws, images = stylegan.invert(config, params, np.asarray(targets), num_steps=300)
  final = error(jnp.asarray(ws))
  assert final < 0.01 * start and final < 5e-4, (start, final)
  np.testing.assert_allclose(images, np.clip(targets, 0, 1), atol=0.1)


def test_load_round_trip_and_rejects_missing_corrupt_and_misfit(tmp_path):
  config = tiny_config()
  nets = stylegan.build_nets(config)
  params = jax.jit(lambda k: {**stylegan.init_gan(nets, k), "w_avg": jnp.ones((nets.w_dim,)),
                               "encoder": stylegan.init_encoder(nets, k)})(common.fast_key(0))
  path = common.export(str(tmp_path), "stylegan", params, {"gan_steps": 0})
  loaded = stylegan.load(config, path)
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(params))

  with pytest.raises(InputError, match="missing.msgpack"):
    stylegan.load(config, str(tmp_path / "missing.msgpack"))
  corrupt = tmp_path / "corrupt.msgpack"
  corrupt.write_bytes(b"\x93not msgpack at all")
  with pytest.raises(InputError, match="corrupt.msgpack"):
    stylegan.load(config, str(corrupt))
  with pytest.raises(InputError, match="does not fit"):
    stylegan.load(tiny_config(channel_max=16), path)
  bigger = tiny_config()
  bigger.data.image_size = 64
  with pytest.raises(InputError, match="does not fit"):
    stylegan.load(bigger, path)
