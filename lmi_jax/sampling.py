"""Reverse-SDE samplers over `jax.lax.scan`, generic over a score function.

`score_fn(x, t) -> score` takes x (B, ...) and t (B,) and is pure in x, so a caller can
close over anything derived from the current sample (the LMI features of x_t) inside it.
The samplers are pure too: wrap them in `jax.jit` with the arrays the score function
closes over passed as jit arguments, and everything compiles once per shape.

Time runs on the grid t_0 = t_start > t_1 > ... > t_N = eps (uniform). Step i takes x from
t_i to t_{i+1}: optionally `corrector_steps` Langevin moves at t_i, then one Euler-Maruyama
move of the reverse SDE (the paper's Eq. 3). At eps a Tweedie step can remove the noise left.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from lmi_jax.sde import SDE, bcast

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


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
               t_start: float = 1.0,
               trajectory_steps: Sequence[int] = ()) -> tuple[jax.Array, jax.Array]:
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

  Returns:
    The sample (B, ...) and the trajectory (len(trajectory_steps), B, ...).
  """
  init_key, step_keys = split_keys(key, num_steps)
  x = initial_state(sde, init_key, shape, x_init, t_start)
  ts = time_grid(num_steps, eps, t_start)

  def body(x, inputs):
    t, t_next, k = inputs
    return reverse_step(score_fn, sde, x, t, t_next, k, corrector_steps, snr), None

  # The scan is cut at the requested steps rather than stacking all num_steps states.
  stops = sorted(set(trajectory_steps) | {num_steps})
  if stops[0] < 0 or stops[-1] > num_steps:
    raise ValueError(f"trajectory_steps {trajectory_steps} must lie in [0, {num_steps}].")
  states, start = {}, 0
  for stop in stops:
    if stop > start:
      x, _ = jax.lax.scan(body, x, (ts[start:stop], ts[start + 1:stop + 1],
                                    step_keys[start:stop]))
    states[stop], start = x, stop
  if trajectory_steps:
    trajectory = jnp.stack([states[i] for i in trajectory_steps])
  else:
    trajectory = jnp.zeros((0, *x.shape), x.dtype)
  if denoise:
    x = tweedie_denoise(score_fn, sde, x, eps)
  return x, trajectory
