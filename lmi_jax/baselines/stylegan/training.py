"""The GAN's training (Karras et al. 2020, StyleGAN2-ADA): its state, the four lazily
regularised phases (G main, G path length, D main, D R1), one iteration of them, and
`train_gan`, the resumable, time-limited loop of `lmi_jax.baselines.common` around them.

Non-saturating logistic loss; lazy R1 on reals every `r1_interval` D steps (weight
r1_gamma / 2); path-length regularisation every `pl_interval` G steps on half the batch
(weight `pl_weight`, 0 turns it off); style mixing; Adam (0, 0.99) with lazy-regularisation
corrected rates; an EMA of the generator with a half-life of `ema_kimg` thousand images
(ramped up); ADA (`ada`) on everything D sees, its p updated every `ada_interval` steps.
"""

import dataclasses
import functools
import itertools
import os
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from lmi_jax import loop
from lmi_jax.baselines import common
from lmi_jax.baselines.stylegan.ada import ada_adjust, augment
from lmi_jax.baselines.stylegan.networks import (Nets, Params, build_nets, discriminate,
                                                 init_gan, sample_ws, synthesize)
from lmi_jax.models import count_params

FOLDER = "stylegan"  # WORKDIR/stylegan: the GAN's checkpoints, TensorBoard events, preview.
PL_DECAY = 0.01  # EMA rate of the path-length target.
W_AVG_BETA = 0.995  # EMA rate of the tracked mean w (the inversion's and encoder's origin).


@dataclasses.dataclass(frozen=True)
class GanSettings:
  """Static settings of the GAN's training phases."""
  batch_size: int
  g_lr: float
  d_lr: float
  r1_gamma: float
  r1_interval: int
  pl_weight: float
  pl_interval: int
  style_mixing: float
  ema_kimg: float
  ema_rampup: float

  @classmethod
  def from_config(cls, sg: ml_collections.ConfigDict) -> "GanSettings":
    """The settings of config.stylegan."""
    return cls(batch_size=int(sg.batch_size), g_lr=float(sg.g_lr), d_lr=float(sg.d_lr),
               r1_gamma=float(sg.r1_gamma), r1_interval=int(sg.r1_interval),
               pl_weight=float(sg.pl_weight), pl_interval=int(sg.pl_interval),
               style_mixing=float(sg.style_mixing), ema_kimg=float(sg.ema_kimg),
               ema_rampup=float(sg.ema_rampup))


def lazy_adam(lr: float, interval: int, regularised: bool) -> optax.GradientTransformation:
  """Adam (beta1 0, beta2 0.99) with StyleGAN2's correction for lazy regularisation."""
  ratio = interval / (interval + 1) if regularised else 1.0
  return optax.adam(lr * ratio, b1=0.0, b2=0.99 ** ratio, eps=1e-8)


def gan_optimizers(s: GanSettings) -> tuple[optax.GradientTransformation,
                                             optax.GradientTransformation]:
  """(G optimizer, D optimizer)."""
  return (lazy_adam(s.g_lr, s.pl_interval, s.pl_weight > 0),
          lazy_adam(s.d_lr, s.r1_interval, s.r1_gamma > 0))


@flax.struct.dataclass
class GanState:
  """The GAN's training state. key: the raw data of a `common.fast_key`; pl_mean: the
  path-length target; ada_sum / ada_count: D's mean sign on reals since ADA's last update;
  ada_rt, pl_penalty, r1_penalty: their latest values, for the logs."""
  step: jax.Array
  key: jax.Array
  g: Params
  d: Params
  g_ema: Params
  g_opt: Any
  d_opt: Any
  w_avg: jax.Array
  pl_mean: jax.Array
  ada_p: jax.Array
  ada_sum: jax.Array
  ada_count: jax.Array
  ada_rt: jax.Array
  pl_penalty: jax.Array
  r1_penalty: jax.Array


