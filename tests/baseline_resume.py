"""The resume check shared by the baselines' tests: a training stopped by its time limit
after every step and called again ends where one uninterrupted call ends."""

import json
import os
import types

import jax
import ml_collections
import numpy as np


def check_resumes(module: types.ModuleType, name: str, config: ml_collections.ConfigDict,
                  tmp_path) -> dict:
  """Runs `module.train` for config.<name>.num_steps (3) in one call and again in three
  calls stopped after one step each; checks each call's export (steps, finished), the
  preview and that both runs export the same parameters. Returns the last export's JSON."""
  whole = str(tmp_path / "whole")
  module.train(config, whole)
  config[name].time_limit_min = 1e-9
  parts = str(tmp_path / "parts")
  for step in (1, 2, 3):
    module.train(config, parts)
    with open(os.path.join(parts, "baselines", f"{name}.json")) as f:
      info = json.load(f)
    assert info["steps"] == step and info["finished"] == (step == 3)
  assert os.path.isfile(os.path.join(parts, name, "preview.png"))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               module.load(config, os.path.join(parts, "baselines", f"{name}.msgpack")),
               module.load(config, os.path.join(whole, "baselines", f"{name}.msgpack")))
  return info
