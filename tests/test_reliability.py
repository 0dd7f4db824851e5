"""Bad input and faults, tried through `python main.py` as a user runs it (docs/reliability.md).

Every case of `CASES` runs main.py in its own process and must end with exit status 2, exactly
one line on stderr that starts with "error:" and names the file or key, no traceback, and no
output file left behind half-written. The processes run a few at a time (each spends most of
its time importing JAX). The faults that need timing (kill -9 while training, saving or
sampling, a diverging loss) and the bitwise repeatability of a translation have tests of
their own below.
"""

import concurrent.futures
import dataclasses
import gzip
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from made_scans import write_dicom_series

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
TINY = "--config=configs/tiny.py"
# Few steps, no preview samples: the quickest training run that writes a checkpoint.
QUICK_TRAIN = ("--config.training.num_steps=2", "--config.training.sample_every=0",
               "--config.training.log_every=1")
# A nifti data set of two subjects: one for training, one for testing.
FILES = ("--config.data.dataset=nifti", "--config.data.num_train_subjects=-1",
         "--config.data.num_val_subjects=0", "--config.data.num_test_subjects=1")


def head(shape=(24, 24, 20), seed=0, contrast=(0.3, 0.6, 0.9)) -> np.ndarray:
  """A synthetic head: three nested ellipsoids of tissue with a little noise, 0 outside."""
  rng = np.random.default_rng(seed)
  grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
  radius = np.sqrt((grid ** 2).sum(0))
  volume = np.select([radius < 0.35, radius < 0.6, radius < 0.85], contrast, 0.0)
  return (volume + 0.02 * rng.standard_normal(shape) * (radius < 0.85)).astype(np.float32)


def save(path, volume, affine=None) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nib.save(nib.Nifti1Image(np.asarray(volume, np.float32), np.eye(4) if affine is None else affine),
           str(path))
  return str(path)


def main_py(*flags, timeout=900, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "main.py", *flags], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=timeout, **kwargs)


def limit_file_size() -> None:
  """In the child: files may not grow past 64 kB (a full disk); the signal that would kill
  the process at the limit is ignored, so the write fails with EFBIG like ENOSPC."""
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@dataclasses.dataclass(frozen=True)
class Case:
  """One row of docs/reliability.md: what is wrong, the flags that try it, what the one-line
  error must contain."""
  fault: str
  flags: tuple[str, ...]
  named: tuple[str, ...]
  full_disk: bool = False


