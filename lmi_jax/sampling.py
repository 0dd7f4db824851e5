"""Samplers over `jax.lax.scan`, generic over a score function.

`score_fn(x, t) -> score` takes x (B, ...) and t (B,) and is pure in x, so a caller can
close over anything derived from the current sample (the LMI features of x_t) inside it:
every sampler here recomputes them at each network evaluation. The samplers are pure too:
wrap them in `jax.jit` with the arrays the score function closes over passed as jit
arguments, and everything compiles once per shape.

`em` (the reference, the paper's Eq. 3): time runs on the grid t_0 = t_start > t_1 > ... >
t_N = eps (uniform). Step i takes x from t_i to t_{i+1}: optionally `corrector_steps` Langevin
moves at t_i, then one Euler-Maruyama move of the reverse SDE. At eps a Tweedie step can
remove the noise left.

`heun`, `churn` and `dpm2m` (few network evaluations) work, as Karras et al. (2022, EDM) do,
on x / alpha(t) = x(0) + sigma z with sigma = std(t) / alpha(t), through the denoiser
D(x, sigma) = E[x(0) | x] that the score gives (Tweedie). Noise levels are spaced uniformly in
sigma^(1/rho) from sigma(t_start) to sigma(eps), and the last move jumps to sigma = 0 by D.
- heun: the probability-flow ODE dx/dsigma = (x - D) / sigma by Heun's 2nd-order method
  (EDM's Algorithm 1): 2 evaluations a level, 1 for the last.
- churn: EDM's stochastic sampler (Algorithm 2): before each Heun move, noise raises sigma by
  a factor 1 + min(churn / levels, sqrt(2) - 1), then the ODE brings it down.
- dpm2m: DPM-Solver++(2M) (Lu et al. 2022), a 2nd-order multistep solver of the same ODE in
  log sigma that reuses the previous level's D: 1 evaluation a level.
"""

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from lmi_jax import reference_map
from lmi_jax.errors import InputError, key_checker
from lmi_jax.sde import SDE, bcast

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
ProgressFn = Callable[[jax.Array], None]
SAMPLERS = ("em", "heun", "churn", "dpm2m")
FAST_SAMPLERS = tuple(m for m in SAMPLERS if m != "em")  # Counted in network evaluations (nfe).


def time_grid(num_steps: int, eps: float, t_start: float) -> jax.Array:
  """The num_steps + 1 times t_start, ..., eps, decreasing."""
  return jnp.linspace(t_start, eps, num_steps + 1)


def split_keys(key: jax.Array, num_steps: int) -> tuple[jax.Array, jax.Array]:
  """The sampler's randomness: a key for the initial state and one key per step (num_steps,)."""
  keys = jax.random.split(key, num_steps + 1)
  return keys[0], keys[1:]


