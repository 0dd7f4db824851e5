"""The CPU-fast layers of lmi_jax.models.layers against XLA's and Flax's own operations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import threadpoolctl

from lmi_jax.models import layers

DN = ("NHWC", "HWIO", "NHWC")


def grouped_fir(x, taps, gain, stride, dilation, pad):
  """The FIR filter as one depthwise (grouped) convolution: the textbook form."""
  k = np.outer(taps, taps).astype(np.float32)
  k = (k * gain / k.sum())[::-1, ::-1]
  c = x.shape[-1]
  w = jnp.tile(jnp.asarray(k)[:, :, None, None], (1, 1, 1, c))
  return jax.lax.conv_general_dilated(x, w, (stride, stride), (pad, pad),
                                      lhs_dilation=(dilation, dilation),
                                      dimension_numbers=DN, feature_group_count=c)


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 1)])
def test_fir_resampling_matches_grouped_convolution(taps):
  x = jax.random.normal(jax.random.key(0), (2, 12, 10, 3))
  p = len(taps) - 2
  np.testing.assert_allclose(layers.upsample(x, True, taps),
                             grouped_fir(x, taps, 4.0, 1, 2, ((p + 1) // 2 + 1, p // 2 + 1)),
                             atol=1e-5)
  np.testing.assert_allclose(layers.downsample(x, True, taps),
                             grouped_fir(x, taps, 1.0, 2, 1, ((p + 1) // 2, p // 2)), atol=1e-5)
  assert layers.upsample(x, True, taps).shape == (2, 24, 20, 3)
  assert layers.downsample(x, True, taps).shape == (2, 6, 5, 3)


@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((2, 9, 8, 5), 3, 1, "SAME"),
    ((2, 9, 8, 5), 3, 2, "SAME"),
    ((2, 9, 9, 5), 3, 2, "VALID"),
    ((2, 8, 8, 5), 1, 1, "SAME"),
    ((1, 8, 7, 5), 3, 2, ((2, 1), (0, 1))),
])
def test_conv_value_and_gradients_match_lax(shape, kernel, stride, padding):
  kx, kw, kg = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kw, (kernel, kernel, shape[-1], 7))

  def ref(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)

  def ours(x, w):
    return layers.conv_general_dilated(x, w, (stride, stride), padding)

  y, ref_vjp = jax.vjp(ref, x, w)
  y_ours, our_vjp = jax.vjp(ours, x, w)
  np.testing.assert_allclose(y_ours, y, atol=1e-5)
  g = jax.random.normal(kg, y.shape)
  for ours_grad, ref_grad in zip(our_vjp(g), ref_vjp(g)):
    np.testing.assert_allclose(ours_grad, ref_grad, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("size,kernel,stride,padding", [
    ((9, 8), 3, 1, "SAME"),
    ((9, 8), 3, 2, "SAME"),
    ((9, 8), 3, 2, "VALID"),
    ((9, 8), 1, 1, "SAME"),
    ((9, 8), 5, 2, ((2, 1), (0, 3))),
    ((9, 8), 3, 1, ((0, 2), (1, 0))),
    ((2, 1), 3, 1, "SAME"),
])
def test_kernel_gradient_under_vmap_sums_the_examples(size, kernel, stride, padding):
  """The training loss maps the network over examples; the kernel gradient must still be
  the sum of the per-example gradients. Each example holds 2 images, so the host callback's
  flattened rows also run from one image into the next."""
  kx, kw = jax.random.split(jax.random.key(2))
  x = jax.random.normal(kx, (3, 2, *size, 4))
  w = jax.random.normal(kw, (kernel, kernel, 4, 6))

  def loss(conv, w):
    per_example = jax.vmap(lambda xi: jnp.sum(jnp.sin(conv(xi, w))))(x)
    return jnp.sum(per_example)

  blas_threads = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()]
  ours = jax.jit(jax.grad(lambda w: loss(
      lambda a, b: layers.conv_general_dilated(a, b, (stride, stride), padding), w)))(w)
  ref = jax.grad(lambda w: loss(lambda a, b: jax.lax.conv_general_dilated(
      a, b, (stride, stride), padding, dimension_numbers=DN), w))(w)
  np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=1e-5)
  # The callback runs BLAS on one thread only while it is inside.
  assert [lib["num_threads"] for lib in threadpoolctl.threadpool_info()] == blas_threads


def test_group_norm_matches_flax():
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(3), (2, 6, 5, 16))
  ref = nn.GroupNorm(num_groups=4, epsilon=1e-6)
  variables = ref.init(jax.random.key(0), x)
  variables = jax.tree_util.tree_map(
      lambda v: v + jax.random.normal(jax.random.key(4), v.shape), variables)
  ours = layers.GroupNorm(num_groups=4)
  assert jax.tree_util.tree_structure(ours.init(jax.random.key(0), x)) == \
      jax.tree_util.tree_structure(variables)
  np.testing.assert_allclose(ours.apply(variables, x), ref.apply(variables, x), atol=1e-4)
  grads = [jax.grad(lambda v, m=m: jnp.sum(jnp.sin(m.apply(v, x))))(variables) for m in (ours, ref)]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-4),
                         *grads)


@pytest.mark.parametrize("kwargs,named", [
    ({"rhs_dilation": (2, 2)}, "dilation"),
    ({"feature_group_count": 5}, "feature_group_count=5"),
    ({"precision": jax.lax.Precision.HIGHEST}, "precision"),
    ({"dimension_numbers": jax.lax.conv_dimension_numbers((1, 5, 9, 8), (7, 5, 3, 3),
                                                          ("NCHW", "OIHW", "NCHW"))},
     "dimension_numbers"),
])
def test_conv_refuses_what_it_does_not_compute(kwargs, named):
  x, w = jnp.zeros((1, 9, 8, 5)), jnp.zeros((3, 3, 5, 7))
  with pytest.raises(NotImplementedError, match=named):
    layers.conv_general_dilated(x, w, (1, 1), "SAME", **kwargs)


def test_network_gradients_equal_with_the_host_kernel_gradient_on_and_off():
  """The config switch model.host_kernel_grad changes how, not what: same parameters, same
  loss gradient (to float32 rounding) as XLA's own kernel gradient."""
  from configs import tiny
  from lmi_jax.models import create_model, init_variables
  config = tiny.get_config()
  config.model.init_scale = 1.0  # A zero output layer would leave every other gradient zero.
  # Two levels: strided and resampling convolutions too, and attention at a resolution.
  config.model.ch_mult, config.model.attn_resolutions = (1, 2), (16,)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  # The switch leaves the parameters as they are: one initialisation, jitted (op by op it
  # compiles every initialiser on its own, half a minute).
  params = jax.jit(lambda key: init_variables(create_model(config.model), key, 32, 3))(
      jax.random.key(1))["params"]
  grads = []
  for flag in (True, False):
    config.model.host_kernel_grad = flag
    model = create_model(config.model)
    loss = lambda p: jnp.sum(model.apply({"params": p}, x, jnp.ones((2,)), train=False) ** 2)
    # Jitted: run op by op, every layer's primitives would compile one at a time (minutes).
    grads.append(jax.jit(jax.grad(loss))(params))
  flat_on, flat_off = (jax.tree.leaves(g) for g in grads)
  assert len(flat_on) == len(flat_off) > 10
  assert sum(float(jnp.abs(a).sum()) > 0 for a in flat_on) > 0.9 * len(flat_on)
  for a, b in zip(flat_on, flat_off):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)
