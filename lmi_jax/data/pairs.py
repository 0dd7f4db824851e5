"""The subjects of a data set on disk: IXI source/target files by subject number, generic
pairs matched by data.source_glob / data.target_glob, and per-subject exclusion masks
(data.exclude_glob). Only paths are found here; `lmi_jax.data.nifti` reads the volumes."""

import glob
import os
import re
from collections.abc import Sequence

import ml_collections
from absl import logging

from lmi_jax.errors import InputError

# IXI<id>-<site>-<num>-<MOD>.nii.gz; DTI files carry an extra -<direction> suffix.
IXI_NAME = re.compile(r"IXI(\d+)-([A-Za-z]+)-(\d+)-([A-Za-z0-9]+)(?:-\d+)?\.nii(?:\.gz)?")
_NII_SUFFIX = re.compile(r"\.nii(?:\.gz|\*)?$")


def _require_root(data: ml_collections.ConfigDict) -> str:
  if not data.root:
    raise InputError(f"data.root is empty: set it to the folder holding the {data.dataset} volumes "
                     "(e.g. --config.data.root=/path/to/data).")
  if not os.path.isdir(data.root):
    raise InputError(f"data.root={data.root!r}: no such folder; point it at the folder with the "
                     "volumes.")
  return data.root


def _nifti_files(root: str) -> list[str]:
  """NIfTI files in root and in its immediate subfolders (one folder per modality)."""
  found = []
  for pattern in ("*.nii", "*.nii.gz", os.path.join("*", "*.nii"), os.path.join("*", "*.nii.gz")):
    found += glob.glob(os.path.join(root, pattern))
  return sorted(found)


def _resolve_missing(pairs: dict, names: dict, missing: dict, data: ml_collections.ConfigDict) -> None:
  """Raise on subjects lacking a modality, or drop them loudly with data.missing='skip'."""
  lines = [f"{names.get(s, s)} (no {', '.join(m)})" for s, m in sorted(missing.items())]
  if not lines:
    return
  if data.missing != "skip":
    shown = "; ".join(lines[:10]) + (f"; ... {len(lines) - 10} more" if len(lines) > 10 else "")
    raise InputError(f"data.root={data.root!r}: {len(lines)} subjects lack a modality: {shown}. "
                     "Add the files, remove those subjects, or set data.missing='skip'.")
  logging.warning("Skipping %d subjects lacking a modality: %s", len(lines), "; ".join(lines))
  for s in missing:
    pairs.pop(s, None)


def ixi_pairs(data: ml_collections.ConfigDict) -> list[tuple[int, str, str, str]]:
  """IXI source/target files under data.root (flat, or one folder per modality), by subject.

  Returns:
    [(IXI number, "IXI002-Guys-0828", source path, target path)] sorted by number.
  """
  root = _require_root(data)
  files: dict[int, dict[str, list[str]]] = {}
  names, foreign = {}, []
  for path in _nifti_files(root):
    match = IXI_NAME.fullmatch(os.path.basename(path))
    if not match:
      foreign.append(path)
      continue
    number, site, num, modality = match.groups()
    names[int(number)] = f"IXI{number}-{site}-{num}"
    files.setdefault(int(number), {}).setdefault(modality, []).append(path)
  if foreign:
    logging.warning("Ignoring %d NIfTI files not named IXI<id>-<site>-<num>-<MOD>.nii.gz, e.g. %s",
                    len(foreign), foreign[0])
  roles = (data.source, data.target)
  for modality in roles:
    if not any(modality in by_mod for by_mod in files.values()):
      raise InputError(f"data.root={root!r}: no IXI files of modality {modality!r} "
                       f"(expected names like IXI002-Guys-0828-{modality}.nii.gz); check data.root, "
                       "data.source and data.target.")
  pairs, missing = {}, {}
  for number, by_mod in files.items():
    for modality in roles:
      if len(by_mod.get(modality, [])) > 1:
        raise InputError(f"{names[number]}: several {modality} files {by_mod[modality]}; keep one.")
    lacking = [m for m in roles if m not in by_mod]
    if lacking:
      missing[number] = lacking
    else:
      pairs[number] = (by_mod[data.source][0], by_mod[data.target][0])
  _resolve_missing(pairs, names, missing, data)
  return [(n, names[n], *pairs[n]) for n in sorted(pairs)]


