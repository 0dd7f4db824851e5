"""Few-shot unpaired CycleGAN (Zhu et al. 2017), the paper's first baseline.

As in the paper it sees every target training slice but the source slices of only a
fraction (`cyclegan.source_fraction`, 11%) of the training subjects, chosen by a seeded
draw among the training split's subjects; the source and target batches are drawn
independently, so no registered pair is ever used.

Networks (Zhu et al.'s, Johnson et al.'s ResNet generator; instance norm throughout; in
`cyclegan_networks`):
  - generators G: source -> target and F: target -> source, c7s1-k, d2k, d4k, n residual
    blocks R4k, u2k, uk, c7s1-1 with reflection padding; tanh mapped to [0, 1]. k =
    `cyclegan.generator_features`, n = `cyclegan.generator_blocks`.
  - discriminators D_T, D_S: PatchGAN C64-C128-... with 4x4 convolutions and LeakyReLU 0.2,
    `cyclegan.discriminator_layers` stride-2 layers. Three give the 70 x 70 receptive field
    of the original at 256 px (0.55 of a 128 px slice); two give 34 x 34, the same share of
    a 64 px slice.
Losses: least-squares GAN, cycle L1 x 10, identity L1 x 0.5 x 10 (G(t) ~ t, F(s) ~ s); the
discriminators see fakes from a 50-image pool (half the time an older fake) and their loss
is halved. Adam 2e-4, betas (0.5, 0.999), the rate constant for the first half of
`cyclegan.num_steps` and decaying linearly to 0 over the second.

Sizes for the 2-core CPU at 64 x 64 (the defaults): k = 16 and 6 residual blocks (the
original's count at 128 px), discriminators of 32 base channels and 2 stride-2 layers,
batches of 1 (the original's). G has 0.49M parameters (1.97 MB exported), each D 0.17M.
Measured on the phantom PD -> T1 config (nice 10, the CPU shared with other jobs at load
8-13): 0.37-1.16 s per step, median 0.70 s, 35 s for the first (compiling) step; 0.35 s
in a 10-step benchmark at load ~6. The 3,500 default steps (12 passes over the 300 target
slices, 106 over the 33 few-shot source slices) took 40 minutes there (2,061 in the first
25); at 0.35 s per step they take 20. At 128 px with a GPU use the original's sizes: generator_features 64,
generator_blocks 6 (9 at 256 px), discriminator_features 64, discriminator_layers 3.

Training writes checkpoints to WORKDIR/cyclegan/checkpoints (a rerun resumes; stops at
`cyclegan.time_limit_min`), TensorBoard scalars and a preview (rows: source, G(source),
registered target, F(G(source))) to WORKDIR/cyclegan, and G's parameters to
WORKDIR/baselines/cyclegan.msgpack (+ .json).
"""

import dataclasses
import functools
import os
from collections.abc import Iterator
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
from lmi_jax.baselines.cyclegan_networks import PatchDiscriminator, ResnetGenerator
from lmi_jax.data import load_dataset
from lmi_jax.errors import InputError, key_checker
from lmi_jax.models import count_params

NAME = "cyclegan"
NUM_PREVIEW = 4  # Training slices in the preview.


# --------------------------------------------------------------------------------------
# Settings, state and the step


@dataclasses.dataclass(frozen=True)
class Settings:
  """Static settings of the step (hashable: jit takes it as a static argument)."""
  generator: ResnetGenerator
  discriminator: PatchDiscriminator
  lr: float
  cycle_weight: float
  identity_weight: float
  pool_size: int


