"""The supervised ceiling: the score model's U-Net trained to regress target from source.

Not zero-shot: it trains on the registered source -> target pairs of every training slice
and tells how much of the target the source's information allows. The network is the
project's NCSN++ of `config.model` (`create_model`), fed the source slice alone
(in_channels 1) with a constant noise label (0: the Fourier embedding of std 1), its output
the translation; dropout as in the score model's training.

Loss (`supervised.loss`): L1 by default. The per-pixel L1 minimiser is the conditional
median, which keeps a tissue boundary sharp where the source leaves its position in doubt
(the mean of L2 blurs it, and the K-means Dice of the table reads those boundaries); it is
the loss of pix2pix-style supervised translation. `l2` gives the conditional mean, the
PSNR-optimal estimate.

Adam (`supervised.lr`, the paper's 3e-4 for this network; betas 0.9, 0.999), random
horizontal flips of the pairs. On the 2-core CPU at 64 x 64 the CPU config's 0.45M
parameter network (1.8 MB exported) took 1.3-1.5 s per batch of 8 (median 1.44 s, nice 10
at load 8-13; 1.2 s at load 7) and 138 s for the first, compiling step: 502 steps in 15
minutes.

Training writes checkpoints to WORKDIR/supervised/checkpoints (a rerun resumes; stops at
`supervised.time_limit_min`), TensorBoard scalars and a preview (rows: source, prediction,
target) to WORKDIR/supervised, and the parameters to WORKDIR/baselines/supervised.msgpack
(+ .json).
"""

import dataclasses
import functools
import os
from collections.abc import Iterator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from lmi_jax import loop
from lmi_jax.baselines import common
from lmi_jax.data import load_dataset
from lmi_jax.errors import InputError, key_checker
from lmi_jax.models import count_params, create_model, init_variables

NAME = "supervised"
NUM_PREVIEW = 4  # Training slices in the preview.
NOISE_LABEL = 0.0  # The constant the network's noise-level embedding reads.
LOSSES = ("l1", "l2")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Static settings of the step (hashable: jit takes it as a static argument)."""
  model: nn.Module
  loss: str
  lr: float


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raise InputError naming the first unusable `supervised.*` key."""
  section = config.supervised
  common.check_loop_config("supervised", section)
  require = key_checker("supervised", section)
  require(section.loss in LOSSES, "loss", f"use one of {LOSSES}")


def settings_from_config(config: ml_collections.ConfigDict) -> Settings:
  """The step's settings from `config.supervised` and `config.model`, checked."""
  check_config(config)
  section = config.supervised
  return Settings(model=create_model(config.model), loss=str(section.loss),
                  lr=float(section.lr))


@flax.struct.dataclass
class State:
  """step: () int32 steps taken; params: the network's; opt_state: Adam's; key: (4,)
  uint32 data of the dropout's `common.fast_key`."""
  step: jax.Array
  params: Any
  opt_state: Any
  key: jax.Array


def optimizer(settings: Settings) -> optax.GradientTransformation:
  return optax.adam(settings.lr, b1=0.9, b2=0.999)


@functools.partial(jax.jit, static_argnames=("settings", "image_size"))
def init_params(key: jax.Array, settings: Settings, image_size: int) -> Any:
  """The network's initial parameters for (B, image_size, image_size, 1) inputs."""
  return init_variables(settings.model, key, image_size, 1)["params"]


def create_state(seed: int, settings: Settings, image_size: int) -> State:
  """A fresh state: the network initialised from `common.fast_key(seed)`, the dropout's
  key fast_key(seed + 1)."""
  params = init_params(common.fast_key(seed), settings, image_size)
  return State(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=optimizer(settings).init(params),
               key=jax.random.key_data(common.fast_key(seed + 1)))


def predict(model: nn.Module, params: Any, source: jax.Array, train: bool = False,
            key: jax.Array | None = None) -> jax.Array:
  """(B, H, W, 1) source slices -> (B, H, W, 1) unclipped predicted targets; `train` runs
  dropout with `key`."""
  labels = jnp.full((source.shape[0],), NOISE_LABEL, jnp.float32)
  rngs = {"dropout": key} if train else {}
  return model.apply({"params": params}, source, labels, train=train, rngs=rngs)