def create_gan_state(nets: Nets, s: GanSettings, key: jax.Array) -> GanState:
  """The state at step 0 (G's EMA starts as G; w_avg, p and the statistics at zero)."""
  k_init, k_run = jax.random.split(key)
  params = init_gan(nets, k_init)
  g_opt, d_opt = gan_optimizers(s)
  zero = jnp.zeros((), jnp.float32)
  return GanState(step=jnp.zeros((), jnp.int32), key=jax.random.key_data(k_run),
                  g=params["g"], d=params["d"], g_ema=params["g"],
                  g_opt=g_opt.init(params["g"]), d_opt=d_opt.init(params["d"]),
                  w_avg=jnp.zeros((nets.w_dim,), jnp.float32), pl_mean=zero, ada_p=zero,
                  ada_sum=zero, ada_count=zero, ada_rt=zero, pl_penalty=zero, r1_penalty=zero)


def phase_key(state: GanState, phase: int) -> jax.Array:
  """The key of one phase (0 G, 1 G reg, 2 D, 3 D reg) of the state's step."""
  key = common.wrap_fast_key(state.key)
  return jax.random.fold_in(jax.random.fold_in(key, state.step), phase)


def real_batch(images: jax.Array, key: jax.Array, batch: int) -> jax.Array:
  """`batch` slices drawn with replacement from images (N, H, W, 1)."""
  return images[jax.random.randint(key, (batch,), 0, images.shape[0])]


def d_main_loss(nets: Nets, d: Params, fakes: jax.Array, reals: jax.Array, p: jax.Array,
                key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """softplus(D(aug fake)) + softplus(-D(aug real)), and D's outputs for logs and ADA.
  Fakes and reals (equal batches) go through D in one pass of two parts."""
  logits = discriminate(nets, d, augment(jnp.concatenate([fakes, reals]), p, key), parts=2)[0]
  logits_fake, logits_real = jnp.split(logits, 2)
  loss = jnp.mean(jax.nn.softplus(logits_fake)) + jnp.mean(jax.nn.softplus(-logits_real))
  return loss, {"d_real": jnp.mean(logits_real), "d_fake": jnp.mean(logits_fake),
                "real_sign": jnp.mean(jnp.sign(logits_real))}


def g_main_loss(nets: Nets, g: Params, d: Params, p: jax.Array, key: jax.Array,
                s: GanSettings) -> tuple[jax.Array, jax.Array]:
  """softplus(-D(aug G(z))) (non-saturating) and the mean w of the batch."""
  k_ws, k_noise, k_aug = jax.random.split(key, 3)
  ws = sample_ws(nets, g, k_ws, s.batch_size, s.style_mixing)
  logits, _ = discriminate(nets, d, augment(synthesize(nets, g, ws, k_noise), p, k_aug))
  return jnp.mean(jax.nn.softplus(-logits)), jnp.mean(ws[:, 0], 0)


def r1_loss(nets: Nets, d: Params, reals: jax.Array, p: jax.Array, key: jax.Array) -> jax.Array:
  """Mean over samples of ||d D(aug x) / d x||^2 at reals (the R1 penalty, unweighted)."""
  grads = jax.grad(lambda x: jnp.sum(discriminate(nets, d, augment(x, p, key))[0]))(reals)
  return jnp.mean(jnp.sum(jnp.square(grads), (1, 2, 3)))


def path_length_loss(nets: Nets, g: Params, pl_mean: jax.Array, key: jax.Array,
                     batch: int) -> tuple[jax.Array, jax.Array]:
  """StyleGAN2's path-length penalty mean (|J_w^T y| - a)^2, y ~ N(0, I / (H W)), and the
  updated target a (an EMA of the lengths)."""
  k_ws, k_noise, k_y = jax.random.split(key, 3)
  ws = sample_ws(nets, g, k_ws, batch, 0.0)
  size = nets.image_size
  y = jax.random.normal(k_y, (batch, size, size, 1)) / size
  grads = jax.grad(lambda w: jnp.sum(synthesize(nets, g, w, k_noise) * y))(ws)
  lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), -1), -1))
  new_mean = pl_mean + PL_DECAY * (jax.lax.stop_gradient(jnp.mean(lengths)) - pl_mean)
  return jnp.mean(jnp.square(lengths - new_mean)), new_mean


