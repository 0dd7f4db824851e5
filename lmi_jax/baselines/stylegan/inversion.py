"""In-domain inversion (Zhu et al. 2020): the encoder's training and the inversion of images
into the generator's W+ space.

The encoder E maps an image to W+ (as w_avg plus a residual from a zero-initialised head) and
is trained on target training slices, with G and D frozen, to minimise ||x - G(E(x))||^2 +
feature_weight * F(x, G(E(x))) + adv_weight * softplus(-D(G(E(x)))); F is the distance of
the discriminator's first `feature_blocks` + 1 feature maps, each unit-normalised over
channels (the stand-in for a pretrained perceptual network, which cannot be downloaded here).
An inversion starts from w = E(source) and runs `inversion_steps` Adam steps on W+ for all
slices at once (the StyleGAN2 projector's rate schedule: 5% ramp-up, cosine ramp-down over
the last 25%), minimising the same pixel + feature loss to the source slice plus
domain_weight * ||w - E(G(w))||^2 (Zhu et al.'s domain-regularised objective, off by
default), with the generator's noise fixed, and returns G(w).
"""

import dataclasses
import functools
import itertools
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from lmi_jax import checkpoints, loop, progress
from lmi_jax.baselines import common
from lmi_jax.baselines.stylegan.networks import (Nets, Params, build_nets, d_features,
                                                 discriminate, encode, init_encoder, synthesize)
from lmi_jax.baselines.stylegan.training import FOLDER, GanState, real_batch
from lmi_jax.models import count_params

ENCODER_FOLDER = "encoder"  # WORKDIR/stylegan/encoder: the encoder's checkpoints, events, preview.


@dataclasses.dataclass(frozen=True)
class InversionLoss:
  """Weights of the reconstruction loss shared by the encoder and the inversion."""
  feature_weight: float
  feature_blocks: int
  adv_weight: float = 0.0
  domain_weight: float = 0.0


def feature_distance(features_a: Sequence[jax.Array],
                     features_b: Sequence[jax.Array]) -> jax.Array:
  """Per-sample mean over layers of the spatial mean of ||a - b||^2, each feature vector
  unit-normalised over channels (as LPIPS, without learned weights); (N,)."""
  def unit(f):
    return f * jax.lax.rsqrt(jnp.sum(jnp.square(f), -1, keepdims=True) + 1e-10)
  per_layer = [jnp.mean(jnp.sum(jnp.square(unit(a) - unit(b)), -1), (1, 2))
               for a, b in zip(features_a, features_b)]
  return jnp.mean(jnp.stack(per_layer), 0)


def reconstruction_loss(nets: Nets, model: dict[str, Params], ws: jax.Array,
                        targets: jax.Array, target_features: Sequence[jax.Array],
                        weights: InversionLoss) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-sample loss of G(ws) against targets (N, H, W, 1) in [-1, 1]: pixel MSE +
  feature_weight * D-feature distance (+ adv_weight * softplus(-D(G(ws))) + domain_weight *
  mean (ws - E(G(ws)))^2 when those are > 0). model: {"g", "d", "encoder", "w_avg"}
  (the encoder only for the domain term). Returns ((N,), per-sample parts)."""
  images = synthesize(nets, model["g"], ws, None)
  pixel = jnp.mean(jnp.square(images - targets), (1, 2, 3))
  feats = d_features(nets, model["d"], images, weights.feature_blocks)
  parts = {"pixel": pixel, "feature": feature_distance(feats, target_features)}
  loss = pixel + weights.feature_weight * parts["feature"]
  if weights.adv_weight > 0:
    parts["adv"] = jax.nn.softplus(-discriminate(nets, model["d"], images)[0])
    loss = loss + weights.adv_weight * parts["adv"]
  if weights.domain_weight > 0:
    reencoded = encode(nets, model["encoder"], images, model["w_avg"])
    parts["domain"] = jnp.mean(jnp.square(ws - reencoded), (1, 2))
    loss = loss + weights.domain_weight * parts["domain"]
  return loss, parts


def encoder_loss_weights(sg: ml_collections.ConfigDict) -> InversionLoss:
  """The encoder's loss weights from config.stylegan."""
  return InversionLoss(float(sg.encoder_feature_weight), int(sg.feature_blocks),
                       adv_weight=float(sg.encoder_adv_weight))


def inversion_loss_weights(sg: ml_collections.ConfigDict) -> InversionLoss:
  """The inversion's loss weights from config.stylegan."""
  return InversionLoss(float(sg.inversion_feature_weight), int(sg.feature_blocks),
                       domain_weight=float(sg.inversion_domain_weight))