def _batch_time(t: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.full((x.shape[0],), t, x.dtype)


def em_step(score_fn: ScoreFn, sde: SDE, x: jax.Array, t: jax.Array, t_next: jax.Array,
            key: jax.Array) -> jax.Array:
  """One Euler-Maruyama step of the reverse SDE, x (B, ...) at scalar t -> at t_next < t.

  dx = [f(x, t) - g(t)^2 score(x, t)] dt + g(t) dw, integrated backwards over t - t_next.
  """
  tb = _batch_time(t, x)
  f, g = sde.drift_diffusion(x, tb)
  g = bcast(g, x)
  dt = t - t_next
  x_mean = x - (f - g**2 * score_fn(x, tb)) * dt
  return x_mean + g * jnp.sqrt(dt) * jax.random.normal(key, x.shape, x.dtype)


def langevin_step(score_fn: ScoreFn, x: jax.Array, t: jax.Array, key: jax.Array,
                  snr: float) -> jax.Array:
  """One Langevin MCMC move toward p_t at scalar t, x (B, ...) -> (B, ...).

  Step size 2 (snr |z| / |score|)^2 per sample (Song et al.'s corrector; their batch mean of
  the norms is taken per sample here, so a sample does not depend on its batch mates).
  Their VP variant also scales by 1 - beta_i, within 2% of 1 for 1000 steps; left out.
  """
  score = score_fn(x, _batch_time(t, x))
  z = jax.random.normal(key, x.shape, x.dtype)
  axes = tuple(range(1, x.ndim))
  norm_ratio = jnp.sqrt(jnp.sum(z**2, axes) / jnp.sum(score**2, axes))
  step = bcast(2.0 * (snr * norm_ratio) ** 2, x)
  return x + step * score + jnp.sqrt(2.0 * step) * z


def reverse_step(score_fn: ScoreFn, sde: SDE, x: jax.Array, t: jax.Array,
                 t_next: jax.Array, key: jax.Array, corrector_steps: int = 0,
                 snr: float = 0.16) -> jax.Array:
  """One sampler step, x (B, ...) at t -> t_next: Langevin corrections at t, then `em_step`."""
  keys = jax.random.split(key, corrector_steps + 1)
  for k in keys[:-1]:
    x = langevin_step(score_fn, x, t, k, snr)
  return em_step(score_fn, sde, x, t, t_next, keys[-1])


def tweedie_denoise(score_fn: ScoreFn, sde: SDE, x: jax.Array, t: float) -> jax.Array:
  """E[x(0) | x(t) = x] = (x + std^2 score) / alpha, for x (B, ...) at scalar t."""
  tb = _batch_time(t, x)
  alpha, std = sde.mean_std(tb)
  return (x + bcast(std**2, x) * score_fn(x, tb)) / bcast(alpha, x)


def initial_state(sde: SDE, key: jax.Array, shape: tuple[int, ...], x_init: jax.Array | None,
                  t_start: float) -> jax.Array:
  """The sampler's start: a prior draw, or x_init (B, ...) perturbed to t_start (SDEdit)."""
  if x_init is None:
    return sde.prior_sample(key, shape)
  return sde.perturb(key, x_init, _batch_time(t_start, x_init))


def em_sampler(score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], key: jax.Array,
               num_steps: int, *, eps: float = 1e-3, corrector_steps: int = 0,
               snr: float = 0.16, denoise: bool = True, x_init: jax.Array | None = None,
               t_start: float = 1.0, trajectory_steps: Sequence[int] = (),
               progress: ProgressFn | None = None) -> tuple[jax.Array, jax.Array]:
  """Samples x(0) by integrating the reverse SDE from t_start down to eps.

  Args:
    score_fn: score(x (B, ...), t (B,)) -> (B, ...).
    sde: the forward SDE the score belongs to.
    shape: (B, ...) of the sample (x_init's shape when that is given).
    key: all randomness, split by `split_keys`.
    num_steps: reverse steps from t_start to eps.
    eps: last time reached; the score is not trusted below it.
    corrector_steps: Langevin moves before each Euler-Maruyama step (0: plain Eq. 3).
    snr: Langevin signal-to-noise ratio.
    denoise: end with a Tweedie step at eps (one more score evaluation).
    x_init: with t_start < 1, the clean image (B, ...) that SDEdit perturbs to t_start;
      None starts from the prior.
    t_start: first time of the grid.
    trajectory_steps: static step indices i in [0, num_steps] whose state (after i steps,
      0 = the start) is returned, for notebooks.
    progress: called on the host with the number of steps done after each step.

  Returns:
    The sample (B, ...) and the trajectory (len(trajectory_steps), B, ...).
  """
  init_key, step_keys = split_keys(key, num_steps)
  x = initial_state(sde, init_key, shape, x_init, t_start)
  ts = time_grid(num_steps, eps, t_start)

  def body(x, inputs):
    i, t, t_next, k = inputs
    x = reverse_step(score_fn, sde, x, t, t_next, k, corrector_steps, snr)
    report_progress(progress, i + 1, x)
    return x, None

  # The scan is cut at the requested steps rather than stacking all num_steps states.
  stops = sorted(set(trajectory_steps) | {num_steps})
  if stops[0] < 0 or stops[-1] > num_steps:
    raise ValueError(f"trajectory_steps {trajectory_steps} must lie in [0, {num_steps}].")
  states, start = {}, 0
  for stop in stops:
    if stop > start:
      x, _ = jax.lax.scan(body, x, (jnp.arange(start, stop), ts[start:stop],
                                    ts[start + 1:stop + 1], step_keys[start:stop]))
    states[stop], start = x, stop
  if trajectory_steps:
    trajectory = jnp.stack([states[i] for i in trajectory_steps])
  else:
    trajectory = jnp.zeros((0, *x.shape), x.dtype)
  if denoise:
    x = tweedie_denoise(score_fn, sde, x, eps)
  return x, trajectory


