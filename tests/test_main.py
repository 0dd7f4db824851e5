"""main.py: bad input ends with a one-line message and status 2, never a traceback."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_py(tmp_path, *flags):
  """Runs main.py on the tiny config; returns (exit status, stderr)."""
  args = [sys.executable, "main.py", "--config=configs/tiny.py", f"--workdir={tmp_path}", *flags]
  done = subprocess.run(args, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                        capture_output=True, text=True, timeout=120)
  return done.returncode, done.stderr


def error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("flag,named", [
    ("--config.training.lr_typo=1", "'lr_typo'"),
    ("--config.trainin.lr=1", 'Did you mean "training"'),
])
def test_misspelt_config_key_is_an_error(tmp_path, flag, named):
  status, stderr = main_py(tmp_path, flag)
  assert status == 2
  assert "Traceback" not in stderr
  [line] = error_lines(stderr)
  assert named in line


def test_bad_data_root_is_a_one_line_error(tmp_path):
  status, stderr = main_py(tmp_path, "--config.data.dataset=nifti",
                           f"--config.data.root={tmp_path / 'missing'}")
  assert status == 2
  assert "Traceback" not in stderr
  [line] = error_lines(stderr)
  assert "data.root" in line and "missing" in line


@pytest.mark.parametrize("flag,named", [
    ("--config.lmi.patch_size=4", "lmi.patch_size must be a positive odd number, got 4"),
    ("--config.sampling.num_steps=-5", "sampling.num_steps=-5"),
    ("--config.sampling.method=rk45", "sampling.method='rk45'"),
    ("--config.sampling.nfe=0", "sampling.nfe=0"),
    ("--config=configs/nope.py", "configs/nope.py"),
])
def test_impossible_values_and_missing_config_are_one_line_errors(tmp_path, flag, named):
  status, stderr = main_py(tmp_path, "--mode=sample", flag)
  assert status == 2
  assert "Traceback" not in stderr
  [line] = error_lines(stderr)
  assert named in line


def test_a_workdir_that_is_a_file_is_named(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  args = [sys.executable, "main.py", "--config=configs/tiny.py", f"--workdir={path}"]
  done = subprocess.run(args, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 2 and "Traceback" not in done.stderr
  [line] = error_lines(done.stderr)
  assert str(path) in line and "not a folder" in line


def test_tuple_keys_take_comma_separated_values():
  import main
  from configs import tiny
  config = tiny.get_config()
  config.eval.methods = ("lmi,sdedit",)  # What ml_collections makes of --config.eval.methods=lmi,sdedit.
  config.lmi.features = ("cross", "self")
  main.split_commas(config)
  assert config.eval.methods == ("lmi", "sdedit")
  assert config.lmi.features == ("cross", "self")


def test_bad_training_value_names_the_key(tmp_path):
  status, stderr = main_py(tmp_path, "--config.training.p_uncond=1.5")
  assert status == 2
  [line] = error_lines(stderr)
  assert "training.p_uncond" in line


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
