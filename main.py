"""lmi_jax command line: train a model, translate a volume, or evaluate a trained run.

  python main.py --config=configs/phantom_pd2t1.py --workdir=runs/pd2t1 --mode=train
  python main.py --config=configs/phantom_pd2t1.py --workdir=runs/pd2t1 --mode=eval
  python main.py --config=configs/ixi_pd2t1.py --workdir=runs/ixi --mode=sample --input=PD.nii.gz

Any config key can be overridden, e.g. --config.training.batch_size=8; a misspelt key is an
error. Bad input (files, folders, config values) ends with a one-line message and status 2.
"""

import os
import sys
import threading
from collections.abc import Callable

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from lmi_jax import files, host
from lmi_jax.errors import InputError, one_line

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder of the run: config, checkpoints, events, outputs.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"],
                  "train: fit the model of --config.training.method (score, or a baseline); "
                  "sample: translate --input; eval: test-split report.")
flags.DEFINE_multi_string("input", None, "Scans to translate (--mode=sample): NIfTI files, folders "
                          "of them, DICOM series folders or globs; repeat the flag for several.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, every flag error reported in one line (status 2).

  absl raises flags.Error for an unknown flag, a missing required one or a value of the
  wrong type (--config.lmi.patch_size=abc); ml_collections raises AttributeError (wrapping a
  KeyError) or KeyError for a key the locked config lacks.
  """
  try:
    return FLAGS(argv)
  except flags.Error as error:
    print(f"error: {one_line(error)} (python main.py --help lists the flags; configs/default.py "
          "every config key).", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as error:
    while isinstance(error, Exception) and error.args:
      error = error.args[0]
    print(f"error: a --config.* flag names a key the config lacks: {one_line(error)} "
          "(configs/default.py lists every key).", file=sys.stderr)
    sys.exit(2)


def split_commas(config: ml_collections.ConfigDict) -> None:
  """Tuple-valued keys given on the command line as "a,b" arrive as ("a,b",): split them."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      split_commas(value)
    elif isinstance(value, tuple) and any(isinstance(v, str) and "," in v for v in value):
      config[key] = tuple(part.strip() for v in value for part in str(v).split(",") if part.strip())


def train_mode(config: ml_collections.ConfigDict, workdir: str) -> None:
  from lmi_jax import train  # Each mode imports its own modules: a bad config ends sooner.
  train.train(config, workdir)


def sample_mode(config: ml_collections.ConfigDict, workdir: str) -> None:
  from lmi_jax import scans, translate
  if FLAGS.input:
    scans.sample_scans(config, workdir, FLAGS.input)
  else:
    translate.sample(config, workdir)


def eval_mode(config: ml_collections.ConfigDict, workdir: str) -> None:
  from lmi_jax import evaluation, translate
  # The table goes to stdout as well as to WORKDIR/eval/report.md.
  print(evaluation.report_markdown(translate.evaluate(config, workdir)))


MODES = {"train": train_mode, "sample": sample_mode, "eval": eval_mode}


def interruptible(work: Callable[[], object]) -> None:
  """Runs `work` in a worker thread so that Ctrl-C ends the run within a second: a compiled
  sampler holds the main thread until its batch ends (minutes), a worker thread does not hold
  it. On Ctrl-C the temporary files being written are removed, one line says so, and the
  process ends at once with status 130 (outputs are whole or absent)."""
  outcome: dict[str, BaseException] = {}

  def target() -> None:
    try:
      work()
    except BaseException as error:  # Re-raised in the main thread, where it is reported.
      outcome["error"] = error
  worker = threading.Thread(target=target, daemon=True)
  worker.start()
  try:
    while worker.is_alive():
      worker.join(0.2)
  except KeyboardInterrupt:
    files.remove_temporaries()
    print("error: interrupted (Ctrl-C); outputs already written are whole, nothing half-written "
          "is left; run the same command again to redo the rest.", file=sys.stderr, flush=True)
    os._exit(130)
  if "error" in outcome:
    raise outcome["error"]


def run(argv: list[str]) -> None:
  if len(argv) > 1:
    print(f"error: unexpected arguments {' '.join(argv[1:])}; flags take the form --name=value "
          "(python main.py --help).", file=sys.stderr)
    sys.exit(2)
  config = FLAGS.config
  try:
    host_devices = int(config.host_devices)  # ml_collections loads the file on first use.
  except OSError as error:
    print(f"error: --config: {one_line(error)} (give an experiment config, e.g. "
          "--config=configs/phantom_pd2t1_cpu.py).", file=sys.stderr)
    sys.exit(2)
  host.split_host(host_devices)
  try:
    if not FLAGS.workdir.strip():
      raise InputError("--workdir is empty; give the folder for the run's checkpoints and outputs "
                       "(e.g. --workdir=workdir/my_run).")
    split_commas(config)
    # Imported once the flags parse: it imports JAX and every module whose section it checks
    # (3 s), which a misspelt flag or a missing config file need not wait for.
    from lmi_jax import settings
    settings.check_config(config, FLAGS.mode)
    files.prepare_dir(FLAGS.workdir)
    interruptible(lambda: MODES[FLAGS.mode](config, FLAGS.workdir))
  except InputError as error:
    print(f"error: {one_line(error)}", file=sys.stderr)
    sys.exit(2)
  except OSError as error:  # A folder that cannot be made or written, a full disk.
    where = error.filename or FLAGS.workdir
    print(f"error: {where}: {error.strerror or one_line(error)}; check that the folder can be "
          "written and the disk has space (outputs are written whole or not at all).",
          file=sys.stderr)
    sys.exit(2)


def cli() -> None:
  """The `lmi-jax` console script: the same flags as `python main.py`."""
  app.run(run, flags_parser=parse_flags)


if __name__ == "__main__":
  cli()