def regression_loss(prediction: jax.Array, target: jax.Array, loss: str) -> jax.Array:
  """Mean absolute (l1) or squared (l2) error over every pixel of the batch."""
  error = prediction - target
  return jnp.mean(jnp.abs(error)) if loss == "l1" else jnp.mean(jnp.square(error))


@functools.partial(jax.jit, static_argnames=("settings",), donate_argnums=(0,))
def train_step(state: State, batch: dict[str, jax.Array],
               settings: Settings) -> tuple[State, dict[str, jax.Array]]:
  """One Adam step on "source" and "target" (B, H, W, 1) registered pairs in [0, 1].

  Returns:
    The new state and () metrics: loss (the chosen one), l1, mse, grad_norm.
  """
  key = jax.random.fold_in(common.wrap_fast_key(state.key), state.step)

  def loss_fn(params):
    prediction = predict(settings.model, params, batch["source"], train=True, key=key)
    return regression_loss(prediction, batch["target"], settings.loss), prediction

  (loss, prediction), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer(settings).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  error = prediction - batch["target"]
  metrics = {"loss": loss, "l1": jnp.mean(jnp.abs(error)), "mse": jnp.mean(jnp.square(error)),
             "grad_norm": optax.global_norm(grads)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def paired_batches(source: np.ndarray, target: np.ndarray, seed: int, start_step: int,
                   batch_size: int, hflip: bool) -> Iterator[dict[str, np.ndarray]]:
  """Batches of steps start_step + 1, ...: "source", "target" (batch_size, H, W, 1) of the
  same rows, flipped together, drawn from (seed, step)."""
  step = start_step + 1
  while True:
    rows, flips = common.draw_rows(np.random.default_rng([seed, step]), len(source), batch_size,
                                   hflip)
    yield {"source": common.take_rows(source, rows, flips),
           "target": common.take_rows(target, rows, flips)}
    step += 1


@functools.partial(jax.jit, static_argnames=("model",))
def _translate_batch(params: Any, source: jax.Array, model: nn.Module) -> jax.Array:
  return jnp.clip(predict(model, params, source), 0.0, 1.0)


def train(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Trains the supervised U-Net on workdir's paired training slices (see the module
  docstring for what it writes), resuming from WORKDIR/supervised/checkpoints."""
  settings = settings_from_config(config)
  section = config.supervised
  train_split = load_dataset(config, workdir)["train"]
  source, target = train_split["source"], train_split["target"]
  if len(source) == 0:
    raise InputError("the training split is empty; raise data.num_train_subjects.")
  state = create_state(int(config.seed), settings, config.data.image_size)
  logging.info("Supervised %s: %d parameters, %d training pairs, %s loss", config.model.name,
               count_params(state.params), len(source), settings.loss)

  def preview(s: State) -> dict[str, np.ndarray]:
    x = source[:NUM_PREVIEW]
    return {"source": x, "prediction": np.asarray(_translate_batch(s.params, x, settings.model)),
            "target": target[:NUM_PREVIEW]}

  result = common.train_loop(
      functools.partial(train_step, settings=settings),
      lambda start: paired_batches(source, target, int(config.seed), start,
                                   int(section.batch_size), bool(section.hflip)),
      state, os.path.join(workdir, NAME), loop.schedule_from_config(NAME, section),
      preview=preview)
  common.export(workdir, NAME, result.state.params,
                {**common.run_info(NAME, result, config), "model": config.model.to_dict()})


def load(config: ml_collections.ConfigDict, path: str) -> Any:
  """The parameters exported by `train`, checked against the network of `config.model`."""
  settings = settings_from_config(config)
  template = jax.eval_shape(
      lambda key: init_variables(settings.model, key, config.data.image_size, 1),
      jax.random.key(0))["params"]
  return common.load_params(path, template, hint=(
      "use the model.* keys it was trained with (the \"model\" of its .json beside it)"))


def translate(config: ml_collections.ConfigDict, params: Any, source: np.ndarray,
              key: jax.Array) -> np.ndarray:
  """(N, H, W, 1) source slices in [0, 1] -> (N, H, W, 1) float32 predictions clipped to
  [0, 1]. `key` is unused: inference runs without dropout (taken for the common API)."""
  del key
  settings = settings_from_config(config)
  return common.apply_in_batches(
      functools.partial(_translate_batch, params, model=settings.model), source,
      int(config.sampling.batch_size))