def settings_from_config(config: ml_collections.ConfigDict) -> Settings:
  """The step's settings from `config.cyclegan`, checked."""
  section = config.cyclegan
  check_config(config)
  return Settings(
      generator=ResnetGenerator(int(section.generator_features), int(section.generator_blocks)),
      discriminator=PatchDiscriminator(int(section.discriminator_features),
                                       int(section.discriminator_layers)),
      lr=float(section.lr),
      cycle_weight=float(section.cycle_weight), identity_weight=float(section.identity_weight),
      pool_size=int(section.pool_size))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raise InputError naming the first unusable `cyclegan.*` key."""
  section = config.cyclegan
  common.check_loop_config("cyclegan", section)
  require = key_checker("cyclegan", section)
  require(0.0 < section.source_fraction <= 1.0, "source_fraction",
          "use a fraction of the training subjects in (0, 1]")
  for key in ("generator_features", "discriminator_features", "discriminator_layers"):
    require(section[key] >= 1, key, "use a count >= 1")
  require(section.generator_blocks >= 0, "generator_blocks", "use a count >= 0")
  require(section.pool_size >= 0, "pool_size", "use a count >= 0 (0: no pool)")
  for key in ("cycle_weight", "identity_weight"):
    require(section[key] >= 0, key, "use a weight >= 0")
  if config.data.image_size % 4:
    raise InputError(f"data.image_size={config.data.image_size}: the CycleGAN generator "
                     "downsamples twice; use a size divisible by 4.")
  smallest = 2 ** (section.discriminator_layers + 1)
  if config.data.image_size < smallest:
    raise InputError(f"cyclegan.discriminator_layers={section.discriminator_layers}: too many "
                     f"for {config.data.image_size} px slices; use fewer (they need "
                     f">= {smallest} px).")


def learning_rate(lr: float, num_steps: jax.Array | int) -> optax.Schedule:
  """lr for the first half of num_steps (which may be traced), then linearly down to 0."""
  half = jnp.maximum(num_steps / 2.0, 1.0)
  return lambda step: lr * jnp.clip((num_steps - step) / half, 0.0, 1.0)


def optimizer(lr: float, num_steps: jax.Array | int) -> optax.GradientTransformation:
  """Adam with betas (0.5, 0.999) under `learning_rate`."""
  return optax.adam(learning_rate(lr, num_steps), b1=0.5, b2=0.999)


@flax.struct.dataclass
class State:
  """Everything a resumed run needs.

  step: () int32 steps taken. params: {"g": source -> target, "f": target -> source,
  "d_target", "d_source"}. opt_g, opt_d: optax states of {"g", "f"} and of the two
  discriminators. pool_target, pool_source: (pool_size, H, W, 1) earlier fakes of each
  domain; pool_count: (2,) int32 fakes stored in them. key: (4,) uint32 data of a
  `common.fast_key`.
  """
  step: jax.Array
  params: Any
  opt_g: Any
  opt_d: Any
  pool_target: jax.Array
  pool_source: jax.Array
  pool_count: jax.Array
  key: jax.Array


def generator_params(params: Any) -> dict:
  return {"g": params["g"], "f": params["f"]}


def discriminator_params(params: Any) -> dict:
  return {"d_target": params["d_target"], "d_source": params["d_source"]}


@functools.partial(jax.jit, static_argnames=("settings", "image_size"))
def init_params(key: jax.Array, settings: Settings, image_size: int) -> dict:
  """Initial parameters of the four networks for (B, image_size, image_size, 1) inputs."""
  x = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
  keys = jax.random.split(key, 4)
  return {"g": settings.generator.init(keys[0], x)["params"],
          "f": settings.generator.init(keys[1], x)["params"],
          "d_target": settings.discriminator.init(keys[2], x)["params"],
          "d_source": settings.discriminator.init(keys[3], x)["params"]}


def create_state(seed: int, settings: Settings, image_size: int) -> State:
  """A fresh state: networks initialised from `common.fast_key(seed)`, empty pools, the
  step's key (the pools' draws) fast_key(seed + 1)."""
  params = init_params(common.fast_key(seed), settings, image_size)
  pool_shape = (settings.pool_size, image_size, image_size, 1)
  adam = optimizer(settings.lr, 1)  # The schedule does not enter Adam's state.
  # Two buffers, not one array twice: the step donates each of them.
  return State(step=jnp.zeros((), jnp.int32), params=params,
               opt_g=adam.init(generator_params(params)),
               opt_d=adam.init(discriminator_params(params)),
               pool_target=jnp.zeros(pool_shape, jnp.float32),
               pool_source=jnp.zeros(pool_shape, jnp.float32),
               pool_count=jnp.zeros((2,), jnp.int32),
               key=jax.random.key_data(common.fast_key(seed + 1)))


def query_pool(pool: jax.Array, count: jax.Array, fakes: jax.Array,
               key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Shrivastava et al.'s history of fakes, one image at a time.

  While the pool is not full each fake is stored and returned; after that each fake is,
  with probability 1/2, swapped for a random stored one (which is returned instead),
  else returned as is.

  Args:
    pool: (P, H, W, C) stored fakes, the first `count` valid; P = 0 returns `fakes`.
    count: () int32.
    fakes: (B, H, W, C) this step's fakes.
  Returns:
    (the new pool, the new count, (B, H, W, C) images for the discriminator).
  """
  size = pool.shape[0]
  if size == 0:
    return pool, count, fakes

  def one(carry, inputs):
    pool, count = carry
    fake, k = inputs
    swap_key, index_key = jax.random.split(k)
    filling = count < size
    swap = jax.random.uniform(swap_key) < 0.5
    index = jax.random.randint(index_key, (), 0, size)
    returned = jnp.where(filling | ~swap, fake, pool[index])
    slot = jnp.where(filling, count, index)
    pool = pool.at[slot].set(jnp.where(filling | swap, fake, pool[slot]))
    return (pool, count + filling.astype(count.dtype)), returned

  (pool, count), returned = jax.lax.scan(one, (pool, count),
                                         (fakes, jax.random.split(key, fakes.shape[0])))
  return pool, count, returned


