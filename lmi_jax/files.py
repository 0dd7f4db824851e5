"""Output files that appear whole or not at all, with the permissions of any new file.

Everything the package writes (reports, figures, translated volumes, the data cache,
exported models) is written under a temporary name beside its destination and renamed
into place, so an interrupted run leaves no half-written file that a later run would
read. Temporary files are created with mode 0o666 (0o777 for folders) less the umask, as
`open` does; `tempfile.mkstemp` / `mkdtemp` made them 0o600 / 0o700, which kept reports and
models from the rest of a group.
"""

import contextlib
import io
import os
import uuid
from collections.abc import Iterator

import numpy as np

from lmi_jax.errors import InputError


def prepare_dir(directory: str) -> None:
  """Creates `directory`, or explains why it cannot be used."""
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise InputError(f"{directory}: exists and is not a folder; choose another output folder.")
  os.makedirs(directory, exist_ok=True)


def temporary_sibling(path: str) -> str:
  """An unused name beside `path` that ends with its name: ".tmp-<random>-<name>" (writers
  that choose a format by the ending, such as ".nii.gz" or ".npz", still see it)."""
  directory, name = os.path.split(os.path.abspath(path))
  prefix = f".tmp-{uuid.uuid4().hex[:12]}-"
  while len((prefix + name).encode()) > 255:  # A file name's limit; the ending is what counts.
    name = name[1:]
  return os.path.join(directory, prefix + name)


# Temporary files being written now, so that an interrupted process can remove them before it
# ends (`remove_temporaries`): a process-wide fact, like its open files.
_WRITING: set[str] = set()


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path to write `path`'s content to; on leaving the block it is
  renamed to `path`, or removed if the block raised. The folder is created."""
  prepare_dir(os.path.dirname(os.path.abspath(path)))
  tmp = temporary_sibling(path)
  _WRITING.add(tmp)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  finally:
    _WRITING.discard(tmp)


def remove_temporaries() -> None:
  """Removes the temporary files of writes in progress (`atomic_path`), for an interrupted run."""
  for tmp in list(_WRITING):
    with contextlib.suppress(OSError):
      os.unlink(tmp)


def atomic_write(path: str, data: bytes) -> None:
  """Writes `data` to `path` through `atomic_path`."""
  with atomic_path(path) as tmp, open(tmp, "xb") as f:
    f.write(data)


def save_npz(path: str, **arrays: np.ndarray) -> None:
  """np.savez_compressed into `path` through a temporary file, so no partial file remains."""
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  atomic_write(path, buffer.getvalue())
