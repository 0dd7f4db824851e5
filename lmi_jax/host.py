"""How XLA sees the host CPU; must be set before JAX initialises a backend."""

import os


def split_host(count: int) -> None:
  """Makes XLA see the host CPU as `count` devices (config.host_devices; 0: leave it).

  XLA reads the flag when JAX first initialises a backend, which importing lmi_jax does
  not do; an XLA_FLAGS that already sets the count wins. GPUs are not affected.
  """
  flags_now = os.environ.get("XLA_FLAGS", "")
  if count > 0 and "xla_force_host_platform_device_count" not in flags_now:
    os.environ["XLA_FLAGS"] = f"{flags_now} --xla_force_host_platform_device_count={count}".strip()