def _pattern(data: ml_collections.ConfigDict, role: str) -> str:
  """The glob of one role; the default is a folder per subject: <subject>/<modality>.nii[.gz]."""
  pattern = data.source_glob if role == "source" else data.target_glob
  return pattern or f"*/{data.source if role == 'source' else data.target}.nii*"


def _subject_name(relative: str, pattern: str) -> str | None:
  """What the wildcards of `pattern` matched in `relative` (extensions ignored), joined by '/'."""
  regex = "".join("([^/]*)" if c == "*" else "([^/])" if c == "?" else re.escape(c)
                  for c in _NII_SUFFIX.sub("", pattern))
  match = re.fullmatch(regex, _NII_SUFFIX.sub("", relative.replace(os.sep, "/")))
  return "/".join(dict.fromkeys(match.groups())) if match else None


def glob_pairs(data: ml_collections.ConfigDict) -> list[tuple[int, str, str, str]]:
  """Generic source/target pairs under data.root matched by data.source_glob / data.target_glob.

  The subject name is the text the wildcards (* and ?) match, so `*_PD.nii.gz` pairs with
  `*_T1.nii.gz` and `*/PD.nii*` (the default: one folder per subject) with `*/T1.nii*`.

  Returns:
    [(index, subject name, source path, target path)] sorted by name, index = position.
  """
  root = _require_root(data)
  found: dict[str, dict[str, str]] = {}
  for role in ("source", "target"):
    pattern = _pattern(data, role)
    paths = sorted(glob.glob(os.path.join(root, pattern)))
    if not paths:
      raise InputError(f"data.root={root!r}: no files match data.{role}_glob={pattern!r}; fix the "
                       "pattern (relative to data.root, wildcards * and ?) or the folder.")
    for path in paths:
      name = _subject_name(os.path.relpath(path, root), pattern)
      if name is None:
        raise InputError(f"{path}: matches data.{role}_glob={pattern!r} but not as a subject name; "
                         "use only * and ? as wildcards.")
      if role in found.setdefault(name, {}):
        raise InputError(f"{path} and {found[name][role]}: both are the {role} of subject {name!r}; "
                         f"make data.{role}_glob match one file per subject.")
      found[name][role] = path
  missing = {n: [r for r in ("source", "target") if r not in by_role] for n, by_role in found.items()}
  missing = {n: m for n, m in missing.items() if m}
  pairs = {n: (r["source"], r["target"]) for n, r in found.items() if n not in missing}
  _resolve_missing(pairs, {}, missing, data)
  return [(i, n, *pairs[n]) for i, n in enumerate(sorted(pairs))]


def exclude_paths(data: ml_collections.ConfigDict, names: Sequence[str]) -> dict[str, str]:
  """The data.exclude_glob mask file of each subject name ({} when the key is empty).

  Subjects are named as `glob_pairs` names them, by what the wildcards match.
  Raises InputError for a subject without exactly one mask.
  """
  if not data.exclude_glob:
    return {}
  root = _require_root(data)
  found: dict[str, list[str]] = {}
  for path in sorted(glob.glob(os.path.join(root, data.exclude_glob))):
    name = _subject_name(os.path.relpath(path, root), data.exclude_glob)
    if name is not None:
      found.setdefault(name, []).append(path)
  for name in names:
    if len(found.get(name, [])) != 1:
      what = "no file" if name not in found else f"{len(found[name])} files"
      raise InputError(f"data.exclude_glob={data.exclude_glob!r}: {what} for subject {name!r} under "
                       f"{root}; give every subject one mask, or set data.exclude_glob=''.")
  return {name: found[name][0] for name in names}
