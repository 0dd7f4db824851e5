"""The notebooks in notebooks/: committed without outputs, and every cell runs headless.

Each notebook is executed with nbclient in a temporary working directory, on a kernel that runs
this interpreter (`sys.executable`): a kernelspec written to a temporary folder, so the test does
not depend on which `python3` kernel Jupyter would find (CI also registers one with
`python -m ipykernel install --sys-prefix --name python3`). The notebook finds the repository
through $LMI_JAX_ROOT.

Parameters: a notebook's cell tagged `parameters` holds its small defaults; `OVERRIDES` below
adds a cell after it that reassigns some of them (papermill style). `figure_dir`, if the notebook
has it, is pointed at a temporary folder and a PNG must appear there.
"""

import ast
import json
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600

# Parameter overrides per notebook file name, applied on top of its parameters cell.
OVERRIDES: dict[str, dict[str, object]] = {
    "01_lmi_maps.ipynb": {},  # Its defaults are already the small ones.
    "02_translate.ipynb": {},  # Its defaults (tiny config, 30 training steps, 20 sampling steps) are small.
}


def _read(path: pathlib.Path):
  import nbformat
  return nbformat.read(str(path), as_version=4)


def parameters_cell(nb) -> int:
  """Index of the single code cell tagged `parameters`."""
  tagged = [i for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", [])]
  if len(tagged) != 1:
    raise AssertionError(f"expected one code cell tagged 'parameters', found {len(tagged)}")
  return tagged[0]


def parameter_names(source: str) -> set[str]:
  """Names assigned at the top level of a parameters cell."""
  names = set()
  for node in ast.parse(source).body:
    targets = node.targets if isinstance(node, ast.Assign) else (
        [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
    names.update(t.id for t in targets if isinstance(t, ast.Name))
  return names


def inject_parameters(nb, values: dict[str, object]) -> None:
  """Insert a cell that reassigns `values` right after the parameters cell (in place)."""
  import nbformat
  index = parameters_cell(nb)
  unknown = set(values) - parameter_names(nb.cells[index].source)
  if unknown:
    raise AssertionError(f"override of unknown parameters {sorted(unknown)}")
  if values:
    source = "# Injected parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)


def write_kernelspec(folder: pathlib.Path, name: str) -> None:
  """A kernelspec `name` in folder/name that starts an IPython kernel on this interpreter."""
  spec = folder / name
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": f"Python ({sys.executable})",
      "language": "python",
  }))


def execute(path: pathlib.Path, workdir: pathlib.Path, values: dict[str, object]):
  """Runs a copy of the notebook with `values` injected; returns the executed notebook."""
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import KernelManager
  from nbclient import NotebookClient

  nb = _read(path)
  inject_parameters(nb, values)
  kernels = workdir / "kernels"
  write_kernelspec(kernels, "python3")
  specs = KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)
  km = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
  # The inline backend renders every figure (as in Jupyter), whatever MPLBACKEND the caller has.
  env = dict(os.environ, LMI_JAX_ROOT=str(ROOT), PYTHONUNBUFFERED="1",
             MPLBACKEND="module://matplotlib_inline.backend_inline")
  # Keep the kernel's IPython files out of the home directory.
  env.setdefault("IPYTHONDIR", str(workdir / "ipython"))
  client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                          resources={"metadata": {"path": str(workdir)}})
  client.execute(env=env, cwd=str(workdir))
  return nb


def test_notebooks_found():
  assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"
  stale = set(OVERRIDES) - {p.name for p in NOTEBOOKS}
  assert not stale, f"OVERRIDES names notebooks that do not exist: {sorted(stale)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
  nb = _read(path)
  dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
           and (cell.get("outputs") or cell.get("execution_count") is not None)]
  assert not dirty, (f"{path.name}: code cells {dirty} have outputs or execution counts; strip "
                     f"them with `python notebooks/strip_outputs.py {path.relative_to(ROOT)}`")
  parameters_cell(nb)
  assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
  values = dict(OVERRIDES.get(path.name, {}))
  nb = _read(path)
  has_figure_dir = "figure_dir" in parameter_names(nb.cells[parameters_cell(nb)].source)
  if has_figure_dir:
    values.setdefault("figure_dir", str(tmp_path / "figures"))
  # A failing cell raises nbclient's CellExecutionError with the traceback.
  nb = execute(path, tmp_path, values)
  if has_figure_dir:
    assert list((tmp_path / "figures").glob("*.png")), f"{path.name} saved no figure to figure_dir"
  FINDINGS[path.name](printed(nb))


def printed(nb) -> str:
  """Everything the executed notebook's code cells wrote to stdout."""
  return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                 for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def lmi_maps_findings(text: str) -> None:
  """01: Property 1 holds for every reference, and the true shift is found far above chance."""
  import re
  bounds = re.findall(r"Property 1 max\(cross MI - self LMI\) = ([-+.\d]+) bits \(<= 0 holds: (\w+)\)", text)
  assert len(bounds) >= 3 and all(ok == "True" and float(v) <= 0.005 for v, ok in bounds), bounds
  chance = float(re.search(r"shifts, chance (\d+)%", text).group(1))
  found = [float(v) for v in re.findall(r"found at ([\d.]+)% of brain pixels", text)]
  assert found and min(found) > 2 * chance, (found, chance)


def translate_findings(text: str) -> None:
  """02: the K-means centroids of T1w come out ascending, one per tissue class."""
  import re
  line = re.search(r"K-means centroids \(T1w training slices\): (.*)", text).group(1)
  centroids = [float(v) for v in line.split(",")]
  assert len(centroids) == 3 and centroids == sorted(centroids) and 0 < centroids[0] < 1, centroids


FINDINGS = {"01_lmi_maps.ipynb": lmi_maps_findings, "02_translate.ipynb": translate_findings}
