"""Sampling ablations on the validation split: one table, settings varied one at a time.

  python -m lmi_jax.ablation --config=configs/phantom_pd2t1_cpu.py --workdir=runs/ablation \
      --vary=sampling.guidance_scale=1,2,3 --vary=sampling.num_steps=50,100,200

The first row is the config as given; every other row changes one `sampling.*` key. Each
row translates the same slices with the same noise and scores them as `--mode=eval` does
(K-means fitted on target training slices). Only sampling keys can vary: LMI, model, SDE
or data settings change what the network was trained on, so comparing them needs a model
trained per setting. Choices are made here, on the validation split (`--split`, default val); the
test split is refused. Writes WORKDIR/ablation/ablation.{md,json} and logs progress.
"""

import copy
import dataclasses
import json
import os

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from lmi_jax import evaluation, host, translate
from lmi_jax.errors import InputError, one_line


def parse_vary(text: str, config: ml_collections.ConfigDict) -> tuple[str, list]:
  """"sampling.key=v1,v2" -> ("sampling.key", [v1, v2]), each value of the key's type."""
  name, sep, values = text.partition("=")
  section, _, key = name.partition(".")
  if not sep or not values:
    raise InputError(f"--vary={text!r}: expected sampling.<key>=<v1>,<v2>,...")
  if section != "sampling" or key not in config.sampling:
    raise InputError(f"--vary={text!r}: only keys of config.sampling can vary (it has "
                     f"{sorted(config.sampling)}); other keys need a model trained per setting.")
  kind = type(config.sampling[key])

  def parse(value: str):
    if kind is bool and value.lower() in ("true", "false"):
      return value.lower() == "true"
    if kind is bool:
      raise ValueError(value)
    return kind(value)

  parsed = []
  for value in values.split(","):
    try:
      parsed.append(parse(value.strip()))
    except ValueError:
      raise InputError(f"--vary={text!r}: {value!r} is not of type {kind.__name__} "
                       f"(sampling.{key}).") from None
  return name, parsed


def settings(config: ml_collections.ConfigDict,
             grid: list[tuple[str, list]]) -> list[tuple[str, ml_collections.ConfigDict]]:
  """("baseline", config), then (f"{key}={value}", config with that one change) per value."""
  rows = [("baseline", config)]
  for name, values in grid:
    key = name.partition(".")[2]
    for value in values:
      if value == config.sampling[key]:
        continue  # The baseline row already holds it.
      changed = copy.deepcopy(config)
      changed.sampling[key] = value
      rows.append((f"{name}={value}", changed))
  return rows


def ablation_markdown(rows: list[dict], methods: tuple[str, ...], n_slices: int,
                      split: str) -> str:
  """A row per (setting, method): mean ± std of each metric and the wall time."""
  metrics = [m for m in evaluation.METRICS if any(m in r["metrics"] for r in rows)]
  lines = ["| setting | method | " + " | ".join(evaluation.METRIC_TITLES[m] for m in metrics)
           + " | seconds |",
           "| --- | --- |" + " --- |" * (len(metrics) + 1)]
  for r in rows:
    cells = [evaluation.format_summary(r["metrics"].get(m), evaluation.METRIC_DECIMALS[m])
             for m in metrics]
    lines.append(f"| {r['setting']} | {r['method']} | " + " | ".join(cells)
                 + f" | {r['seconds']:.0f} |")
  return ("\n".join(lines) + f"\n\n{n_slices} slices of the {split} split; methods "
          f"{', '.join(methods)}; mean ± std across slices.\n")


def ablate(config: ml_collections.ConfigDict, workdir: str,
           grid: list[tuple[str, list]]) -> tuple[list[dict], str]:
  """Runs every setting of `grid` (see `settings`) and writes WORKDIR/ablation/ablation.*.

  Returns one dict per (setting, method): setting, method, metrics ({metric: {mean, std}}),
  seconds; and the Markdown table written to ablation.md.
  """
  if config.eval.split == "test":
    raise InputError("eval.split = 'test': choose settings on the validation split "
                     "(--config.eval.split=val) and keep the test split for the final report.")
  methods = translate.check_methods(config.eval.methods)
  split, segmenter, ctx = translate.prepare_split(config, workdir, methods)
  out_dir = os.path.join(workdir, "ablation")
  evaluation.prepare_dir(out_dir)  # A bad folder fails now, not after the first setting.
  rows, table = [], ""
  all_settings = settings(config, grid)
  for index, (name, setting) in enumerate(all_settings):
    logging.info("Setting %d/%d: %s", index + 1, len(all_settings), name)
    outputs, seconds = translate.run_methods(dataclasses.replace(ctx, config=setting), methods,
                                             split["source"])
    report = translate.score_split(setting, outputs, split, segmenter)
    for method, entry in report["methods"].items():
      rows.append({"setting": name, "method": method, "seconds": seconds[method],
                   "metrics": {m: entry[m] for m in evaluation.METRICS if m in entry}})
    # Rewritten after every setting, so a long run shows what it has so far.
    table = ablation_markdown(rows, methods, len(split["source"]), config.eval.split)
    evaluation.atomic_write(os.path.join(out_dir, "ablation.md"), table.encode())
    evaluation.atomic_write(os.path.join(out_dir, "ablation.json"), json.dumps(
        evaluation.json_safe({"split": config.eval.split, "n_slices": len(split["source"]),
                              "rows": rows}), indent=2, allow_nan=False).encode())
  logging.info("Wrote %s/ablation.{md,json}.", out_dir)
  return rows, table


def main(argv: list[str]) -> None:
  del argv
  config = flags.FLAGS.config
  config.eval.split = flags.FLAGS.split
  host.split_host(int(config.host_devices))
  try:
    grid = [parse_vary(text, config) for text in flags.FLAGS.vary]
    _, table = ablate(config, flags.FLAGS.workdir, grid)
  except InputError as error:
    raise SystemExit(f"error: {one_line(error)}") from None
  print(table)


if __name__ == "__main__":
  # Flags are defined here, not on import, so importing this module defines none.
  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Folder of the run (its checkpoint, else the shipped "
                      "model of sampling.pretrained); results go to WORKDIR/ablation.")
  flags.DEFINE_multi_string("vary", [], "sampling.<key>=<v1>,<v2>,...; repeatable.")
  flags.DEFINE_string("split", "val", "Split the settings are scored on (not test).")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