def ema_beta(step: jax.Array, s: GanSettings) -> jax.Array:
  """G's EMA decay per step: half-life ema_kimg thousand images, at most ema_rampup times
  the images seen so far."""
  seen = step.astype(jnp.float32) * s.batch_size
  half_life = jnp.minimum(s.ema_kimg * 1000.0, jnp.maximum(seen * s.ema_rampup, 1e-8))
  return 0.5 ** (s.batch_size / half_life)


def make_gan_steps(nets: Nets, s: GanSettings) -> dict[str, Callable]:
  """Jitted phases, each (state, images (N, H, W, 1) in [-1, 1]) -> (state, metrics):
  "g" (main G step, EMA and w_avg update), "g_reg" (path length), "d" (main D step, ADA's
  sign accumulator), "d_reg" (R1). None of them advances the step: `gan_iteration` does."""
  g_opt, d_opt = gan_optimizers(s)

  def g_step(state, images):
    del images
    grad_fn = jax.value_and_grad(lambda g: g_main_loss(nets, g, state.d, state.ada_p,
                                                       phase_key(state, 0), s), has_aux=True)
    (loss, w_mean), grads = grad_fn(state.g)
    updates, g_opt_state = g_opt.update(grads, state.g_opt, state.g)
    g = optax.apply_updates(state.g, updates)
    beta = ema_beta(state.step, s)
    g_ema = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, state.g_ema, g)
    w_avg = state.w_avg + (1 - W_AVG_BETA) * (w_mean - state.w_avg)
    return state.replace(g=g, g_opt=g_opt_state, g_ema=g_ema, w_avg=w_avg), {"loss_g": loss}

  def g_reg_step(state, images):
    del images
    batch = max(1, s.batch_size // 2)

    def loss_fn(g):
      penalty, new_mean = path_length_loss(nets, g, state.pl_mean, phase_key(state, 1), batch)
      return penalty * s.pl_weight * s.pl_interval, (penalty, new_mean)
    (_, (penalty, new_mean)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g)
    updates, g_opt_state = g_opt.update(grads, state.g_opt, state.g)
    return state.replace(g=optax.apply_updates(state.g, updates), g_opt=g_opt_state,
                         pl_mean=new_mean, pl_penalty=penalty), {}

  def d_step(state, images):
    k_reals, k_ws, k_noise, k_loss = jax.random.split(phase_key(state, 2), 4)
    reals = real_batch(images, k_reals, s.batch_size)
    ws = sample_ws(nets, state.g, k_ws, s.batch_size, s.style_mixing)
    fakes = jax.lax.stop_gradient(synthesize(nets, state.g, ws, k_noise))
    grad_fn = jax.value_and_grad(
        lambda d: d_main_loss(nets, d, fakes, reals, state.ada_p, k_loss), has_aux=True)
    (loss, aux), grads = grad_fn(state.d)
    updates, d_opt_state = d_opt.update(grads, state.d_opt, state.d)
    return state.replace(d=optax.apply_updates(state.d, updates), d_opt=d_opt_state,
                         ada_sum=state.ada_sum + aux["real_sign"],
                         ada_count=state.ada_count + 1.0), {"loss_d": loss, **aux}

  def d_reg_step(state, images):
    k_reals, k_aug = jax.random.split(phase_key(state, 3))
    reals = real_batch(images, k_reals, s.batch_size)

    def loss_fn(d):
      penalty = r1_loss(nets, d, reals, state.ada_p, k_aug)
      return penalty * (s.r1_gamma / 2) * s.r1_interval, penalty
    (_, penalty), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d)
    updates, d_opt_state = d_opt.update(grads, state.d_opt, state.d)
    return state.replace(d=optax.apply_updates(state.d, updates), d_opt=d_opt_state,
                         r1_penalty=penalty), {}

  return {"g": jax.jit(g_step), "g_reg": jax.jit(g_reg_step), "d": jax.jit(d_step),
          "d_reg": jax.jit(d_reg_step)}