def lsgan(scores: jax.Array, real: bool) -> jax.Array:
  """Least-squares GAN loss: mean (D - 1)^2 for real, mean D^2 for fake."""
  return jnp.mean(jnp.square(scores - (1.0 if real else 0.0)))


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(a - b))


def generator_losses(g_params: dict, d_params: dict, source: jax.Array, target: jax.Array,
                     settings: Settings) -> tuple[jax.Array, tuple[dict, dict]]:
  """The generators' loss on unpaired source (B, H, W, 1) and target (B, H, W, 1) slices.

  Returns:
    (total, (parts: gan / cycle / identity, fakes: "target" G(s), "source" F(t))).
  """
  g = functools.partial(settings.generator.apply, {"params": g_params["g"]})
  f = functools.partial(settings.generator.apply, {"params": g_params["f"]})
  d_target = functools.partial(settings.discriminator.apply, {"params": d_params["d_target"]})
  d_source = functools.partial(settings.discriminator.apply, {"params": d_params["d_source"]})
  fake_target, fake_source = g(source), f(target)
  gan = lsgan(d_target(fake_target), True) + lsgan(d_source(fake_source), True)
  cycle = l1(f(fake_target), source) + l1(g(fake_source), target)
  identity = l1(g(target), target) + l1(f(source), source)
  total = (gan + settings.cycle_weight * cycle +
           settings.cycle_weight * settings.identity_weight * identity)
  parts = {"g_gan": gan, "cycle": cycle, "identity": identity, "g_total": total}
  return total, (parts, {"target": fake_target, "source": fake_source})


