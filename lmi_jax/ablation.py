"""Ablations on the validation split: one table, settings varied one at a time.

  python -m lmi_jax.ablation --config=configs/phantom_pd2t1_cpu.py --workdir=runs/ablation \
      --vary=sampling.guidance_scale=1,2,3 --vary=sampling.num_steps=50,100,200
  python -m lmi_jax.ablation --config=configs/phantom_pd2t1_cpu.py --workdir=runs/trained \
      --train --vary=sde.type=vp --vary=lmi.features=cross,cross+self_parzen

The first row is the config as given; every other row changes one key. Each row translates
the same slices with the same noise and scores them as `--mode=eval` does (K-means fitted on
target training slices). Without `--train` only `sampling.*` keys can vary, all rows using
the workdir's model. With `--train`, keys of `lmi`, `model`, `sde` and `training` can vary
too: each row trains its own model (`training.num_steps`) in WORKDIR/models/<setting>,
resuming what a former run left there, so a rerun only scores. Values are separated by
commas; a tuple value joins its items with "+". Choices are made here, on the validation
split (`--split`, default val); the test split is refused. Writes
WORKDIR/ablation/ablation.{md,json} and logs progress.
"""

import copy
import dataclasses
import json
import os
import re

import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from lmi_jax import checkpoints, evaluation, files, host, methods, train, translate
from lmi_jax.data import load_dataset
from lmi_jax.errors import InputError, one_line

# Sections whose keys change what the network is trained on: varied only with a model each.
TRAINED_SECTIONS = ("lmi", "model", "sde", "training")
# Sections a trained model depends on: a model folder trained under others is not reused.
_MODEL_SECTIONS = ("data", "lmi", "model", "sde", "training")


def _parse_scalar(value: str, kind: type):
  if kind is bool:
    if value.lower() not in ("true", "false"):
      raise ValueError(value)
    return value.lower() == "true"
  return kind(value)


def parse_vary(text: str, config: ml_collections.ConfigDict,
               trained: bool = False) -> tuple[str, list]:
  """"section.key=v1,v2" -> ("section.key", [v1, v2]), each value of the key's type.

  A tuple-valued key takes items joined by "+" ("lmi.features=cross,cross+self").
  Sections: `sampling`, and with `trained` also those of TRAINED_SECTIONS.
  """
  name, sep, values = text.partition("=")
  section, _, key = name.partition(".")
  sections = ("sampling",) + (TRAINED_SECTIONS if trained else ())
  if not sep or not values:
    raise InputError(f"--vary={text!r}: expected <section>.<key>=<v1>,<v2>,... with a section "
                     f"of {sections}.")
  if section not in sections:
    hint = ("" if trained else "; other sections change what the network learns: add --train "
            "to train a model per setting")
    raise InputError(f"--vary={text!r}: only keys of {', '.join(sections)} can vary{hint}.")
  if key not in config[section]:
    raise InputError(f"--vary={text!r}: config.{section} has no key {key!r} (it has "
                     f"{sorted(config[section])}).")
  current = config[section][key]
  parsed = []
  for value in values.split(","):
    try:
      if isinstance(current, tuple):
        kind = type(current[0]) if current else str
        parsed.append(tuple(_parse_scalar(item.strip(), kind) for item in value.split("+")))
      else:
        parsed.append(_parse_scalar(value.strip(), type(current)))
    except ValueError:
      raise InputError(f"--vary={text!r}: {value!r} is not of the type of {name} "
                       f"({current!r}).") from None
  return name, parsed


def setting_name(key: str, value) -> str:
  """"section.key=value", a tuple's items joined by "+"."""
  shown = "+".join(map(str, value)) if isinstance(value, tuple) else value
  return f"{key}={shown}"


