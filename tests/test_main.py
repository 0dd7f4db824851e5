"""main.py: comma-separated tuple keys, host devices, the eval table (bad input and faults:
tests/test_reliability.py)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tuple_keys_take_comma_separated_values():
  import main
  from configs import tiny
  config = tiny.get_config()
  config.eval.methods = ("lmi,sdedit",)  # What ml_collections makes of --config.eval.methods=lmi,sdedit.
  config.lmi.features = ("cross", "self")
  main.split_commas(config)
  assert config.eval.methods == ("lmi", "sdedit")
  assert config.lmi.features == ("cross", "self")


@pytest.mark.parametrize("xla_flags,expected", [("", 2), ("--xla_force_host_platform_device_count=3", 3)])
def test_host_devices_split_the_cpu_unless_xla_flags_say_otherwise(xla_flags, expected):
  code = "import main, jax; from lmi_jax import host; host.split_host(2); print(jax.local_device_count())"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags}
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert done.stdout.split() == [str(expected)]


def test_eval_prints_the_table_it_writes(tmp_path):
  """The model-free methods need no checkpoint: the quickest whole --mode=eval run."""
  args = [sys.executable, "main.py", "--config=configs/tiny.py", f"--workdir={tmp_path}",
          "--mode=eval", "--config.eval.methods=('histmatch','identity')",
          "--config.eval.max_slices=2"]
  done = subprocess.run(args, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  with open(tmp_path / "eval" / "report.md") as f:
    written = f.read()
  assert written.startswith("| metric | histmatch | identity |")
  assert written.strip() in done.stdout