@flax.struct.dataclass
class EncoderState:
  """The encoder's training state; gan_step: the GAN step it is trained against."""
  step: jax.Array
  gan_step: jax.Array
  key: jax.Array
  params: Params
  opt: Any


def make_encoder_step(nets: Nets, weights: InversionLoss, lr: float,
                      batch: int) -> tuple[Callable, optax.GradientTransformation]:
  """Jitted (state, images in [-1, 1], frozen {"g", "d", "w_avg"}) -> (state, metrics),
  one Adam step on a batch drawn (and x-flipped) from the state's key and step, and its
  optimizer."""
  optimizer = optax.adam(lr)

  def step(state, images, frozen):
    key = jax.random.fold_in(common.wrap_fast_key(state.key), state.step)
    k_batch, k_flip = jax.random.split(key)
    x = real_batch(images, k_batch, batch)
    x = jnp.where(jax.random.bernoulli(k_flip, 0.5, (batch, 1, 1, 1)), x[:, :, ::-1], x)
    target_features = d_features(nets, frozen["d"], x, weights.feature_blocks)

    def loss_fn(params):
      ws = encode(nets, params, x, frozen["w_avg"])
      loss, parts = reconstruction_loss(nets, frozen, ws, x, target_features, weights)
      return jnp.mean(loss), jax.tree.map(jnp.mean, parts)
    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt = optimizer.update(grads, state.opt, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt=opt), {"loss_e": loss, **parts}

  return jax.jit(step), optimizer


@functools.partial(jax.jit, static_argnums=0)
def reconstruct(nets: Nets, encoder: Params, g: Params, w_avg: jax.Array,
                images: jax.Array) -> jax.Array:
  """G(E(x)) with fixed noise: (N, H, W, 1) in [0, 1] -> (N, H, W, 1) in [0, 1]."""
  ws = encode(nets, encoder, images * 2.0 - 1.0, w_avg)
  return jnp.clip((synthesize(nets, g, ws, None) + 1) / 2, 0, 1)


def train_encoder(config: ml_collections.ConfigDict, workdir: str, images: np.ndarray,
                  gan: GanState) -> common.LoopResult:
  """Trains (resuming) the encoder against the GAN state `gan` in workdir/stylegan/encoder
  until encoder_steps or encoder_time_limit_min; a checkpoint trained against another GAN
  step is discarded."""
  sg = config.stylegan
  nets = build_nets(config)
  folder = os.path.join(workdir, FOLDER, ENCODER_FOLDER)
  checkpoint_folder = os.path.join(folder, common.CHECKPOINT_DIR)
  gan_step = int(gan.step)
  previous = checkpoints.latest_step(checkpoint_folder)
  if previous is not None:
    stored = checkpoints.manager(checkpoint_folder, create=False).restore(
        previous, args=ocp.args.StandardRestore())
    trained_against = int(np.asarray(stored["state"]["gan_step"]))
    if trained_against != gan_step:
      logging.warning("StyleGAN encoder: %s was trained against GAN step %d, not %d; "
                      "training it afresh.", folder, trained_against, gan_step)
      shutil.rmtree(checkpoint_folder)
  batch = int(sg.encoder_batch_size)
  step_fn, optimizer = make_encoder_step(nets, encoder_loss_weights(sg), float(sg.encoder_lr),
                                         batch)
  params = jax.jit(init_encoder, static_argnums=0)(nets, common.fast_key(int(config.seed) + 2))
  logging.info("StyleGAN encoder: %d parameters", count_params(params))
  state = EncoderState(step=jnp.zeros((), jnp.int32), gan_step=jnp.asarray(gan_step, jnp.int32),
                       key=jax.random.key_data(common.fast_key(int(config.seed) + 3)),
                       params=params, opt=optimizer.init(params))
  frozen = jax.device_put({"g": gan.g_ema, "d": gan.d, "w_avg": gan.w_avg})
  data = jnp.asarray(images, jnp.float32) * 2.0 - 1.0
  shown = images[np.linspace(0, len(images) - 1, 8).astype(int)]
  schedule = loop.LoopSchedule(
      num_steps=int(sg.encoder_steps), log_every=int(sg.log_every),
      checkpoint_every=int(sg.checkpoint_every), preview_every=int(sg.preview_every),
      time_limit_min=float(sg.encoder_time_limit_min),
      time_limit_key="stylegan.encoder_time_limit_min", lr_keys=("stylegan.encoder_lr",))
  return common.train_loop(
      lambda state, batch: step_fn(state, batch, frozen), lambda start: itertools.repeat(data),
      state, folder, schedule,
      lambda state: {"target": shown, "reconstruction": reconstruct(
          nets, state.params, frozen["g"], frozen["w_avg"], shown)})