def settings(config: ml_collections.ConfigDict, grid: list[tuple[str, list]],
             baseline: bool = True) -> list[tuple[str, ml_collections.ConfigDict]]:
  """("baseline", config) unless not `baseline`, then (setting_name, config with that one
  change) per value of `grid` that differs from the config's."""
  rows = [("baseline", config)] if baseline else []
  for name, values in grid:
    section, _, key = name.partition(".")
    for value in values:
      if value == config[section][key]:
        continue  # The baseline row already holds it.
      changed = copy.deepcopy(config)
      changed[section][key] = value
      rows.append((setting_name(name, value), changed))
  return rows


def _model_signature(config: ml_collections.ConfigDict) -> dict:
  """What a model trained for `config` depends on (the run's length and limits aside)."""
  signature = {s: json.loads(config[s].to_json_best_effort()) for s in _MODEL_SECTIONS}
  for key in ("num_steps", "time_limit_min", "log_every", "checkpoint_every", "sample_every"):
    signature["training"].pop(key)
  for key in ("source", "source_glob"):  # Training sees the target only.
    signature["data"].pop(key)
  signature["seed"] = config.seed
  return signature


def train_setting(config: ml_collections.ConfigDict, model_dir: str, images: np.ndarray) -> None:
  """Trains (or resumes) the model of one setting in `model_dir` on (N, H, W, 1) `images`.

  The folder keeps the setting's signature; a folder holding a model trained under another
  one is refused rather than silently reused.
  """
  path = os.path.join(model_dir, "setting.json")
  signature = _model_signature(config)
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) != signature:
        raise InputError(f"{model_dir} holds a model trained with other settings than this "
                         "run's; use a new --workdir, or delete that folder to retrain it.")
  else:
    files.atomic_write(path, json.dumps(signature, indent=2, sort_keys=True).encode())
  train.train_score_model(config, model_dir, images)
  # Without this check an untrained setting would be scored with the shipped model.
  if checkpoints.latest_step(checkpoints.score_folder(model_dir)) is None:
    raise InputError(f"{model_dir} holds no trained model and training.num_steps="
                     f"{config.training.num_steps} trains none; raise training.num_steps.")


def ablation_markdown(rows: list[dict], methods: tuple[str, ...], n_slices: int, split: str,
                      target_means: dict[str, float] | None = None) -> str:
  """A row per (setting, method): mean ± std of each metric, the model's training step, the
  mean intensity per ground-truth class (where rows have it) and the wall time."""
  metrics = [m for m in evaluation.METRICS if any(m in r["metrics"] for r in rows)]
  with_means = any(r.get("class_means") for r in rows)
  titles = ([evaluation.METRIC_TITLES[m] for m in metrics] + ["step"]
            + (["class means"] if with_means else []) + ["seconds"])
  lines = ["| setting | method | " + " | ".join(titles) + " |",
           "| --- | --- |" + " --- |" * len(titles)]
  for r in rows:
    cells = [evaluation.format_summary(r["metrics"].get(m), evaluation.METRIC_DECIMALS[m])
             for m in metrics] + [str(r["step"])]
    if with_means:
      cells.append(evaluation.format_class_means(r["class_means"]) if r.get("class_means") else "")
    lines.append(f"| {r['setting']} | {r['method']} | " + " | ".join(cells)
                 + f" | {r['seconds']:.0f} |")
  footer = (f"{n_slices} slices of the {split} split; methods {', '.join(methods)}; mean ± std "
            "across slices.")
  if target_means:
    footer += (" Class means: mean intensity per ground-truth tissue class (the true target: "
               f"{evaluation.format_class_means(target_means)}).")
  return "\n".join(lines) + "\n\n" + footer + "\n"


