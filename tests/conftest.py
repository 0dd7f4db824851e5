"""Fixtures shared by test files: tiny BraTS-like cases and a tiny model trained on them
(built once per test session: tests/brats_cases.py)."""

import pytest

from brats_cases import brats_like, write_cases
from lmi_jax import train


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
  root = tmp_path_factory.mktemp("cases")
  write_cases(root)
  return root


@pytest.fixture(scope="session")
def trained_on_cases(cases, tmp_path_factory):
  """(config, workdir) of a tiny model trained 4 steps on the cases' T1w."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = brats_like(cases)
  config.training.num_steps = 4
  config.training.sample_every = 0
  config.sampling.num_steps = 4
  config.sampling.batch_size = 4
  train.train_score_model(config, workdir)
  return config, workdir