def report_progress(progress: ProgressFn | None, done: jax.Array, after: jax.Array) -> None:
  """Calls `progress(done)` on the host from inside a traced loop (nothing if None), once
  `after` (the state just computed) exists: without that data dependency XLA may run the
  callback as soon as `done` is known, e.g. at the start of the program."""
  if progress is not None:
    jax.debug.callback(lambda d, _: progress(d), done, after.ravel()[0])


def karras_sigmas(num: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> jax.Array:
  """(num,) noise levels from sigma_max down to sigma_min, uniform in sigma^(1/rho) (EDM Eq. 5)."""
  ramp = jnp.linspace(0.0, 1.0, num)
  lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  return (hi + ramp * (lo - hi)) ** rho


def denoiser(score_fn: ScoreFn, sde: SDE) -> DenoiseFn:
  """D(x, sigma) = E[x(0) | x(t) / alpha(t) = x] for x (B, ...), scalar sigma = std / alpha.

  The score of x / alpha is alpha times the score of x, so D = x + sigma^2 alpha score(alpha x, t).
  """
  def denoise(x: jax.Array, sigma: jax.Array) -> jax.Array:
    t = _batch_time(sde.time_of_scaled_std(sigma), x)
    alpha = bcast(sde.mean_std(t)[0], x)
    return x + sigma**2 * alpha * score_fn(alpha * x, t)
  return denoise


def heun_step(denoise: DenoiseFn, x: jax.Array, sigma: jax.Array,
              sigma_next: jax.Array) -> jax.Array:
  """One Heun move of the probability-flow ODE, x (B, ...) at sigma -> at sigma_next > 0."""
  slope = (x - denoise(x, sigma)) / sigma
  x_euler = x + (sigma_next - sigma) * slope
  slope_next = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
  return x + (sigma_next - sigma) * 0.5 * (slope + slope_next)


def churn_step(denoise: DenoiseFn, x: jax.Array, sigma: jax.Array, sigma_next: jax.Array,
               key: jax.Array, gamma: float, s_noise: float, sigma_cap: float) -> jax.Array:
  """EDM's stochastic move: noise x up to sigma (1 + gamma) (at most sigma_cap), then Heun."""
  sigma_hat = jnp.minimum(sigma * (1.0 + gamma), sigma_cap)
  noise = jax.random.normal(key, x.shape, x.dtype)
  x_hat = x + jnp.sqrt(jnp.maximum(sigma_hat**2 - sigma**2, 0.0)) * s_noise * noise
  return heun_step(denoise, x_hat, sigma_hat, sigma_next)


def dpm2m_update(x: jax.Array, denoised: jax.Array, denoised_prev: jax.Array,
                 sigma_prev: jax.Array, sigma: jax.Array, sigma_next: jax.Array) -> jax.Array:
  """DPM-Solver++(2M) move of x (B, ...) from sigma to sigma_next > 0 given D at sigma and at
  the previous level sigma_prev (first order when sigma_prev == sigma: no history)."""
  h = jnp.log(sigma / sigma_next)
  h_prev = jnp.log(sigma_prev / sigma)
  # r = h_prev / h; the 2nd-order term vanishes at the first level, where h_prev = 0.
  weight = jnp.where(h_prev > 0, 0.5 * h / jnp.where(h_prev > 0, h_prev, 1.0), 0.0)
  blended = (1.0 + weight) * denoised - weight * denoised_prev
  return (sigma_next / sigma) * x - jnp.expm1(-h) * blended


def noise_levels(method: str, nfe: int) -> int:
  """Noise levels (before the final jump to 0) that `method` visits with `nfe` evaluations."""
  return (nfe + 1) // 2 if method in ("heun", "churn") else nfe


def fast_sampler(score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], key: jax.Array,
                 nfe: int, *, method: str = "heun", eps: float = 1e-3, rho: float = 7.0,
                 churn: float = 0.0, s_noise: float = 1.0, x_init: jax.Array | None = None,
                 t_start: float = 1.0, progress: ProgressFn | None = None) -> jax.Array:
  """x(0) by the `heun`, `churn` or `dpm2m` sampler (module docstring) in about `nfe` evaluations.

  Args:
    score_fn: score(x (B, ...), t (B,)) -> (B, ...) of the SDE's x(t).
    sde: the forward SDE the score belongs to.
    shape: (B, ...) of the sample.
    key: all randomness (the start, and churn's noise).
    nfe: network evaluations: heun / churn use 2 L - 1 (nfe rounded up to odd), dpm2m L, for
      L noise levels.
    eps: the smallest time whose noise level is visited before the jump to 0.
    rho: the schedule's exponent (EDM: 7).
    churn: EDM's S_churn (method churn only).
    s_noise: EDM's S_noise, the scale of churn's added noise.
    x_init: SDEdit's clean image (B, ...), noised to t_start; None starts from the prior.
    t_start: time of the first noise level.
    progress: called on the host with the number of levels done.
  Returns:
    (B, ...) the sample.
  """
  if method not in SAMPLERS[1:]:
    raise ValueError(f"fast_sampler: method {method!r} is none of {SAMPLERS[1:]}.")
  levels = noise_levels(method, nfe)
  if levels < 1:
    raise ValueError(f"fast_sampler: nfe={nfe} gives no noise level; use nfe >= 1.")
  with jax.ensure_compile_time_eval():  # Python floats of the schedule, even under jit.
    sigma_max = float(sde.scaled_std(jnp.asarray(t_start)))
    sigma_min = float(sde.scaled_std(jnp.asarray(eps)))
  sigmas = karras_sigmas(levels, sigma_min, sigma_max, rho)
  denoise = denoiser(score_fn, sde)
  init_key, step_keys = split_keys(key, max(levels - 1, 1))
  if x_init is None:
    alpha = sde.mean_std(jnp.asarray(t_start))[0]
    x = sde.prior_sample(init_key, shape) / alpha
  else:
    x = x_init + sigma_max * jax.random.normal(init_key, x_init.shape, x_init.dtype)
  index = jnp.arange(levels - 1)
  if method == "dpm2m":
    def body(carry, inputs):
      x, denoised_prev, sigma_prev = carry
      i, sigma, sigma_next = inputs
      denoised = denoise(x, sigma)
      x = dpm2m_update(x, denoised, denoised_prev, sigma_prev, sigma, sigma_next)
      report_progress(progress, i + 1, x)
      return (x, denoised, sigma), None
    (x, _, _), _ = jax.lax.scan(body, (x, jnp.zeros_like(x), sigmas[0]),
                                (index, sigmas[:-1], sigmas[1:]))
  else:
    gamma = min(churn / levels, math.sqrt(2.0) - 1.0) if method == "churn" else 0.0

    def body(x, inputs):
      i, sigma, sigma_next, k = inputs
      if gamma > 0:
        x = churn_step(denoise, x, sigma, sigma_next, k, gamma, s_noise, sigma_max)
      else:
        x = heun_step(denoise, x, sigma, sigma_next)
      report_progress(progress, i + 1, x)
      return x, None
    x, _ = jax.lax.scan(body, x, (index, sigmas[:-1], sigmas[1:], step_keys[:levels - 1]))
  x = denoise(x, sigmas[-1])
  report_progress(progress, jnp.asarray(levels), x)
  return x


