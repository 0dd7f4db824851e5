"""The StyleGAN2-ADA inversion baseline: modulated convolution against NumPy, ADA's p, the
direction of the G and D steps, what each training phase updates and when the lazy ones run,
inversion of a generated latent, and load's checks.

Every network is the tiny config's 32 x 32 with a few channels.
"""


import dataclasses

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


def stub_state(ada_p):
  """A GanState at step 0 without networks, for `gan_iteration` driven by stub phases."""
  zero = jnp.zeros((), jnp.float32)
  return stylegan.GanState(step=jnp.asarray(0), key=None, g=None, d=None, g_ema=None,
                           g_opt=None, d_opt=None, w_avg=None, pl_mean=zero,
                           ada_p=jnp.asarray(ada_p), ada_sum=zero, ada_count=zero,
                           ada_rt=zero, pl_penalty=zero, r1_penalty=zero)


def signing_steps(sign):
  """Stub G and D phases: D's sign on the reals is `sign`, accumulated as the D step does."""
  return {"g": lambda state, images: (state, {}),
          "d": lambda state, images: (state.replace(ada_sum=state.ada_sum + sign,
                                                    ada_count=state.ada_count + 1), {})}


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
  state = stub_state(0.5)
  for sign in (1.0, -1.0):
    start = float(state.ada_p)
    for _ in range(2):
      state, metrics = stylegan.gan_iteration(signing_steps(sign), state, None, settings,
                                              config.stylegan)
    assert np.sign(float(state.ada_p) - start) == sign
    assert float(metrics["ada_rt"]) == sign


def test_ada_moves_p_every_ada_interval_steps_by_the_mean_sign():
  # Signs 1, 1, -1 over an interval of 3: r_t = 1/3 is below the target 0.6, so p falls
  # although D called most reals real; p waits for the interval's last step.
  config = tiny_config(ada_interval=3, ada_target=0.6, ada_kimg=100.0, pl_weight=0.0,
                       r1_gamma=0.0)
  settings = stylegan.GanSettings.from_config(config.stylegan)
  state = stub_state(0.5)
  for t, sign in enumerate((1.0, 1.0, -1.0)):
    state, metrics = stylegan.gan_iteration(signing_steps(sign), state, None, settings,
                                            config.stylegan)
    if t < 2:
      assert float(state.ada_p) == 0.5 and float(state.ada_count) == t + 1
  assert float(state.ada_p) == pytest.approx(0.5 - 4 * 3 / (100 * 1000.0))
  assert float(metrics["ada_rt"]) == pytest.approx(1 / 3)
  assert float(state.ada_sum) == 0.0 and float(state.ada_count) == 0.0


def recording_steps(calls):
  """Stub phases that append (step, phase name) to `calls` and change nothing."""
  def phase(name):
    return lambda state, images: (calls.append((int(state.step), name)) or state, {})
  return {name: phase(name) for name in ("g", "g_reg", "d", "d_reg")}


@pytest.mark.parametrize("pl_weight, r1_gamma", [(2.0, 0.1), (0.0, 0.0)])
def test_lazy_regularisation_runs_at_its_intervals(pl_weight, r1_gamma):
  config = tiny_config(pl_interval=3, r1_interval=2, pl_weight=pl_weight, r1_gamma=r1_gamma,
                       ada_interval=100)
  settings = stylegan.GanSettings.from_config(config.stylegan)
  state, calls = stub_state(0.0), []
  for _ in range(6):
    state, _ = stylegan.gan_iteration(recording_steps(calls), state, None, settings,
                                      config.stylegan)
  assert int(state.step) == 6
  main = [(t, name) for t in range(6) for name in ("g", "d")]
  if pl_weight == 0:
    assert calls == main  # A weight of 0 turns its phase off.
    return
  assert calls == [(0, "g"), (0, "g_reg"), (0, "d"), (0, "d_reg"), (1, "g"), (1, "d"),
                   (2, "g"), (2, "d"), (2, "d_reg"), (3, "g"), (3, "g_reg"), (3, "d"),
                   (4, "g"), (4, "d"), (4, "d_reg"), (5, "g"), (5, "d")]


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


def changed_fields(before, after):
  """Names of the GanState fields whose arrays differ between two states."""
  return {field.name for field in dataclasses.fields(before)
          if not all(np.array_equal(a, b) for a, b in zip(
              jax.tree.leaves(getattr(before, field.name)),
              jax.tree.leaves(getattr(after, field.name))))}


def test_d_phases_update_only_the_discriminator(gan_setup):
  steps, state, images = gan_setup
  after, metrics = steps["d"](state, images)
  assert {"d", "d_opt"} <= changed_fields(state, after) <= {"d", "d_opt", "ada_sum",
                                                             "ada_count"}
  # ADA's accumulator: one more D step, and its mean sign of D on the reals.
  assert float(after.ada_count) == 1.0
  assert float(after.ada_sum) == float(metrics["real_sign"])
  after, _ = steps["d_reg"](state, images)
  assert changed_fields(state, after) == {"d", "d_opt", "r1_penalty"}
  assert float(after.r1_penalty) > 0


def test_g_phases_update_only_the_generator_and_its_ema(gan_setup):
  steps, state, images = gan_setup
  after, _ = steps["g"](state, images)
  assert changed_fields(state, after) == {"g", "g_opt", "g_ema", "w_avg"}
  # At step 0 no image has been seen: the ramped-up half-life is ~0 and the EMA is G.
  jax.tree.map(np.testing.assert_array_equal, after.g_ema, after.g)

  # At step 50 (200 images, ema_rampup 0.05) the half-life is 10 images: the EMA moves
  # from where it was towards the updated G by 1 - 0.5^(4 / 10).
  sg = tiny_config().stylegan
  assert sg.ema_rampup == 0.05 and sg.ema_kimg * 1000 > 10
  later = state.replace(step=jnp.asarray(50, jnp.int32),
                        g_ema=jax.tree.map(lambda p: p + 1.0, state.g))
  after, _ = steps["g"](later, images)
  beta = 0.5 ** (4 / 10)
  jax.tree.map(lambda e, old, g: np.testing.assert_allclose(
      e, beta * old + (1 - beta) * g, rtol=1e-5, atol=1e-6), after.g_ema, later.g_ema, after.g)

  after, _ = steps["g_reg"](state, images)
  assert changed_fields(state, after) == {"g", "g_opt", "pl_mean", "pl_penalty"}
  assert float(after.pl_mean) > 0 and float(after.pl_penalty) > 0


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
