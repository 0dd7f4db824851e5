"""The reverse-SDE sampler on Gaussian data, whose score under either SDE is exact."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, tiny
from lmi_jax import sampling
from lmi_jax.models import create_model, feeding_of, init_variables, score_fn
from lmi_jax.sde import VESDE, VPSDE, sde_from_config

MU, S = 0.4, 0.2  # Data: every pixel i.i.d. N(MU, S^2).
SHAPE = (64, 16, 16, 1)  # 16384 independent draws.
EPS = 1e-3
SDES = {"ve": VESDE(0.01, 50.0), "vp": VPSDE(0.1, 20.0)}


def gaussian_score(sde, x, t):
  """Exact score of p_t = N(alpha MU, alpha^2 S^2 + std^2) for x (B, ...), t (B,)."""
  alpha, std = (v[:, None, None, None] for v in sde.mean_std(t))
  return -(x - alpha * MU) / (alpha**2 * S**2 + std**2)


def _sample(sde, key, x_init=None, shape=SHAPE, **kwargs):
  score_fn = functools.partial(gaussian_score, sde)
  run = jax.jit(lambda key, x_init: sampling.em_sampler(
      score_fn, sde, shape, key, eps=EPS, x_init=x_init, **kwargs))
  return run(key, x_init)


def _check_moments(x, mean, std, rtol_std=0.03):
  assert np.all(np.isfinite(x))
  np.testing.assert_allclose(x.mean(), mean, atol=0.006)  # 4 standard errors.
  np.testing.assert_allclose(x.std(), std, rtol=rtol_std)


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_em_reaches_the_data_distribution(name):
  sde = SDES[name]
  x, _ = _sample(sde, jax.random.key(0), num_steps=500, denoise=False)
  # Without denoising the sample is x(eps): N(alpha MU, alpha^2 S^2 + std^2) at eps.
  alpha, std = sde.mean_std(jnp.array(EPS))
  _check_moments(x, alpha * MU, np.sqrt(alpha**2 * S**2 + std**2))


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_denoised_sample_is_tweedies_mean(name):
  sde = SDES[name]
  x, _ = _sample(sde, jax.random.key(1), num_steps=500, denoise=True)
  # E[x0 | x(eps)] of Gaussian data has std S^2 alpha / sqrt(alpha^2 S^2 + std^2).
  alpha, std = sde.mean_std(jnp.array(EPS))
  _check_moments(x, MU, S**2 * alpha / np.sqrt(alpha**2 * S**2 + std**2))


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_tweedie_is_the_posterior_mean(name):
  sde = SDES[name]
  x = jax.random.normal(jax.random.key(7), (4, 2, 2, 1))
  t = 0.3
  alpha, std = sde.mean_std(jnp.array(t))
  # Gaussian conditioning: E[x0 | x] = MU + alpha S^2 / (alpha^2 S^2 + std^2) (x - alpha MU).
  want = MU + alpha * S**2 / (alpha**2 * S**2 + std**2) * (x - alpha * MU)
  got = sampling.tweedie_denoise(functools.partial(gaussian_score, sde), sde, x, t)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_predictor_corrector(name):
  sde = SDES[name]
  x, _ = _sample(sde, jax.random.key(2), num_steps=200, corrector_steps=1, snr=0.16)
  _check_moments(x, MU, S, rtol_std=0.04)


def test_scan_equals_a_python_loop_over_the_same_steps():
  sde = SDES["vp"]
  score_fn = lambda x, t: gaussian_score(sde, x, t) + 0.1 * jnp.sin(x)  # Nonlinear in x.
  key, num_steps, shape = jax.random.key(5), 12, (3, 8, 8, 1)
  kwargs = dict(eps=EPS, corrector_steps=2, snr=0.16, t_start=0.9)
  x_scan, traj = jax.jit(lambda k: sampling.em_sampler(
      score_fn, sde, shape, k, num_steps, denoise=True, trajectory_steps=(0, 5, 12),
      **kwargs))(key)

  init_key, step_keys = sampling.split_keys(key, num_steps)
  x = sde.prior_sample(init_key, shape)
  ts = sampling.time_grid(num_steps, EPS, 0.9)
  states = [x]
  for i in range(num_steps):
    x = sampling.reverse_step(score_fn, sde, x, ts[i], ts[i + 1], step_keys[i],
                              kwargs["corrector_steps"], kwargs["snr"])
    states.append(x)
  np.testing.assert_allclose(traj, np.stack([states[0], states[5], states[12]]), atol=1e-6)
  np.testing.assert_allclose(x_scan, sampling.tweedie_denoise(score_fn, sde, x, EPS),
                             atol=1e-6)


def test_trajectory_order_and_errors():
  sde = SDES["ve"]
  score_fn = functools.partial(gaussian_score, sde)
  x, traj = sampling.em_sampler(score_fn, sde, (2, 4, 4, 1), jax.random.key(6), 6,
                                denoise=False, trajectory_steps=(6, 2))
  assert traj.shape == (2, 2, 4, 4, 1)
  np.testing.assert_array_equal(traj[0], x)
  _, empty = sampling.em_sampler(score_fn, sde, (2, 4, 4, 1), jax.random.key(6), 6)
  assert empty.shape == (0, 2, 4, 4, 1)
  with pytest.raises(ValueError, match="trajectory_steps"):
    sampling.em_sampler(score_fn, sde, (2, 4, 4, 1), jax.random.key(6), 6,
                        trajectory_steps=(7,))


def test_tiny_config_samples_with_the_network():
  """The pieces as the translation loop joins them: compiled once, reused for new keys."""
  config = tiny.get_config()
  model, sde = create_model(config.model), sde_from_config(config.sde)
  size = config.data.image_size
  shapes = jax.eval_shape(lambda k: init_variables(model, k, size, 3), jax.random.key(0))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.05 * rng.normal(size=s.shape), s.dtype), shapes)
  traces = []

  @jax.jit
  def translate(variables, features, key):
    traces.append(1)
    score = lambda x, t: score_fn(model, variables, sde, x, features, t,
                                  feeding=feeding_of(config.model))
    s = config.sampling
    return sampling.em_sampler(score, sde, (2, size, size, 1), key, s.num_steps, eps=s.eps,
                               corrector_steps=s.corrector_steps, snr=s.snr,
                               trajectory_steps=(0, s.num_steps))

  features = jnp.full((2, size, size, 2), 0.5)
  x, traj = translate(variables, features, jax.random.key(1))
  x2, _ = translate(variables, features + 0.1, jax.random.key(2))
  assert x.shape == (2, size, size, 1) and traj.shape == (2, 2, size, size, 1)
  assert np.all(np.isfinite(x)) and not np.allclose(x, x2)
  np.testing.assert_allclose(traj[0].std(), sde.prior_std, rtol=0.1)
  assert len(traces) == 1


def _fast(sde, key, nfe, method, **kwargs):
  score = functools.partial(gaussian_score, sde)
  run = jax.jit(lambda key: sampling.fast_sampler(score, sde, SHAPE, key, nfe, method=method,
                                                  eps=EPS, **kwargs))
  return np.asarray(run(key))


@pytest.mark.parametrize("name", ["ve", "vp"])
@pytest.mark.parametrize("method, nfe, kwargs", [
    ("heun", 59, {}), ("dpm2m", 35, {}), ("churn", 99, {"churn": 10.0})])
def test_fast_samplers_reach_the_data_distribution(name, method, nfe, kwargs):
  """At a tenth of em's 500 steps the sample is N(MU, S^2) (the last jump to sigma = 0 is the
  posterior mean at sigma(eps), whose std is 0.1% below S). This narrow Gaussian under
  sigma_max = 50 is a hard case: measured std errors at 19 / 35 / 59 / 99 NFE are
  20 / 5 / 1.3 / 0.2% for heun and 4 / 1 / 0 / 0.3% for dpm2m (VE); churn (S_churn 10), which
  adds noise, needs more: 12 / 5 / 1.2% at 35 / 59 / 99."""
  x = _fast(SDES[name], jax.random.key(11), nfe, method, **kwargs)
  _check_moments(x, MU, S, rtol_std=0.03)


@pytest.mark.parametrize("name", ["ve", "vp"])
@pytest.mark.parametrize("method, nfe", [("heun", 59), ("dpm2m", 35)])
def test_ode_samplers_follow_the_exact_flow_from_their_start(name, method, nfe):
  """Gaussian data's probability-flow ODE is linear: x(0) = MU + (x_T - MU) S / sqrt(S^2 + s_T^2)
  for x_T at noise level s_T. Pixel by pixel, the sampler lands where the exact flow does,
  and the same key gives bitwise the same sample (nothing random after the start)."""
  sde = SDES[name]
  key = jax.random.key(12)
  x = _fast(sde, key, nfe, method)
  np.testing.assert_array_equal(x, _fast(sde, key, nfe, method))
  init_key, _ = sampling.split_keys(key, max(sampling.noise_levels(method, nfe) - 1, 1))
  alpha, sigma_t = sde.mean_std(jnp.array(1.0))[0], sde.scaled_std(jnp.array(1.0))
  start = np.asarray(sde.prior_sample(init_key, SHAPE) / alpha)
  # The flow ends at sigma(eps) and jumps to 0 by the posterior mean: exact for this data.
  sigma_e = float(sde.scaled_std(jnp.array(EPS)))
  at_eps = MU + (start - MU) * np.sqrt(S**2 + sigma_e**2) / np.sqrt(S**2 + sigma_t**2)
  want = MU + (at_eps - MU) * S**2 / (S**2 + sigma_e**2)
  np.testing.assert_allclose(x - MU, want - MU, rtol=0.03, atol=1e-3)


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_time_of_scaled_std_inverts_it(name):
  sde = SDES[name]
  t = jnp.linspace(1e-3, 1.0, 50)
  np.testing.assert_allclose(sde.time_of_scaled_std(sde.scaled_std(t)), t, rtol=1e-4, atol=1e-6)


def test_samplers_report_progress_to_the_host():
  sde = SDES["ve"]
  score = functools.partial(gaussian_score, sde)
  seen = []
  progress = lambda done: seen.append(int(done))
  jax.jit(lambda k: sampling.fast_sampler(score, sde, (2, 4, 4, 1), k, 7, method="heun",
                                          progress=progress))(jax.random.key(0)).block_until_ready()
  jax.effects_barrier()
  # In order: each call waits for the state it reports (the last one once came first).
  assert seen == [1, 2, 3, 4]
  seen.clear()
  jax.jit(lambda k: sampling.em_sampler(score, sde, (2, 4, 4, 1), k, 5, progress=progress)[0]
          )(jax.random.key(0)).block_until_ready()
  jax.effects_barrier()
  assert seen == [1, 2, 3, 4, 5]


def test_network_evaluations_of_each_method():
  cfg = default.get_config().sampling
  cfg.num_steps, cfg.corrector_steps, cfg.nfe = 100, 1, 19
  assert sampling.network_evaluations(cfg) == 201
  assert sampling.network_evaluations(cfg, t_start=0.4) == 81
  cfg.method = "heun"
  assert sampling.network_evaluations(cfg) == 19 and sampling.progress_total(cfg) == 10
  cfg.method = "dpm2m"
  assert sampling.network_evaluations(cfg) == 19 and sampling.progress_total(cfg) == 19


# SDEdit from an image: x_init is two constant halves far from MU, so each half's pixels are
# independent draws of the sampler's law given that one x_init value, and their mean and std
# can be compared with the exact conditional law of this Gaussian data.
T0 = 0.4
HALVES = (MU - 1.0, MU + 1.0)
BIG = (128, 16, 16, 1)  # 16384 draws per half: the std to 0.6%, the mean to 0.008 std.


def _halves() -> jax.Array:
  half = (BIG[0] // 2, *BIG[1:])
  return jnp.concatenate([jnp.full(half, v, jnp.float32) for v in HALVES])


def _scaled_sigma(name: str, t: float) -> float:
  """sigma(t) = std(t) / alpha(t) of the two SDEs, from their definitions (float64)."""
  if name == "ve":
    return 0.01 * (50.0 / 0.01) ** t
  log_alpha = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
  return float(np.sqrt(np.expm1(-2.0 * log_alpha)))


def _karras(levels: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
  """EDM's Eq. 5 schedule, sigma_max down to sigma_min uniform in sigma^(1/rho)."""
  ramp = np.linspace(0.0, 1.0, levels)
  return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def _check_conditional(x, gain, std, rtol_std):
  """Each half of x has mean MU + gain (x_init - MU) and standard deviation std."""
  x = np.asarray(x)
  assert np.all(np.isfinite(x))
  for value, half in zip(HALVES, np.split(x, 2)):
    np.testing.assert_allclose(half.mean(), MU + gain * (value - MU),
                               atol=4 * std / np.sqrt(half.size))
    np.testing.assert_allclose(half.std(), std, rtol=rtol_std)


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_em_sdedit_draws_from_the_posterior_given_the_image(name):
  """Euler-Maruyama from x_init perturbed to t0 = 0.2 samples x(eps) given x(t0). In the
  scaled variable y = x / alpha = x0 + sigma z of this Gaussian data, y(t0) = x_init + s0 z
  and y(eps) | y(t0) is N(MU + k (y(t0) - MU), (S^2 + se^2)(s0^2 - se^2) / (S^2 + s0^2)),
  k = (S^2 + se^2) / (S^2 + s0^2); the Tweedie step at eps then shrinks y(eps) toward MU by
  S^2 / (S^2 + se^2). Given x_init the mean moves from MU toward it by k (VP: 0.07, 40
  standard errors from a sampler that ignores x_init)."""
  sde, t0 = SDES[name], 0.2
  x, _ = _sample(sde, jax.random.key(21), x_init=_halves(), t_start=t0, num_steps=200,
                 denoise=True, shape=BIG)
  s0, se = _scaled_sigma(name, t0), _scaled_sigma(name, EPS)
  k = (S**2 + se**2) / (S**2 + s0**2)
  var = k**2 * s0**2 + (S**2 + se**2) * (s0**2 - se**2) / (S**2 + s0**2)
  shrink = S**2 / (S**2 + se**2)
  _check_conditional(x, shrink * k, shrink * np.sqrt(var), rtol_std=0.03)


