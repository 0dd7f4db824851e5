"""Fixtures shared by test files: tiny BraTS-like cases and a tiny model trained on them
(built once per test session: tests/made_scans.py).

Every test and every `main.py` subprocess it starts shares one persistent XLA compilation
cache for the session: most tests compile the same tiny networks again, and on a 2-core CPU
compiling is most of their time. The variables are set here, before anything imports JAX, so
that this process and every child (which inherits os.environ) read them; a cache dir set by the
caller is kept.
"""

import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="lmi_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
else:
  _CACHE = None
# Compiles of under a second are not worth a file read.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402

from made_scans import brats_like, train_briefly, write_cases  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _CACHE is not None:
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
  root = tmp_path_factory.mktemp("cases")
  write_cases(root)
  return root


@pytest.fixture(scope="session")
def trained_on_cases(cases, tmp_path_factory):
  """(config, workdir) of a tiny model trained 4 steps on the cases' T1w."""
  return train_briefly(brats_like(cases), str(tmp_path_factory.mktemp("run")))
