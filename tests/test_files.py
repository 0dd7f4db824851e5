"""Outputs appear whole or not at all, with the permissions `open` would give them."""

import gzip
import os
import stat

import nibabel as nib
import numpy as np
import pytest

from lmi_jax import checkpoints, files, pretrained
from lmi_jax.errors import InputError

CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "tiny.py")


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
  old = os.umask(request.param)
  yield request.param
  os.umask(old)


def mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_gives_the_mode_of_open(tmp_path, umask):
  path = tmp_path / "sub" / "report.md"
  files.atomic_write(str(path), b"hello")
  with open(tmp_path / "plain.md", "wb") as f:
    f.write(b"x")
  assert path.read_bytes() == b"hello"
  assert mode(path) == mode(tmp_path / "plain.md") == 0o666 & ~umask
  assert sorted(os.listdir(path.parent)) == ["report.md"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "report.md"
  files.atomic_write(str(path), b"old")
  with pytest.raises(RuntimeError, match="interrupted"):
    with files.atomic_path(str(path)) as tmp:
      with open(tmp, "wb") as f:
        f.write(b"half")
      raise RuntimeError("interrupted")
  assert path.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["report.md"]


def test_temporary_keeps_the_ending_that_picks_the_format(tmp_path):
  path = tmp_path / "volume.nii.gz"
  data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  with files.atomic_path(str(path)) as tmp:
    assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith("volume.nii.gz")
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp)
  with gzip.open(path) as f:  # Compressed, as the name says.
    f.read(1)
  np.testing.assert_array_equal(nib.load(path).get_fdata(), data)


def test_output_folder_that_is_a_file_is_refused(tmp_path):
  (tmp_path / "taken").write_text("")
  with pytest.raises(InputError, match="taken: exists and is not a folder"):
    files.atomic_write(str(tmp_path / "taken" / "report.md"), b"")


def test_exported_model_folder_has_the_mode_of_mkdir(tmp_path, umask):
  params = {"dense": {"kernel": np.ones((2, 3), np.float32)}}
  out = tmp_path / "model"
  pretrained.write_model(params, CONFIG_FILE, {"step": 1}, str(out))
  os.mkdir(tmp_path / "plain")
  assert mode(out) == mode(tmp_path / "plain") == 0o777 & ~umask
  assert mode(out / checkpoints.PARAMS_FILE) == 0o666 & ~umask
  with pytest.raises(FileNotFoundError):
    pretrained.write_model(params, str(tmp_path / "missing.py"), {}, str(tmp_path / "other"))
  assert sorted(os.listdir(tmp_path)) == ["model", "plain"]


def test_exporting_again_keeps_the_baselines_beside_the_model(tmp_path):
  out = tmp_path / "model"
  pretrained.write_model({"w": np.ones(2, np.float32)}, CONFIG_FILE, {"step": 1}, str(out))
  (out / "cyclegan.msgpack").write_bytes(b"baseline")
  pretrained.write_model({"w": np.zeros(2, np.float32)}, CONFIG_FILE, {"step": 2}, str(out))
  assert (out / "cyclegan.msgpack").read_bytes() == b"baseline"
  assert checkpoints.read_meta(str(out))["step"] == 2
  assert sorted(os.listdir(tmp_path)) == ["model"]