# How lmi makes a low-resolution translation full resolution (lmi_jax/multiscale.py).
LOWRES_REFINES = ("diffusion", "guided", "none")
# How --mode=sample --input segments a translated scan (lmi_jax/scans.py).
SCAN_SEGMENTERS = ("model", "joint")


def check_sampling_config(cfg: ml_collections.ConfigDict) -> None:
  """Raise InputError naming the first `sampling.*` key with an unusable value."""
  require = key_checker("sampling", cfg)
  require(cfg.method in SAMPLERS, "method", f"choose one of {SAMPLERS}")
  require(cfg.num_steps >= 1, "num_steps", "use at least 1 step")
  require(cfg.corrector_steps >= 0, "corrector_steps", "use 0 or more corrector moves")
  require(cfg.nfe >= 1, "nfe", "use at least 1 network evaluation")
  require(0.0 < cfg.eps < 1.0, "eps", "use a time in (0, 1)")
  require(0.0 < cfg.sdedit_t0 <= 1.0, "sdedit_t0", "use a time in (0, 1]")
  require(cfg.rho > 0, "rho", "use a positive exponent")
  require(cfg.churn >= 0, "churn", "use 0 (none) or more")
  require(cfg.faint_below >= 0, "faint_below", "use 0 (never) or a positive structure score")
  if cfg.faint_reference_map:
    reference_map.check_name(str(cfg.faint_reference_map), "sampling.faint_reference_map")
  require(isinstance(cfg.lowres_model, str), "lowres_model", "give a shipped model folder, or ''")
  require(cfg.lowres_refine in LOWRES_REFINES, "lowres_refine", f"choose one of {LOWRES_REFINES}")
  require(0.0 < cfg.lowres_t0 <= 1.0, "lowres_t0", "use a time in (0, 1]")
  require(cfg.lowres_samples >= 1, "lowres_samples", "use at least one draw")
  require(cfg.lowres_sampler == "" or parse_sampler(cfg.lowres_sampler) is not None,
          "lowres_sampler", f"give method:nfe with a method of {FAST_SAMPLERS} and nfe >= 1, "
          "e.g. dpm2m:15, or '' for the low-resolution model's own sampler")
  require(cfg.guided_radius >= 1, "guided_radius", "use a radius of at least 1 pixel")
  require(cfg.guided_eps > 0, "guided_eps", "use a positive ridge")
  require(cfg.finish_radius >= 0, "finish_radius", "use 0 (none) or a radius in pixels")
  require(cfg.finish_eps > 0, "finish_eps", "use a positive ridge")
  require(cfg.scan_segmenter in SCAN_SEGMENTERS, "scan_segmenter", f"choose one of {SCAN_SEGMENTERS}")