def gan_iteration(steps: dict[str, Callable], state: GanState, images: jax.Array,
                  s: GanSettings, sg: ml_collections.ConfigDict) -> tuple[GanState, dict]:
  """One training iteration at state.step: G, its lazy path-length step, D, its lazy R1
  step, ADA's p update every ada_interval steps; returns the state of the next step and
  the same metrics every step (the lazy ones at their latest values)."""
  step = int(state.step)
  state, g_metrics = steps["g"](state, images)
  if s.pl_weight > 0 and step % s.pl_interval == 0:
    state, _ = steps["g_reg"](state, images)
  state, d_metrics = steps["d"](state, images)
  if s.r1_gamma > 0 and step % s.r1_interval == 0:
    state, _ = steps["d_reg"](state, images)
  if (step + 1) % int(sg.ada_interval) == 0:
    sign_mean = state.ada_sum / jnp.maximum(state.ada_count, 1.0)
    p = ada_adjust(state.ada_p, sign_mean, s.batch_size * int(sg.ada_interval),
                   float(sg.ada_target), float(sg.ada_kimg))
    zero = jnp.zeros((), jnp.float32)
    state = state.replace(ada_p=p, ada_sum=zero, ada_count=zero, ada_rt=sign_mean)
  metrics = {**g_metrics, **d_metrics, "ada_p": state.ada_p, "ada_rt": state.ada_rt,
             "pl_mean": state.pl_mean, "pl_penalty": state.pl_penalty,
             "r1_penalty": state.r1_penalty}
  return state.replace(step=state.step + 1), metrics


@functools.partial(jax.jit, static_argnums=0)
def sample_images(nets: Nets, g: Params, z: jax.Array) -> jax.Array:
  """G(z) with fixed noise: z (N, z_dim) -> (N, H, W, 1) in [0, 1]."""
  w = nets.mapping.apply({"params": g["mapping"]}, z)
  ws = jnp.broadcast_to(w[:, None], (z.shape[0], nets.num_ws, nets.w_dim))
  return jnp.clip((synthesize(nets, g, ws, None) + 1) / 2, 0, 1)


def train_gan(config: ml_collections.ConfigDict, workdir: str,
              images: np.ndarray) -> common.LoopResult:
  """Trains (resuming) the GAN in workdir/stylegan (checkpoints, TensorBoard, preview.png of
  G_ema samples above training slices) until stylegan.num_steps or time_limit_min.
  images: (N, H, W, 1) in [0, 1]."""
  sg = config.stylegan
  nets, s = build_nets(config), GanSettings.from_config(sg)
  state = jax.jit(create_gan_state, static_argnums=(0, 1))(nets, s,
                                                           common.fast_key(int(config.seed)))
  logging.info("StyleGAN: G %d, D %d parameters, %d training slices", count_params(state.g),
               count_params(state.d), images.shape[0])
  steps = make_gan_steps(nets, s)
  data = jnp.asarray(images, jnp.float32) * 2.0 - 1.0
  sample_z = jax.random.normal(common.fast_key(int(config.seed) + 1), (8, nets.z_dim))
  reals = images[np.linspace(0, len(images) - 1, 8).astype(int)]
  schedule = loop.schedule_from_config("stylegan", sg, lr_keys=("stylegan.g_lr", "stylegan.d_lr"))
  return common.train_loop(
      lambda state, batch: gan_iteration(steps, state, batch, s, sg),
      lambda start: itertools.repeat(data), state, os.path.join(workdir, FOLDER), schedule,
      lambda state: {"samples": sample_images(nets, state.g_ema, sample_z), "real": reals})