def discriminator_losses(d_params: dict, source: jax.Array, target: jax.Array,
                         fake_source: jax.Array, fake_target: jax.Array,
                         settings: Settings) -> tuple[jax.Array, dict]:
  """Halved least-squares loss of both discriminators on real and (pooled) fake slices."""
  d_target = functools.partial(settings.discriminator.apply, {"params": d_params["d_target"]})
  d_source = functools.partial(settings.discriminator.apply, {"params": d_params["d_source"]})
  loss_target = 0.5 * (lsgan(d_target(target), True) + lsgan(d_target(fake_target), False))
  loss_source = 0.5 * (lsgan(d_source(source), True) + lsgan(d_source(fake_source), False))
  return loss_target + loss_source, {"d_target": loss_target, "d_source": loss_source}


@functools.partial(jax.jit, static_argnames=("settings",), donate_argnums=(0,))
def train_step(state: State, batch: dict[str, jax.Array], num_steps: jax.Array,
               settings: Settings) -> tuple[State, dict[str, jax.Array]]:
  """One update of both generators, then of both discriminators on pooled fakes.

  Args:
    batch: "source" (B, H, W, 1) few-shot source slices and "target" (B, H, W, 1) target
      slices, drawn independently, in [0, 1].
    num_steps: () int32 length of the run, which sets the learning-rate decay; an argument,
      not a setting, so runs of any length share the compiled step.
  Returns:
    The new state and () metrics: g_gan, cycle, identity, g_total, d_target, d_source.
  """
  source, target = batch["source"], batch["target"]
  g_params, d_params = generator_params(state.params), discriminator_params(state.params)
  (_, (parts, fakes)), g_grads = jax.value_and_grad(generator_losses, has_aux=True)(
      g_params, d_params, source, target, settings)
  adam = optimizer(settings.lr, num_steps)
  updates, opt_g = adam.update(g_grads, state.opt_g, g_params)
  g_params = optax.apply_updates(g_params, updates)

  key = jax.random.fold_in(common.wrap_fast_key(state.key), state.step)
  target_key, source_key = jax.random.split(key)
  pool_target, count_target, fake_target = query_pool(
      state.pool_target, state.pool_count[0], jax.lax.stop_gradient(fakes["target"]),
      target_key)
  pool_source, count_source, fake_source = query_pool(
      state.pool_source, state.pool_count[1], jax.lax.stop_gradient(fakes["source"]),
      source_key)
  (_, d_parts), d_grads = jax.value_and_grad(discriminator_losses, has_aux=True)(
      d_params, source, target, fake_source, fake_target, settings)
  updates, opt_d = adam.update(d_grads, state.opt_d, d_params)
  d_params = optax.apply_updates(d_params, updates)

  new_state = state.replace(step=state.step + 1, params={**g_params, **d_params},
                            opt_g=opt_g, opt_d=opt_d, pool_target=pool_target,
                            pool_source=pool_source,
                            pool_count=jnp.stack([count_target, count_source]))
  return new_state, {**parts, **d_parts}


# --------------------------------------------------------------------------------------
# Data: the few-shot subjects and unpaired batches


def few_shot_subjects(subjects: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """The subjects whose source slices the CycleGAN sees.

  Args:
    subjects: (N,) int subject of each training slice.
    fraction: share of the distinct subjects, in (0, 1].
  Returns:
    Sorted distinct subject ids: round(fraction x count) of them, at least one, drawn
    without replacement by a generator seeded with `seed`.
  """
  distinct = np.unique(subjects)
  if len(distinct) == 0:
    raise InputError("the training split is empty; raise data.num_train_subjects.")
  count = min(len(distinct), max(1, int(round(fraction * len(distinct)))))
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(distinct, count, replace=False))


def few_shot_rows(train: dict[str, np.ndarray], fraction: float, seed: int) -> np.ndarray:
  """(M,) rows of the training split whose source slices the CycleGAN sees."""
  chosen = few_shot_subjects(train["subject"], fraction, seed)
  return np.flatnonzero(np.isin(train["subject"], chosen))


