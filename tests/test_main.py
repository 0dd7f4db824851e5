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


def test_bad_training_value_names_the_key(tmp_path):
  status, stderr = main_py(tmp_path, "--config.training.p_uncond=1.5")
  assert status == 2
  [line] = error_lines(stderr)
  assert "training.p_uncond" in line
