"""The training mode: data-parallel denoising score matching with LMI conditioning.

Reads top to bottom: the state and optimizer, the pmapped `train_step`, the sample grid, and
`train_score_model(config, workdir)`, which runs the step through `lmi_jax.loop` (reports,
time limit, divergence check, checkpoints); the host input pipeline is
`lmi_jax.data.train_batches`, checkpoints are `lmi_jax.checkpoints`.

Parallelism: `jax.pmap` over the local devices, the global batch `training.batch_size` split
evenly over every device of every host, gradients averaged with `lax.pmean`. Several hosts
join through `jax.distributed.initialize` (`training.num_processes` > 1); each feeds its
own rows of the global batch.

Determinism: the global batch of step s (slice indices and flips) is drawn from
(config.seed, s), and each example's noise from (the state's key, s, its row in the global
batch). So a run does not depend on how many devices or hosts share the batch, and a run
resumed from a checkpoint (which holds the step, parameters, EMA, optimizer state and key)
ends with exactly the parameters of an uninterrupted one.
"""

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metrics
from flax import jax_utils

from lmi_jax import checkpoints, files, lmi, loop, losses, sampling, settings, writers
from lmi_jax.baselines import BASELINES
from lmi_jax.baselines.common import write_png
from lmi_jax.data import load_dataset, train_batches
from lmi_jax.errors import InputError
from lmi_jax.models import (count_params, create_model, feeding_of, init_variables, lmi_score,
                            unconditional_score)
from lmi_jax.sde import SDE, sde_from_config

AXIS = "batch"  # pmap axis over the devices.


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the training step (hashable: jit/pmap take it as a static argument,
  so runs with equal settings in one process share their compiled code)."""
  model: nn.Module
  sde: SDE
  lmi_cfg: lmi.LMIConfig
  feeding: str
  weighting: losses.Weighting
  p_uncond: float
  lr: float
  warmup_steps: int
  grad_clip: float
  ema_decay: float
  cond_aug: losses.CondAug

  @property
  def in_channels(self) -> int:
    """Network input channels: x_t and the LMI features."""
    return 1 + len(self.lmi_cfg.features)


def step_config(config: ml_collections.ConfigDict) -> StepConfig:
  """The `StepConfig` of a whole config."""
  training = config.training
  return StepConfig(
      model=create_model(config.model), sde=sde_from_config(config.sde),
      lmi_cfg=lmi.from_config(config.lmi), feeding=feeding_of(config.model),
      weighting=losses.Weighting(kind=str(training.weighting), eps=float(training.eps),
                                 p_mean=float(training.edm_p_mean),
                                 p_std=float(training.edm_p_std)),
      p_uncond=float(training.p_uncond), lr=float(training.lr),
      warmup_steps=int(training.warmup_steps), grad_clip=float(training.grad_clip),
      ema_decay=float(training.ema_decay),
      cond_aug=losses.CondAug(prob=float(training.cond_aug), knots=int(training.cond_aug_knots),
                              noise=float(training.cond_aug_noise)))


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs; replicated over devices in training.

  step: () int32 steps taken. params, ema_params: the network's parameters and their EMA.
  opt_state: optax state. key: (2,) uint32 raw key data of the training noise (plain
  arrays, so checkpoints hold it like any other array).
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  key: jax.Array


TrainMetrics = metrics.Collection.create(
    loss=metrics.Average.from_output("loss"),
    grad_norm=metrics.Average.from_output("grad_norm"))


# --------------------------------------------------------------------------------------
# The optimizer and the initial state (the training.* checks: lmi_jax/settings.py)


def learning_rate(cfg: StepConfig) -> optax.Schedule:
  """Linear warm-up over cfg.warmup_steps (step 0 already moves), then constant."""
  warmup = max(cfg.warmup_steps, 1)
  return lambda step: cfg.lr * jnp.minimum((step + 1) / warmup, 1.0)


def create_optimizer(cfg: StepConfig) -> optax.GradientTransformation:
  """Adam (the paper's lr, the authors' betas) behind clipping by global norm."""
  adam = optax.adam(learning_rate(cfg), b1=0.9, b2=0.999, eps=1e-8)
  if cfg.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adam)
  return adam


@functools.partial(jax.jit, static_argnames=("cfg", "image_size"))
def init_params(key: jax.Array, cfg: StepConfig, image_size: int) -> Any:
  """The network's initial parameters for (B, image_size, image_size, cfg.in_channels) inputs."""
  return init_variables(cfg.model, key, image_size, cfg.in_channels)["params"]


def create_train_state(key: jax.Array, cfg: StepConfig, image_size: int) -> TrainState:
  """Freshly initialised state; only the parameters' initialisation is compiled, the rest
  (zeros and copies) is cheaper run eagerly than compiled."""
  init_key, noise_key = jax.random.split(key)
  params = init_params(init_key, cfg, image_size)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=create_optimizer(cfg).init(params),
                    key=jax.random.key_data(noise_key))