def parse_sampler(text: str) -> tuple[str, int] | None:
  """(method, nfe) of a "method:nfe" string such as "dpm2m:15"; None if it is not one (em,
  counted in steps, is not)."""
  method, _, count = str(text).partition(":")
  if method not in FAST_SAMPLERS or not count.isdigit() or int(count) < 1:
    return None
  return method, int(count)


def set_sampler(cfg: ml_collections.ConfigDict, text: str) -> None:
  """Sets `cfg.method` and `cfg.nfe` of a sampling section from "method:nfe" (`parse_sampler`)."""
  parsed = parse_sampler(text)
  if parsed is None:
    raise InputError(f"{text!r} is not method:nfe with a method of {FAST_SAMPLERS} and nfe >= 1 "
                     "(e.g. dpm2m:15).")
  cfg.method, cfg.nfe = parsed


def steps_for(cfg: ml_collections.ConfigDict, t_start: float = 1.0) -> int:
  """Steps (em) or network evaluations (others) of a run from t_start: SDEdit's shorter span
  from t_start < 1 keeps em's step size and takes that share of the others' evaluations."""
  full = int(cfg.num_steps) if cfg.method == "em" else int(cfg.nfe)
  return max(1, round(full * t_start))


def network_evaluations(cfg: ml_collections.ConfigDict, t_start: float = 1.0) -> int:
  """Score-network evaluations per sample of the configured sampler from t_start."""
  steps = steps_for(cfg, t_start)
  if cfg.method == "em":
    return steps * (1 + int(cfg.corrector_steps)) + int(bool(cfg.denoise))
  levels = noise_levels(cfg.method, steps)
  return 2 * levels - 1 if cfg.method in ("heun", "churn") else levels


def progress_total(cfg: ml_collections.ConfigDict, t_start: float = 1.0) -> int:
  """The last count a sampler's `progress` receives: em's steps, or the others' noise levels."""
  steps = steps_for(cfg, t_start)
  return steps if cfg.method == "em" else noise_levels(cfg.method, steps)


def sample(score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], key: jax.Array,
           cfg: ml_collections.ConfigDict, *, x_init: jax.Array | None = None,
           t_start: float = 1.0, progress: ProgressFn | None = None) -> jax.Array:
  """x(0) (B, ...) by the sampler the `sampling` config section names (`method`)."""
  steps = steps_for(cfg, t_start)
  if cfg.method == "em":
    return em_sampler(score_fn, sde, shape, key, steps, eps=float(cfg.eps),
                      corrector_steps=int(cfg.corrector_steps), snr=float(cfg.snr),
                      denoise=bool(cfg.denoise), x_init=x_init, t_start=t_start,
                      progress=progress)[0]
  return fast_sampler(score_fn, sde, shape, key, steps, method=cfg.method, eps=float(cfg.eps),
                      rho=float(cfg.rho), churn=float(cfg.churn), s_noise=float(cfg.s_noise),
                      x_init=x_init, t_start=t_start, progress=progress)
