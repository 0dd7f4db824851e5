"""Fixtures shared by test files: tiny BraTS-like cases and a tiny model trained on them
(built once per test session: tests/made_scans.py)."""

import pytest

from made_scans import brats_like, train_briefly, write_cases


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
  root = tmp_path_factory.mktemp("cases")
  write_cases(root)
  return root


@pytest.fixture(scope="session")
def trained_on_cases(cases, tmp_path_factory):
  """(config, workdir) of a tiny model trained 4 steps on the cases' T1w."""
  return train_briefly(brats_like(cases), str(tmp_path_factory.mktemp("run")))
