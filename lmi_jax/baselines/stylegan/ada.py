"""Adaptive discriminator augmentation (ADA, Karras et al. 2020): x-flip, 90-degree rotation,
integer translation (1/8 of the size, reflected), brightness and contrast, each applied to
reals and fakes with probability p; p moves by sign(E[sign D(real)] - ada_target) * images /
(ada_kimg * 1000) every `ada_interval` steps (`training.gan_iteration`).
"""

import jax
import jax.numpy as jnp

# ADA's augmentation strengths (Karras et al. 2020, augment.py defaults).
TRANSLATE_FRACTION = 0.125
BRIGHTNESS_STD = 0.2
CONTRAST_LOG2_STD = 0.5


def augment(images: jax.Array, p: jax.Array, key: jax.Array) -> jax.Array:
  """ADA's differentiable pipeline; each transform applies to a sample with probability p.

  x-flip, rotation by a random multiple of 90 degrees, integer translation by up to 1/8 of
  the size (reflected at the border), brightness + N(0, 0.2), contrast x 2^N(0, 0.5) (about
  0, the middle of [-1, 1]).
  Args:
    images: (N, H, W, C), square; p: scalar in [0, 1].
  """
  n, h, w, _ = images.shape
  keys = jax.random.split(key, 10)
  apply = lambda k: jax.random.uniform(k, (n,)) < p
  per_sample = lambda mask: mask[:, None, None, None]

  flip = apply(keys[0]) & jax.random.bernoulli(keys[1], 0.5, (n,))
  images = jnp.where(per_sample(flip), images[:, :, ::-1], images)

  turns = jnp.where(apply(keys[2]), jax.random.randint(keys[3], (n,), 0, 4), 0)
  rotated = images
  for k in range(1, 4):
    rotated = jnp.where(per_sample(turns == k), jnp.rot90(images, k, axes=(1, 2)), rotated)
  images = rotated

  shift = jnp.round(jax.random.uniform(keys[4], (n, 2), minval=-TRANSLATE_FRACTION,
                                       maxval=TRANSLATE_FRACTION) * jnp.array([h, w]))
  shift = jnp.where(apply(keys[5])[:, None], shift, 0).astype(jnp.int32)

  def reflect(index, size):
    index = jnp.abs(index)
    return (size - 1) - jnp.abs((size - 1) - index)
  rows = reflect(jnp.arange(h)[None, :] - shift[:, :1], h)
  cols = reflect(jnp.arange(w)[None, :] - shift[:, 1:], w)
  images = images[jnp.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]

  bright = jnp.where(apply(keys[6]), jax.random.normal(keys[7], (n,)) * BRIGHTNESS_STD, 0.0)
  contrast = jnp.where(apply(keys[8]),
                       jnp.exp2(jax.random.normal(keys[9], (n,)) * CONTRAST_LOG2_STD), 1.0)
  return (images + per_sample(bright)) * per_sample(contrast)


def ada_adjust(p: jax.Array, sign_mean: jax.Array, num_images: int, target: float,
               ada_kimg: float) -> jax.Array:
  """ADA's update of p: up when E[sign D(real)] (the overfitting heuristic r_t) exceeds the
  target, down otherwise, by num_images / (ada_kimg * 1000), kept in [0, 1]."""
  step = jnp.sign(sign_mean - target) * num_images / (ada_kimg * 1000.0)
  return jnp.clip(p + step, 0.0, 1.0)