def inversion_lr_scale(step: jax.Array, total: jax.Array) -> jax.Array:
  """The StyleGAN2 projector's learning-rate schedule: a linear ramp-up over the first 5% of
  the steps and a cosine ramp-down over the last 25% (so the latent settles)."""
  t = (step.astype(jnp.float32) + 1.0) / total
  down = 0.5 - 0.5 * jnp.cos(jnp.pi * jnp.minimum(1.0, (1.0 - t) / 0.25))
  return down * jnp.minimum(1.0, t / 0.05)


def make_inversion(nets: Nets, weights: InversionLoss,
                   lr: float) -> tuple[Callable, Callable, Callable]:
  """Jitted (start, run, render): start(model, targets) -> carry; run(model, carry, first,
  num_steps, total) -> (carry, per-sample loss, pixel MSE) after Adam steps first ..
  first + num_steps - 1 of `total` (one lax.fori_loop; the rate follows
  `inversion_lr_scale`); render(model, ws) -> G(ws) in [0, 1].
  carry = (ws (N, num_ws, w_dim), Adam state, targets, target features)."""
  adam = optax.scale_by_adam()

  def start(model, targets):
    ws = encode(nets, model["encoder"], targets, model["w_avg"])
    return ws, adam.init(ws), targets, d_features(nets, model["d"], targets,
                                                  weights.feature_blocks)

  def loss_fn(model, ws, targets, target_features):
    loss, parts = reconstruction_loss(nets, model, ws, targets, target_features, weights)
    return jnp.sum(loss), (loss, parts["pixel"])

  def run(model, carry, first, num_steps, total):
    ws, opt, targets, target_features = carry

    def body(step, state):
      ws, opt, _, _ = state
      (_, (loss, pixel)), grads = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(
          model, ws, targets, target_features)
      direction, opt = adam.update(grads, opt, ws)
      return ws - lr * inversion_lr_scale(step, total) * direction, opt, loss, pixel
    zeros = jnp.zeros(targets.shape[0])
    ws, opt, loss, pixel = jax.lax.fori_loop(first, first + num_steps, body,
                                             (ws, opt, zeros, zeros))
    return (ws, opt, targets, target_features), loss, pixel

  def render(model, ws):
    return jnp.clip((synthesize(nets, model["g"], ws, None) + 1.0) / 2.0, 0.0, 1.0)

  return jax.jit(start), jax.jit(run, static_argnums=3), jax.jit(render)


def invert(config: ml_collections.ConfigDict, params: dict[str, Params], targets: np.ndarray,
           num_steps: int | None = None, log: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Inverts images into W+: start at E(x), `num_steps` (default stylegan.inversion_steps)
  Adam steps on the inversion loss, all images at once.

  Args:
    params: the exported parameters ({"g", "d", "encoder", "w_avg"}, see `load`).
    targets: (N, H, W, 1) in [0, 1].
  Returns:
    (ws (N, num_ws, w_dim), G(ws) (N, H, W, 1) in [0, 1]).
  """
  sg = config.stylegan
  nets = build_nets(config)
  num_steps = int(sg.inversion_steps if num_steps is None else num_steps)
  # At least ten progress lines: an inversion of a whole split runs for minutes on a CPU.
  chunk = max(1, min(int(sg.inversion_log_every), -(-num_steps // 10)))
  start, run, render = make_inversion(nets, inversion_loss_weights(sg), float(sg.inversion_lr))
  model = jax.device_put(params)
  carry = jax.block_until_ready(start(model, jnp.asarray(targets, jnp.float32) * 2.0 - 1.0))
  done, reporter = 0, progress.Progress(num_steps)
  while done < num_steps:
    todo = min(chunk, num_steps - done)
    carry, loss, pixel = run(model, carry, jnp.asarray(done), todo, jnp.asarray(num_steps))
    done += todo
    if log:
      loss, pixel = float(loss.mean()), float(pixel.mean())  # Waits for the chunk to finish.
      report = reporter.update(done, force=True)
      logging.info("StyleGAN inversion of %d slices: step %d/%d, loss %.4g, pixel MSE %.4g, "
                   "%.1f s, ETA %.0f s", targets.shape[0], done, num_steps, loss, pixel,
                   report.elapsed_s, report.eta_s)
  return np.asarray(carry[0]), np.asarray(render(model, carry[0]), np.float32)