def _churn_reference(sigmas: np.ndarray, gamma: float, s_noise: float = 1.0):
  """EDM's Algorithm 2 on this Gaussian data, in closed form: every move is linear in
  u = x / alpha - MU (the denoiser is MU + S^2 / (S^2 + s^2) u), so u = gain (x_init - MU) + e
  with e ~ N(0, var), tracked level by level. Returns (gain, std of e) after the final jump
  to sigma = 0."""
  gain, var = 1.0, sigmas[0] ** 2  # Start: x_init + sigma_max z.
  slope = lambda s: s / (S**2 + s**2)  # (u - (D - MU)) / s per unit u.
  for s, s_next in zip(sigmas[:-1], sigmas[1:]):
    s_hat = min(s * (1 + gamma), sigmas[0])
    var += (s_hat**2 - s**2) * s_noise**2
    euler = 1 + (s_next - s_hat) * slope(s_hat)
    step = 1 + 0.5 * (s_next - s_hat) * (slope(s_hat) + euler * slope(s_next))
    gain, var = gain * step, var * step**2
  last = S**2 / (S**2 + sigmas[-1] ** 2)
  return gain * last, np.sqrt(var) * last


@pytest.mark.parametrize("name", ["ve", "vp"])
@pytest.mark.parametrize("method", ["heun", "dpm2m", "churn"])
def test_fast_sdedit_draws_from_the_right_law_given_the_image(name, method):
  """SDEdit by the fast samplers through `sampling.sample` and the `sampling` config, as
  sdedit_batch calls them, from x_init at t0 = 0.4: round(nfe t0) evaluations, levels from
  sigma(t0) down to sigma(eps).

  heun / dpm2m (NFE 150): the probability-flow ODE from x_init + sigma(t0) z is the linear map
  u -> u sqrt(S^2 + s^2) / sqrt(S^2 + sigma(t0)^2) of Gaussian data, then the jump to 0; the
  sample's law given x_init is that map of N(x_init, sigma(t0)^2) (within the solvers' 0.4%).
  churn (the shipped configs' S_churn 10 at NFE 35: 7 levels): EDM's Algorithm 2 propagated
  exactly (`_churn_reference`); its added noise makes the std 13% (VE) and 16% (VP) larger
  than the ODE's, so a sampler that drops it fails."""
  sde = SDES[name]
  cfg = default.get_config().sampling
  cfg.method, cfg.eps, cfg.churn = method, EPS, 10.0
  cfg.nfe = 35 if method == "churn" else 150
  score = functools.partial(gaussian_score, sde)
  x = jax.jit(lambda key, x_init: sampling.sample(score, sde, BIG, key, cfg, x_init=x_init,
                                                  t_start=T0))(jax.random.key(22), _halves())
  steps = round(cfg.nfe * T0)  # SDEdit takes its share t0 of the evaluations.
  levels = (steps + 1) // 2 if method in ("heun", "churn") else steps
  sigma_0, sigma_e = _scaled_sigma(name, T0), _scaled_sigma(name, EPS)
  flow = np.sqrt(S**2 + sigma_e**2) / np.sqrt(S**2 + sigma_0**2) * S**2 / (S**2 + sigma_e**2)
  if method == "churn":
    gain, std = _churn_reference(_karras(levels, sigma_e, sigma_0), min(10.0 / levels, np.sqrt(2) - 1))
    assert std > 1.1 * sigma_0 * flow  # The churn noise is what the test sees.
    _check_conditional(x, gain, std, rtol_std=0.025)
  else:
    _check_conditional(x, flow, sigma_0 * flow, rtol_std=0.03)