def volume_cases(d: str) -> dict[str, Case]:
  """Bad --input volumes, written into folder d."""
  good = save(f"{d}/good.nii.gz", head())
  with open(good, "rb") as f:
    blob = f.read()
  paths = {name: f"{d}/{name}.nii.gz" for name in ("empty", "truncated", "corrupt")}
  open(paths["empty"], "wb").close()
  with open(paths["truncated"], "wb") as f:
    f.write(blob[:len(blob) // 2])
  raw = bytearray(gzip.decompress(blob))
  compressed = bytearray(gzip.compress(bytes(raw)))
  compressed[len(compressed) // 2:len(compressed) // 2 + 64] = bytes(64)  # Damaged deflate data.
  with open(paths["corrupt"], "wb") as f:
    f.write(bytes(compressed))
  nan, inf = head(), head()
  nan[3, 4, 5] = np.nan
  inf[6, 7, 8] = np.inf
  noise = np.random.default_rng(1).random((24, 24, 20)).astype(np.float32)
  os.makedirs(f"{d}/no_scans")
  os.mkfifo(f"{d}/fifo.nii.gz")
  slope = nib.Nifti1Image(np.full((24, 24, 20), 30000, np.int16), np.eye(4))
  slope.header.set_slope_inter(1e38, 0.0)  # 3e42 overflows float32.
  nib.save(slope, f"{d}/slope.nii.gz")
  two_series = f"{d}/two_series"
  write_dicom_series(head(), np.eye(4), two_series, "t2_tse", "1.2.826.0.1.3680043.2.1125.7")
  write_dicom_series(head(seed=1), np.eye(4), two_series, "flair", "1.2.826.0.1.3680043.2.1125.8")
  made = {
      "nan_affine": with_sform_row(save(f"{d}/nan_affine.nii", head()), [np.nan, 0, 0, 0]),
      "singular_affine": with_sform_row(save(f"{d}/singular_affine.nii", head()), [0, 0, 0, 0]),
      "2d": save(f"{d}/2d.nii.gz", head()[:, :, 10]),
      "4d": save(f"{d}/4d.nii.gz", np.stack([head(), head()], -1)),
      "nan": save(f"{d}/nan.nii.gz", nan),
      "inf": save(f"{d}/inf.nii.gz", inf),
      "constant": save(f"{d}/constant.nii.gz", np.full((24, 24, 20), 0.5)),
      "noise": save(f"{d}/noise.nii.gz", noise),
  }
  sample = ("--mode=sample",)

  def case(fault, path, *named):
    return Case(fault, (*sample, f"--input={path}"), (path, *named))
  return {
      "missing_volume": case("volume file missing", f"{d}/none.nii.gz", "no such file"),
      "folder_without_scans": case("a folder with no NIfTI files and no DICOM series",
                                   f"{d}/no_scans", "no NIfTI files"),
      "glob_matches_nothing": case("a glob that matches no file", f"{d}/*.mgz", "no file matches"),
      "fifo_volume": case("a named pipe (FIFO) given as the volume", f"{d}/fifo.nii.gz",
                          "not a regular file"),
      "dev_null_volume": case("/dev/null given as the volume", "/dev/null", "not a regular file"),
      "nan_affine": case("a header affine holding NaN", made["nan_affine"], "affine", "not finite"),
      "singular_affine": case("a singular header affine (a zero row)", made["singular_affine"],
                              "affine", "singular"),
      "scl_slope_overflow": case("a header scale factor that overflows float32",
                                 f"{d}/slope.nii.gz", "scl_slope"),
      "several_dicom_series": case("a DICOM folder holding two series", two_series, "2 series",
                                   "t2_tse", "flair", "data.dicom_series"),
      "empty_volume": case("empty (0-byte) file", paths["empty"], "not a readable NIfTI"),
      "truncated_volume": case("truncated .nii.gz (first half)", paths["truncated"], "re-export"),
      "gzip_corrupt_volume": case("gzip data damaged mid-file", paths["corrupt"], "re-export"),
      "volume_2d": case("2-D image", made["2d"], "not one 3D volume"),
      "volume_4d": case("4-D series", made["4d"], "not one 3D volume"),
      "nan_volume": case("a NaN voxel", made["nan"], "NaN/Inf"),
      "inf_volume": case("an Inf voxel", made["inf"], "NaN/Inf"),
      "constant_volume": case("every voxel equal", made["constant"], "empty volume"),
      "noise_volume": case("uniform random noise, no anatomy", made["noise"], "no tissue structure"),
  }


def with_sform_row(path: str, row: list[float]) -> str:
  """`path` (an uncompressed .nii) with its sform's first row overwritten in the file's bytes:
  nibabel would refuse to write such an affine itself."""
  with open(path, "r+b") as f:
    f.seek(280)  # srow_x in the NIfTI-1 header.
    f.write(struct.pack("<4f", *row))
  return path


def dataset_cases(d: str) -> dict[str, Case]:
  """Bad nifti data sets (data.root), written into folder d."""
  for subject in ("a", "b"):
    save(f"{d}/paired/{subject}/T1.nii.gz", head(seed=1))
    save(f"{d}/paired/{subject}/PD.nii.gz", head(seed=2, contrast=(0.9, 0.6, 0.4)))
  shutil.copytree(f"{d}/paired", f"{d}/unpaired")
  os.unlink(f"{d}/unpaired/b/PD.nii.gz")
  shutil.copytree(f"{d}/paired", f"{d}/shifted")
  far = np.eye(4)
  far[:3, 3] = 500.0  # The source's field of view 500 mm away from the target's.
  save(f"{d}/shifted/a/PD.nii.gz", head(seed=2), far)
  save(f"{d}/shifted/b/PD.nii.gz", head(seed=2), far)
  os.makedirs(f"{d}/no_files/a")
  train = ("--mode=train", *FILES, *QUICK_TRAIN)
  return {
      "missing_root": Case("data.root does not exist", (*train, f"--config.data.root={d}/gone"),
                           ("data.root", f"{d}/gone")),
      "no_matching_files": Case("a folder with no matching files",
                                (*train, f"--config.data.root={d}/no_files"),
                                (f"{d}/no_files",)),
      "unpaired_subject": Case("a subject with a target but no source",
                               (*train, f"--config.data.root={d}/unpaired"), ("b (no source)",)),
      "mismatched_grids": Case("source and target grids that do not overlap",
                               (*train, f"--config.data.root={d}/shifted"), ("PD.nii.gz", "covers only")),
  }


def config_cases(d: str) -> dict[str, Case]:
  """Bad config files, keys and values."""
  sample = ("--mode=sample",)
  return {
      "config_missing": Case("a config file that does not exist", ("--config=configs/nope.py",),
                             ("configs/nope.py",)),
      "unknown_key": Case("an unknown config key", ("--config.training.lr_typo=1",), ("lr_typo",)),
      "misspelt_section": Case("a misspelt config section", ("--config.trainin.lr=1",),
                               ('Did you mean "training"',)),
      "wrong_type": Case("a value of the wrong type", ("--config.lmi.patch_size=abc",),
                         ("lmi.patch_size", "abc")),
      "even_patch": Case("an even LMI patch size", (*sample, "--config.lmi.patch_size=4"),
                         ("lmi.patch_size", "odd")),
      "zero_bins": Case("zero histogram bins", (*sample, "--config.lmi.num_bins=0"),
                        ("lmi.num_bins",)),
      "unknown_reference_map": Case("an unknown LMI reference map",
                                    (*sample, "--config.lmi.reference_map=n4"),
                                    ("lmi.reference_map='n4'",)),
      "negative_steps": Case("negative sampling steps", (*sample, "--config.sampling.num_steps=-5"),
                             ("sampling.num_steps=-5",)),
      "unknown_sampler": Case("an unknown sampler", (*sample, "--config.sampling.method=rk45"),
                              ("sampling.method='rk45'",)),
      "indivisible_size": Case("an image size the network cannot halve",
                               ("--mode=train", *QUICK_TRAIN, "--config.data.image_size=33",
                                "--config.model.ch_mult=1,2"),
                               ("not divisible", "data.image_size")),
      "unknown_method": Case("an unknown evaluation method",
                             ("--mode=eval", "--config.eval.methods=identity,foo"), ("foo",)),
      "probability_out_of_range": Case("a probability above 1", ("--config.training.p_uncond=1.5",),
                                       ("training.p_uncond",)),
      "unknown_preconditioning": Case("an unknown preconditioning",
                                      (*sample, "--config.model.preconditioning=ddpm"),
                                      ("model.preconditioning = 'ddpm'",)),
      "unknown_weighting": Case("an unknown loss weighting", ("--config.training.weighting=snr",),
                                ("training.weighting='snr'",)),
      "stray_argument": Case("a stray positional argument", ("extra",), ("extra",)),
      "data_p_hi_out_of_range": Case("a percentile above 100 on the --input path",
                                     (*sample, "--config.data.p_hi=150"), ("data.p_hi",)),
      "data_image_size_zero": Case("an image size of 0", (*sample, "--config.data.image_size=0"),
                                   ("data.image_size",)),
      "data_mask_unknown": Case("an unknown brain mask rule", (*sample, "--config.data.mask=bogus"),
                                ("data.mask='bogus'",)),
      "brain_extraction_unknown": Case("an unknown brain extraction mode",
                                       (*sample, "--config.data.brain_extraction=maybe"),
                                       ("data.brain_extraction='maybe'",)),
      "seed_out_of_range": Case("a seed outside [0, 2**32)", (*sample, "--config.seed=-3"),
                                ("seed=-3",)),
      "nonfinite_setting": Case("a NaN setting", (*sample, "--config.sampling.eps=nan"),
                                ("sampling.eps=nan", "finite")),
      "empty_workdir": Case("an empty --workdir", ("--workdir=",), ("--workdir is empty",)),
      "unknown_training_method": Case("an unknown model to train",
                                      ("--mode=train", "--config.training.method=gan"),
                                      ("training.method='gan'", "cyclegan")),
  }


def workdir_cases(d: str) -> dict[str, Case]:
  """Workdirs that cannot be used."""
  with open(f"{d}/a_file", "w") as f:
    f.write("x")
  return {
      "workdir_is_file": Case("--workdir names a file", (f"--workdir={d}/a_file",),
                              (f"{d}/a_file", "not a folder")),
      # /proc takes no new folders, even from root (chmod would not stop root).
      "workdir_unwritable": Case("a workdir that cannot be created", ("--workdir=/proc/lmi_jax/run",),
                                 ("/proc/lmi_jax",)),
      "disk_full": Case("a full disk while writing the data cache",
                        ("--mode=eval", "--config.eval.methods=identity"), ("too large",),
                        full_disk=True),
  }


def checkpoint_cases(d: str, trained: str) -> dict[str, Case]:
  """Damaged checkpoints and shipped models, next to a good run in `trained`."""
  corrupt = f"{d}/corrupt_run"
  shutil.copytree(trained, corrupt)
  for folder, _, names in os.walk(os.path.join(corrupt, "checkpoints")):
    for name in names:
      path = os.path.join(folder, name)
      if os.path.getsize(path) > 100:
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 3)
  shipped = f"{d}/bad_shipped"
  os.makedirs(shipped)
  with open(f"{shipped}/ema_params.msgpack", "wb") as f:
    f.write(b"\x00not msgpack")
  with open(f"{shipped}/model.json", "w") as f:
    f.write('{"step": 1}')
  lmi_eval = ("--mode=eval", "--config.eval.methods=lmi", "--config.eval.max_slices=1")
  resumed = f"{d}/resumed_run"
  shutil.copytree(trained, resumed)
  return {
      "corrupt_checkpoint": Case("checkpoint files truncated", (f"--workdir={corrupt}", *lmi_eval),
                                 (f"{corrupt}/checkpoints",)),
      "checkpoint_other_config": Case("a checkpoint of another network size",
                                      (f"--workdir={trained}", *lmi_eval, "--config.model.nf=8"),
                                      (f"{trained}/checkpoints", "does not fit")),
      "resume_other_network": Case("training resumed with another network size",
                                   (f"--workdir={resumed}", "--mode=train", *QUICK_TRAIN,
                                    "--config.training.num_steps=4", "--config.model.nf=8"),
                                   (f"{resumed}/checkpoints", "does not fit")),
      "corrupt_shipped_model": Case("a damaged shipped model (sampling.pretrained)",
                                    (f"--workdir={d}/empty_run", *lmi_eval,
                                     f"--config.sampling.pretrained={shipped}"),
                                    (f"{shipped}/ema_params.msgpack",)),
  }


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> str:
  """A tiny run trained for 2 steps through main.py."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  done = main_py(TINY, f"--workdir={workdir}", "--mode=train", *QUICK_TRAIN)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def all_cases(d: str, trained: str) -> dict[str, Case]:
  cases = {}
  for make in (volume_cases, dataset_cases, config_cases, workdir_cases):
    folder = os.path.join(d, make.__name__)
    os.makedirs(folder)
    cases.update(make(folder))
  os.makedirs(os.path.join(d, "checkpoints"))
  cases.update(checkpoint_cases(os.path.join(d, "checkpoints"), trained))
  return cases


def listing(folder: str) -> set[str]:
  return {os.path.relpath(os.path.join(p, n), folder) for p, _, names in os.walk(folder)
          for n in names}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, trained_run):
  """Every case of CASE_IDS run through main.py, four processes at a time: id -> (case,
  completed process, files in its workdir afterwards)."""
  d = str(tmp_path_factory.mktemp("cases"))
  cases = all_cases(d, trained_run)
  assert sorted(cases) == sorted(CASE_IDS)

  def run(item):
    name, case = item
    workdir = os.path.join(d, "workdirs", name)
    flags = list(case.flags)
    if not any(f.startswith("--workdir=") for f in flags):
      flags.insert(0, f"--workdir={workdir}")
    if not any(f.startswith("--config=") for f in flags):
      flags.insert(0, TINY)
    done = main_py(*flags, preexec_fn=limit_file_size if case.full_disk else None)
    files = listing(workdir) if os.path.isdir(workdir) else set()
    return name, (case, done, files)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    return dict(pool.map(run, cases.items()))


CASE_IDS = (
    "missing_volume", "folder_without_scans", "glob_matches_nothing", "fifo_volume",
    "dev_null_volume", "empty_volume", "truncated_volume",
    "gzip_corrupt_volume", "volume_2d", "volume_4d", "nan_volume", "inf_volume",
    "constant_volume", "noise_volume", "nan_affine", "singular_affine", "scl_slope_overflow",
    "several_dicom_series", "data_p_hi_out_of_range", "data_image_size_zero", "data_mask_unknown",
    "brain_extraction_unknown", "seed_out_of_range", "nonfinite_setting", "empty_workdir",
    "missing_root", "no_matching_files", "unpaired_subject", "mismatched_grids",
    "config_missing", "unknown_key", "misspelt_section", "wrong_type", "even_patch", "zero_bins",
    "unknown_reference_map",
    "negative_steps", "unknown_sampler", "indivisible_size", "unknown_method",
    "probability_out_of_range", "unknown_preconditioning", "unknown_weighting", "stray_argument",
    "unknown_training_method",
    "workdir_is_file", "workdir_unwritable", "disk_full",
    "corrupt_checkpoint", "checkpoint_other_config", "resume_other_network",
    "corrupt_shipped_model",
)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASE_IDS)
def test_bad_input_is_one_line_and_status_2(outcomes, name):
  case, done, files = outcomes[name]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert done.returncode == 2 and len(errors) == 1, (done.returncode, done.stderr[-3000:])
  print(f"{name}: {errors[0]}")  # pytest -rP shows the line (docs/reliability.md quotes them).
  for part in case.named:
    assert part in errors[0], errors[0]
  # Nothing half-written: no translation, report or temporary file in the run's folder (the
  # data cache and config.json are whole files or absent).
  assert not {f for f in files if ".tmp-" in f or f.startswith(("samples", "eval"))}, files


@pytest.mark.slow
def test_a_refused_resume_keeps_the_config_of_its_checkpoints(outcomes):
  """The error points to the run's config.json: it still describes the checkpoints."""
  case, _, _ = outcomes["resume_other_network"]
  workdir = next(f.split("=", 1)[1] for f in case.flags if f.startswith("--workdir="))
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["model"]["nf"] == 16


def test_every_case_is_documented():
  with open(os.path.join(ROOT, "docs", "reliability.md"), encoding="utf-8") as f:
    text = f.read()
  for name in (*CASE_IDS, *RUNTIME_TESTS):
    assert f"`{name}`" in text, name


RUNTIME_TESTS = ("test_kill_9_while_training_and_saving", "test_kill_9_while_sampling",
                 "test_nan_loss_stops_and_keeps_the_last_good_checkpoint",
                 "test_the_same_seed_gives_bitwise_the_same_translation",
                 "test_ctrl_c_while_sampling_ends_within_seconds",
                 "test_a_failed_input_of_several_and_names_taken_by_another_input",
                 "test_unusual_but_valid_inputs_give_correct_outputs")


def leaf_arrays(workdir: str) -> list[np.ndarray]:
  """The EMA parameters of a run's latest checkpoint, as a list of host arrays."""
  from lmi_jax import checkpoints
  from configs import tiny
  import jax
  variables, _ = checkpoints.restore_ema_params(tiny.get_config(), workdir)
  return [np.asarray(leaf) for leaf in jax.tree.leaves(variables)]


def wait_for(path: str, timeout: float) -> None:
  start = time.time()
  while not os.path.exists(path):
    if time.time() - start > timeout:
      raise TimeoutError(path)
    time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_while_training_and_saving(tmp_path):
  """Three kill -9 at random moments of a run that saves a checkpoint every step (so most
  kills land in or near a save); each rerun resumes, and the end equals an uninterrupted run
  bitwise. XLA's own kernel gradient is used: the OpenBLAS one (model.host_kernel_grad) is
  reproducible within a process but not across processes (last-bit differences)."""
  flags = (TINY, "--mode=train", "--config.training.num_steps=8", "--config.training.sample_every=0",
           "--config.training.checkpoint_every=1", "--config.training.log_every=1",
           "--config.model.host_kernel_grad=false")
  whole = main_py(*flags, f"--workdir={tmp_path / 'whole'}")
  assert whole.returncode == 0, whole.stderr[-3000:]
  killed = str(tmp_path / "killed")
  rng = random.Random(0)
  kills = 0
  for _ in range(3):
    process = subprocess.Popen([sys.executable, "main.py", *flags, f"--workdir={killed}"],
                               cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(os.path.join(killed, "checkpoints"), 240)  # Training has begun.
    time.sleep(rng.uniform(0.0, 2.0))
    if process.poll() is None:
      process.send_signal(signal.SIGKILL)
      kills += 1
    process.wait()
  assert kills >= 1
  resumed = main_py(*flags, f"--workdir={killed}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  for a, b in zip(leaf_arrays(str(tmp_path / "whole")), leaf_arrays(killed), strict=True):
    np.testing.assert_array_equal(a, b)


# Runs its arguments as `python ARGS` with Ctrl-C at its default, as from a terminal, whatever
# this test process inherited: an ignored SIGINT survives exec (background jobs of a
# non-interactive shell start with it ignored). Reset in the child before its exec, not by
# Popen's preexec_fn, which would fork this multithreaded (JAX) process.
SIGINT_AT_DEFAULT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                     "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")


def sampling_process(tmp_path, trained_run: str, steps: int):
  """`--mode=sample --input=scan.nii.gz` started in a copy of the trained run, once the
  sampler has logged its first step: (process, log path, workdir)."""
  volume = save(str(tmp_path / "in" / "scan.nii.gz"), head())
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  log = tmp_path / "log"
  with open(log, "w") as err:
    process = subprocess.Popen(
        [sys.executable, "-c", SIGINT_AT_DEFAULT, "main.py", TINY, f"--workdir={workdir}",
         "--mode=sample", f"--input={volume}", f"--config.sampling.num_steps={steps}"],
        cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
  start = time.time()
  while "lmi: batch 1/" not in log.read_text() and time.time() - start < 240:
    time.sleep(0.05)
  return process, log, workdir


@pytest.mark.slow
def test_kill_9_while_sampling(tmp_path, trained_run):
  """kill -9 in the middle of --mode=sample --input: no translation or segmentation file."""
  process, log, workdir = sampling_process(tmp_path, trained_run, steps=400)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert "lmi: batch 1/" in log.read_text()  # It was killed while translating.
  samples = os.path.join(workdir, "samples")
  left = os.listdir(samples) if os.path.isdir(samples) else []
  assert not [f for f in left if f.endswith(".nii.gz") and not f.startswith(".tmp-")], left


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, trained_run):
  """A learning rate that blows the parameters up (Adam's steps are about lr whatever the
  clipped gradient): training stops with a one-line error at
  the first non-finite loss, and the checkpoint of step 2 stays the latest, still finite."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  done = main_py(TINY, f"--workdir={workdir}", "--mode=train", "--config.training.num_steps=30",
                 "--config.training.sample_every=0", "--config.training.log_every=1",
                 "--config.training.checkpoint_every=1", "--config.training.lr=1e30",
                 "--config.training.warmup_steps=0")
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
  [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
  assert "diverged" in line and "training.lr" in line
  from lmi_jax import checkpoints
  kept = checkpoints.latest_step(checkpoints.score_folder(workdir))
  assert f"step {kept}" in line and kept >= 2
  assert all(np.isfinite(a).all() for a in leaf_arrays(workdir))


@pytest.mark.slow
def test_the_same_seed_gives_bitwise_the_same_translation(tmp_path, trained_run):
  volume = save(str(tmp_path / "in" / "scan.nii.gz"), head())
  outputs = []
  for run in ("first", "second"):
    workdir = str(tmp_path / run)
    shutil.copytree(trained_run, workdir)
    done = main_py(TINY, f"--workdir={workdir}", "--mode=sample", f"--input={volume}")
    assert done.returncode == 0, done.stderr[-3000:]
    outputs.append(nib.load(os.path.join(workdir, "samples", "scan_translated.nii.gz")).get_fdata())
  np.testing.assert_array_equal(outputs[0], outputs[1])
  assert outputs[0].std() > 0


def errors_of(done: subprocess.CompletedProcess) -> list[str]:
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  return [line for line in done.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_ctrl_c_while_sampling_ends_within_seconds(tmp_path, trained_run):
  """SIGINT (Ctrl-C) while the compiled sampler runs: the process ends within 5 s with
  status 130 and one line, and leaves no output and no temporary file."""
  process, log, workdir = sampling_process(tmp_path, trained_run, steps=4000)
  interrupted = time.time()
  process.send_signal(signal.SIGINT)
  process.wait(timeout=60)
  took = time.time() - interrupted
  text = log.read_text()
  assert "lmi: batch 1/" in text and "Traceback" not in text, text[-3000:]
  assert process.returncode == 130 and took < 5.0, (process.returncode, took)
  assert [line for line in text.splitlines() if line.startswith("error:")] == [
      "error: interrupted (Ctrl-C); outputs already written are whole, nothing half-written is "
      "left; run the same command again to redo the rest."]
  samples = os.path.join(workdir, "samples")
  assert not (os.listdir(samples) if os.path.isdir(samples) else [])


@pytest.mark.slow
def test_a_failed_input_of_several_and_names_taken_by_another_input(tmp_path, trained_run):
  """Two patients' FLAIR.nii.gz translated in two runs into one workdir: the second run's
  FLAIR would take the first's output names and is refused, its other input goes on; the exit
  status says that not all succeeded."""
  first = save(str(tmp_path / "a" / "FLAIR.nii.gz"), head(seed=3))
  second = save(str(tmp_path / "b" / "FLAIR.nii.gz"), head(seed=4))
  other = save(str(tmp_path / "b" / "T2.nii.gz"), head(seed=5))
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  done = main_py(TINY, f"--workdir={workdir}", "--mode=sample", f"--input={first}")
  assert done.returncode == 0 and not errors_of(done), done.stderr[-3000:]
  record = os.path.join(workdir, "samples", "FLAIR_translated.json")
  before = open(record).read()
  done = main_py(TINY, f"--workdir={workdir}", "--mode=sample", f"--input={second}",
                 f"--input={other}")
  [line] = errors_of(done)
  assert done.returncode == 2 and f"1 of 2 inputs failed ({second})" in line, done.stderr[-3000:]
  assert "already holds outputs named 'FLAIR' of another input" in done.stderr
  assert open(record).read() == before  # The first patient's outputs are untouched.
  assert os.path.isfile(os.path.join(workdir, "samples", "T2_translated.nii.gz"))
  assert "Volume 2/2 (T2) done" in done.stderr


@pytest.mark.slow
def test_unusual_but_valid_inputs_give_correct_outputs(tmp_path, trained_run):
  """.mgz, Analyze .hdr/.img, a NIfTI without extension, a name with dots, a 200-character
  name and a label map, in one run: each gets outputs on its grid, named after it; the label
  map is translated with a warning."""
  volume = head(seed=6)
  affine = np.diag([1.2, 1.0, 2.0, 1.0])
  affine[:3, 3] = [-10.0, 5.0, 3.0]
  folder = tmp_path / "in"
  os.makedirs(folder)
  nib.save(nib.MGHImage(volume, affine), str(folder / "mgh_scan.mgz"))
  nib.save(nib.AnalyzeImage(volume, affine), str(folder / "analyze_scan.hdr"))
  save(str(folder / "plain.nii.gz"), volume, affine)
  os.rename(folder / "plain.nii.gz", folder / "no_extension")
  save(str(folder / "patient.niigata_01.nii.gz"), volume, affine)
  long_name = "p" * 200
  save(str(folder / f"{long_name}.nii.gz"), volume, affine)
  labels = np.round(volume * 3).astype(np.float32)  # 0..3: a label map, not a scan.
  save(str(folder / "labels.nii.gz"), labels, affine)
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  inputs = ["mgh_scan.mgz", "analyze_scan.hdr", "no_extension", "patient.niigata_01.nii.gz",
            f"{long_name}.nii.gz", "labels.nii.gz"]
  done = main_py(TINY, f"--workdir={workdir}", "--mode=sample",
                 *[f"--input={folder / name}" for name in inputs])
  assert done.returncode == 0 and not errors_of(done), done.stderr[-3000:]
  samples = os.path.join(workdir, "samples")
  stems = ("mgh_scan", "analyze_scan", "no_extension", "patient.niigata_01", long_name, "labels")
  for name, stem in zip(inputs, stems):
    # Analyze stores no orientation: its grid is what nibabel reads, x flipped.
    grid = nib.load(str(folder / name)).affine if name != "no_extension" else affine
    out = nib.load(os.path.join(samples, f"{stem}_translated.nii.gz"))
    seg = nib.load(os.path.join(samples, f"{stem}_segmentation.nii.gz"))
    for image in (out, seg):
      assert image.shape == volume.shape
      np.testing.assert_allclose(image.affine, grid, atol=1e-5)
    assert np.all(np.isfinite(out.get_fdata())) and out.get_fdata().max() > 0
    assert os.path.isfile(os.path.join(samples, f"{stem}_qc.png"))
  with open(os.path.join(samples, "labels_translated.json")) as f:
    assert "looks like a label map" in json.load(f)["contrast_warning"]
  assert "labels.nii.gz: only 2 distinct values inside the brain" in done.stderr
  assert not [f for f in os.listdir(samples) if f.startswith(".tmp-")]