def unpaired_batches(source: np.ndarray, target: np.ndarray, seed: int, start_step: int,
                     batch_size: int, hflip: bool) -> Iterator[dict[str, np.ndarray]]:
  """Batches of steps start_step + 1, ...: "source" and "target" (batch_size, H, W, 1),
  rows and flips of each domain drawn independently from (seed, step)."""
  step = start_step + 1
  while True:
    batch = {}
    for stream, (name, images) in enumerate((("source", source), ("target", target))):
      rows, flips = common.draw_rows(np.random.default_rng([seed, step, stream]), len(images),
                                     batch_size, hflip)
      batch[name] = common.take_rows(images, rows, flips)
    yield batch
    step += 1


# --------------------------------------------------------------------------------------
# Public API: train, load, translate


@functools.partial(jax.jit, static_argnames=("generator",))
def _apply(params: Any, x: jax.Array, generator: ResnetGenerator) -> jax.Array:
  return generator.apply({"params": params}, x)


def preview_images(state: State, settings: Settings, source: np.ndarray,
                   target: np.ndarray) -> dict[str, np.ndarray]:
  """Rows of the preview for (n, H, W, 1) source slices and their registered targets."""
  translated = _apply(state.params["g"], jnp.asarray(source), settings.generator)
  cycled = _apply(state.params["f"], translated, settings.generator)
  return {"source": source, "translation": np.asarray(translated), "target": target,
          "cycle": np.asarray(cycled)}


def train(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Trains the few-shot CycleGAN of `config.cyclegan` on workdir's data (see the module
  docstring for what it writes), resuming from WORKDIR/cyclegan/checkpoints."""
  settings = settings_from_config(config)
  section = config.cyclegan
  train_split = load_dataset(config, workdir)["train"]
  rows = few_shot_rows(train_split, float(section.source_fraction), int(config.seed))
  source = train_split["source"][rows]
  target = train_split["target"]
  logging.info("CycleGAN: source slices of %d of %d training subjects (%d slices); %d target "
               "slices", len(np.unique(train_split["subject"][rows])),
               len(np.unique(train_split["subject"])), len(source), len(target))
  state = create_state(int(config.seed), settings, config.data.image_size)
  logging.info("CycleGAN: G %d, D %d parameters (each of two)",
               count_params(state.params["g"]), count_params(state.params["d_target"]))
  preview_source = train_split["source"][:NUM_PREVIEW]
  preview_target = train_split["target"][:NUM_PREVIEW]
  result = common.train_loop(
      functools.partial(train_step, num_steps=np.int32(section.num_steps), settings=settings),
      lambda start: unpaired_batches(source, target, int(config.seed), start,
                                     int(section.batch_size), bool(section.hflip)),
      state, os.path.join(workdir, NAME), loop.schedule_from_config(NAME, section),
      preview=lambda s: preview_images(s, settings, preview_source, preview_target))
  common.export(workdir, NAME, result.state.params["g"], {
      **common.run_info(NAME, result, config),
      "source_subjects": [int(s) for s in np.unique(train_split["subject"][rows])]})


def load(config: ml_collections.ConfigDict, path: str) -> Any:
  """G's parameters (source -> target) exported by `train`, checked against `config`."""
  settings = settings_from_config(config)
  x = jax.ShapeDtypeStruct((1, config.data.image_size, config.data.image_size, 1), jnp.float32)
  template = jax.eval_shape(settings.generator.init, jax.random.key(0), x)["params"]
  return common.load_params(path, template, hint=(
      "use the cyclegan.generator_* keys it was trained with (its .json beside it)"))


def translate(config: ml_collections.ConfigDict, params: Any, source: np.ndarray,
              key: jax.Array) -> np.ndarray:
  """G applied to (N, H, W, 1) source slices in [0, 1] -> (N, H, W, 1) float32 in [0, 1].

  `key` is unused: the generator is deterministic (taken for the methods' common API).
  """
  del key
  settings = settings_from_config(config)
  return common.apply_in_batches(
      functools.partial(_apply, params, generator=settings.generator), source,
      int(config.sampling.batch_size))