# --------------------------------------------------------------------------------------
# The step


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
  """The EMA decay at a step: min(decay, (1 + step) / (10 + step)).

  Without the warm-up a 0.999 decay still holds 37% of the random initialisation after
  1000 steps; with it the average forgets the first steps as fast as training leaves them.
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def train_step(state: TrainState, batch: dict[str, jax.Array],
               cfg: StepConfig) -> tuple[TrainState, Any]:
  """One optimisation step on one device's share of the global batch (run under pmap).

  Args:
    state: the replicated state.
    batch: "image" (b, H, W, 1) target slices in [0, 1]; "index" (b,) int32 rows of the
      global batch, which pick each example's noise.
  Returns:
    The new state and this step's `TrainMetrics` (the same on every device).
  """
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
  keys = jax.vmap(functools.partial(jax.random.fold_in, step_key))(batch["index"])

  def loss_fn(params):
    return losses.dsm_loss(cfg.model, params, cfg.sde, cfg.lmi_cfg, batch["image"], keys,
                           p_uncond=cfg.p_uncond, feeding=cfg.feeding,
                           weighting=cfg.weighting, cond_aug=cfg.cond_aug)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  # Equal shares per device, so the mean of device means is the global batch mean.
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = create_optimizer(cfg).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = optax.incremental_update(params, state.ema_params,
                                        1.0 - ema_decay(state.step, cfg.ema_decay))
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                            opt_state=opt_state)
  return new_state, TrainMetrics.gather_from_model_output(
      axis_name=AXIS, loss=loss, grad_norm=optax.global_norm(grads))


p_train_step = jax.pmap(train_step, axis_name=AXIS, static_broadcasted_argnums=(2,),
                        donate_argnums=(0,))


# --------------------------------------------------------------------------------------
# Sample grid


@functools.partial(jax.jit, static_argnames=("cfg", "num_steps", "eps"))
def sample_grid(params: Any, references: jax.Array, key: jax.Array, cfg: StepConfig,
                num_steps: int, eps: float) -> jax.Array:
  """References, samples conditioned on their LMI, and unconditional samples, stacked.

  Args:
    params: the network's parameters (the EMA).
    references: (n, H, W, 1) training slices; LMI(F; F, x_t) of each guides its sample.
    num_steps, eps: reverse-SDE steps and last time (`sampling.em_sampler`).
  Returns:
    (3 H, n W) grey image in [0, 1]: rows references / conditional / unconditional.
  """
  variables = {"params": params}
  conditional = lmi_score(cfg.model, variables, cfg.sde, cfg.lmi_cfg, references,
                          feeding=cfg.feeding)
  unconditional = unconditional_score(cfg.model, variables, cfg.sde,
                                      len(cfg.lmi_cfg.features), feeding=cfg.feeding)
  rows = [references]
  for fn, k in zip((conditional, unconditional), jax.random.split(key)):
    rows.append(sampling.em_sampler(fn, cfg.sde, references.shape, k, num_steps, eps=eps)[0])
  grid = jnp.clip(jnp.stack(rows), 0.0, 1.0)[..., 0]  # (3, n, H, W)
  num_rows, n, h, w = grid.shape
  return grid.transpose(0, 2, 1, 3).reshape(num_rows * h, n * w)


# --------------------------------------------------------------------------------------
# The run


def initialize_distributed(training: ml_collections.ConfigDict) -> None:
  """Joins the hosts of a multi-host run; must run before anything touches a device."""
  if training.num_processes <= 1:
    return
  if not training.coordinator_address:
    raise InputError(f"training.num_processes={training.num_processes} needs "
                     "training.coordinator_address (host:port of process 0).")
  if not 0 <= training.process_id < training.num_processes:
    raise InputError(f"training.process_id={training.process_id}: give each host its own "
                     f"index in [0, {training.num_processes}).")
  jax.distributed.initialize(coordinator_address=training.coordinator_address,
                             num_processes=training.num_processes,
                             process_id=training.process_id)


def write_samples(writer: writers.MetricWriter, workdir: str, step: int, grid: np.ndarray) -> None:
  """The sample grid (H, W) in [0, 1] as workdir/samples/step_<step>.png and a TensorBoard image."""
  folder = os.path.join(workdir, "samples")
  os.makedirs(folder, exist_ok=True)
  write_png(os.path.join(folder, f"step_{step:07d}.png"), grid)
  writer.write_images(step, {"samples": grid[None, :, :, None]})


def loop_step(cfg: StepConfig) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """`p_train_step` as `loop.run` takes it: the replicated state and batch in, the new state
  and the step's () metrics (loss, grad_norm over the global batch) out."""
  def step(rstate: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rstate, step_metrics = p_train_step(rstate, batch, cfg)
    return rstate, step_metrics.unreplicate().compute()
  return step


def run_steps(config: ml_collections.ConfigDict, workdir: str, cfg: StepConfig,
              state: TrainState, images: np.ndarray, manager: checkpoints.CheckpointManager,
              writer: writers.MetricWriter) -> TrainState:
  """Steps from state.step to training.num_steps through `loop.run`, pmapped, with reports,
  sample grids every training.sample_every steps (and at the end of the call) and
  checkpoints of the state itself.

  Args:
    state: the state to start from, on host or the default device.
    images: (N, H, W, 1) training slices.
  Returns:
    The final state, unreplicated, as host arrays.
  """
  training = config.training
  previews = images[:training.num_samples]
  if training.crop_size:
    previews = train_batches.brain_crops(previews, np.random.default_rng(config.seed),
                                         training.crop_size)

  def batches(start_step: int) -> Iterator[dict]:
    return jax_utils.prefetch_to_device(
        train_batches.host_batches(images, config.seed, start_step, training.batch_size,
                                   training.hflip, jax.process_index(), jax.process_count(),
                                   jax.local_device_count(), training.crop_size),
        training.prefetch, axis_name=AXIS)

  def preview(step: int, now: TrainState) -> None:
    grid = sample_grid(now.ema_params, jnp.asarray(previews),
                       jax.random.fold_in(jax.random.key(config.seed), step), cfg,
                       training.sample_steps, config.sampling.eps)
    write_samples(writer, workdir, step, np.asarray(grid))

  schedule = loop.schedule_from_config("training", training, preview_key="sample_every",
                                       lr_keys=("training.lr", "training.grad_clip"))
  lr = learning_rate(cfg)
  return loop.run(loop_step(cfg), batches, state, schedule, manager, writer,
                  pack=lambda now, wall_s: now, axis_name=AXIS,
                  preview=preview if training.sample_every else None,
                  scalars=lambda step: {"lr": float(lr(step - 1))}).state


def start_from_shipped(state: TrainState, config: ml_collections.ConfigDict,
                       folder: str) -> TrainState:
  """A fresh `state` (step 0, so the learning-rate warm-up runs again; its optimizer state
  holds no values yet) with the parameters and their EMA set to the shipped model in
  `folder`: fine-tuning."""
  params = checkpoints.load_shipped(config, folder, key="training.init_from")[0]["params"]
  logging.info("Starting from the shipped model %s", folder)
  return state.replace(params=params, ema_params=jax.tree.map(np.copy, params))


def train_score_model(config: ml_collections.ConfigDict, workdir: str,
                       images: np.ndarray | None = None) -> TrainState:
  """Trains the model of `config` into workdir, resuming from its latest checkpoint.

  `images` are the (N, H, W, 1) training slices; None loads them (`load_dataset`, cached in
  workdir/cache: the training split's targets and data.extra_targets' slices).

  Writes (the first host only) workdir/config.json, TensorBoard events in workdir and sample
  grids in workdir/samples; every host takes part in the checkpoints in workdir/checkpoints.
  Returns:
    The final state, unreplicated, as host arrays.
  """
  training = config.training
  initialize_distributed(training)
  settings.check_global_batch(training, jax.device_count())
  lead_host = jax.process_index() == 0
  files.prepare_dir(workdir)

  if images is None:
    dataset = load_dataset(config, workdir)
    images = np.concatenate([dataset[split]["target"] for split in ("train", "extra")
                             if split in dataset])
  if len(images) == 0:
    raise InputError("the training split is empty; raise data.num_train_subjects.")
  cfg = step_config(config)
  key, size = jax.random.key(config.seed), training.crop_size or config.data.image_size
  manager = checkpoints.manager(checkpoints.score_folder(workdir), training.max_to_keep)
  if manager.latest_step() is None:
    state = create_train_state(key, cfg, size)
    if training.init_from:
      state = start_from_shipped(state, config, checkpoints.resolve_folder(training.init_from))
  else:
    # A resumed run takes every value from its checkpoint, so only the state's shapes are
    # needed: traced, not compiled (compiling the initialisation takes 25 s for real_t1).
    shapes = jax.eval_shape(lambda k: create_train_state(k, cfg, size), key)
    state = checkpoints.restore_latest(
        manager, jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes))
  # Written once the checkpoint is known to fit: a resume refused for another network keeps
  # the config.json that the error message points to.
  if lead_host:
    files.atomic_write(os.path.join(workdir, "config.json"),
                       config.to_json_best_effort(indent=2, sort_keys=True).encode())
  logging.info("Score network %s: %d parameters; %d training slices; %d device(s) on %d host(s)",
               config.model.name, count_params(state.params), len(images),
               jax.device_count(), jax.process_count())
  with contextlib.closing(writers.TensorBoardWriter(workdir if lead_host else None)) as writer:
    if int(state.step) == 0:
      writer.write_hparams(settings.flat_hparams(config))
    state = run_steps(config, workdir, cfg, state, images, manager, writer)
  manager.close()  # Waits for the last checkpoint's background writes.
  return state


def train(config: ml_collections.ConfigDict, workdir: str) -> None:
  """`--mode=train`: the model `training.method` names, the score model or a baseline of
  `lmi_jax.baselines` (each resumes from its own checkpoints in workdir)."""
  method = settings.check_training_method(config.training)
  if method == "score":
    train_score_model(config, workdir)
    return
  BASELINES[method].train(config, workdir)