def ablate(config: ml_collections.ConfigDict, workdir: str, grid: list[tuple[str, list]],
           trained: bool = False, baseline: bool = True) -> tuple[list[dict], str]:
  """Runs every setting of `grid` (see `settings`) and writes WORKDIR/ablation/ablation.*.

  With `trained`, each setting first trains its model in WORKDIR/models/<setting> (see the
  module docstring); otherwise every setting samples with the workdir's model.
  Returns one dict per (setting, method): setting, method, step (of the model), metrics
  ({metric: {mean, std}}), class_means (where labels exist), seconds; and the Markdown table
  written to ablation.md.
  """
  if config.eval.split == "test":
    raise InputError("eval.split = 'test': choose settings on the validation split "
                     "(--config.eval.split=val) and keep the test split for the final report.")
  names = methods.check_methods(config.eval.methods)
  all_settings = settings(config, grid, baseline)
  if not all_settings:
    raise InputError("nothing to run: --nobaseline and no --vary value that differs from the config.")
  data = load_dataset(config, workdir)
  split, segmenters, ctx = translate.prepare_split(config, workdir, () if trained else names,
                                                  data)
  # Every setting trains on the same slices: data keys cannot vary.
  images = data["train"]["target"]
  out_dir = os.path.join(workdir, "ablation")
  files.prepare_dir(out_dir)  # A bad folder fails now, not after the first setting.
  rows, table = [], ""
  for index, (name, setting) in enumerate(all_settings):
    logging.info("Setting %d/%d: %s", index + 1, len(all_settings), name)
    if trained:
      model_dir = os.path.join(workdir, "models", re.sub(r"[^A-Za-z0-9._=+-]", "_", name))
      train_setting(setting, model_dir, images)
      row_ctx = translate.load_model(ctx, setting, model_dir)
    else:
      row_ctx = dataclasses.replace(ctx, config=setting)
    outputs, seconds = methods.run_methods(row_ctx, names, split["source"])
    report = translate.score_split(setting, outputs, split, segmenters)
    for method, entry in report["methods"].items():
      rows.append({"setting": name, "method": method, "step": row_ctx.step,
                   "seconds": seconds[method], "class_means": entry.get("class_means"),
                   "metrics": {m: entry[m] for m in evaluation.METRICS if m in entry}})
    # Rewritten after every setting, so a long run shows what it has so far.
    table = ablation_markdown(rows, names, len(split["source"]), config.eval.split,
                              report.get("target_class_means"))
    files.atomic_write(os.path.join(out_dir, "ablation.md"), table.encode())
    files.atomic_write(os.path.join(out_dir, "ablation.json"), json.dumps(
        evaluation.json_safe({"split": config.eval.split, "n_slices": len(split["source"]),
                              "target_class_means": report.get("target_class_means"),
                              "rows": rows}), indent=2, allow_nan=False).encode())
  logging.info("Wrote %s/ablation.{md,json}.", out_dir)
  return rows, table


def main(argv: list[str]) -> None:
  del argv
  config = flags.FLAGS.config
  config.eval.split = flags.FLAGS.split
  host.split_host(int(config.host_devices))
  trained = flags.FLAGS.train
  try:
    grid = [parse_vary(text, config, trained) for text in flags.FLAGS.vary]
    _, table = ablate(config, flags.FLAGS.workdir, grid, trained, flags.FLAGS.baseline)
  except InputError as error:
    raise SystemExit(f"error: {one_line(error)}") from None
  print(table)


if __name__ == "__main__":
  # Flags are defined here, not on import, so importing this module defines none.
  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Folder of the run (its checkpoint, else the shipped "
                      "model of sampling.pretrained; with --train, WORKDIR/models); results go "
                      "to WORKDIR/ablation.")
  flags.DEFINE_multi_string("vary", [], "<section>.<key>=<v1>,<v2>,...; repeatable.")
  flags.DEFINE_bool("train", False, "Train a model per setting in WORKDIR/models (lets keys of "
                    "lmi, model, sde and training vary).")
  flags.DEFINE_bool("baseline", True, "Score the config as given as the first row.")
  flags.DEFINE_string("split", "val", "Split the settings are scored on (not test).")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
