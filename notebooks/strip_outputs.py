"""Strips outputs, execution counts and run metadata from notebooks, in place.

Notebooks are committed without outputs so that diffs stay readable (tests/test_notebooks.py
checks it). Run after working on a notebook in Jupyter:

  python notebooks/strip_outputs.py                 # every notebooks/*.ipynb
  python notebooks/strip_outputs.py a.ipynb b.ipynb
  python notebooks/strip_outputs.py --check         # exit 1 if any notebook would change
"""

import argparse
import pathlib
import sys

import nbformat

# Cell metadata written by Jupyter or nbclient while running; tags and the like are kept.
_RUN_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")
# Notebook metadata kept: the kernel to use and the language; the rest (widgets state,
# interpreter versions) changes with every run.
_KEPT_NOTEBOOK_METADATA = ("kernelspec", "language_info")


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
  """The notebook without outputs, execution counts and run metadata (modified in place)."""
  for cell in nb.cells:
    if cell.cell_type == "code":
      cell.outputs = []
      cell.execution_count = None
    for key in _RUN_METADATA:
      cell.metadata.pop(key, None)
  nb.metadata = nbformat.NotebookNode(
      {k: v for k, v in nb.metadata.items() if k in _KEPT_NOTEBOOK_METADATA})
  if "language_info" in nb.metadata:
    name = nb.metadata.language_info.get("name", "python")
    nb.metadata.language_info = nbformat.NotebookNode({"name": name})
  return nb


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("paths", nargs="*", type=pathlib.Path,
                      help="notebooks (default: every .ipynb next to this script)")
  parser.add_argument("--check", action="store_true",
                      help="change nothing; exit 1 if a notebook is not stripped")
  args = parser.parse_args(argv)
  paths = args.paths or sorted(pathlib.Path(__file__).resolve().parent.glob("*.ipynb"))
  dirty = []
  for path in paths:
    before = path.read_text(encoding="utf-8")
    nb = strip(nbformat.reads(before, as_version=4))
    after = nbformat.writes(nb) + "\n"
    if after != before:
      dirty.append(path)
      if not args.check:
        path.write_text(after, encoding="utf-8")
  for path in dirty:
    print(f"{'not stripped' if args.check else 'stripped'}: {path}")
  return 1 if args.check and dirty else 0


if __name__ == "__main__":
  sys.exit(main())
