"""Every notebook in ``notebooks/`` runs from top to bottom, and is the one its builder writes.

The notebooks are executed as committed (their first code cell holds small size parameters), on a
kernel of this interpreter with matplotlib's non-interactive backend; a cell that raises fails the
test. Each ``notebooks/build_<name>.py`` must generate ``<name>.ipynb``'s cells, so that
re-running a builder reproduces the committed notebook.
"""
import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest
import torch

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def _module(name: str):
    """Import ``notebooks/<name>.py`` (the folder is not a package; builders import ``_build``)."""
    if str(NOTEBOOKS) not in sys.path:
        sys.path.insert(0, str(NOTEBOOKS))
    spec = importlib.util.spec_from_file_location(f"_notebooks_{name}", NOTEBOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(nb) -> list[tuple[str, str]]:
    return [("md" if c.cell_type == "markdown" else "code", c.source) for c in nb.cells]


def test_there_are_notebooks():
    assert {"quickstart", "posterior_checks"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_what_its_builder_writes(name):
    builder = NOTEBOOKS / f"build_{name}.py"
    assert builder.exists(), f"{name}.ipynb has no builder {builder.name}"
    cells = _module(f"build_{name}").CELLS
    committed = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert _cells(committed) == cells, f"{name}.ipynb differs from build_{name}.py: run the builder"
    first_code = next(src for kind, src in cells if kind == "code")
    assert first_code.lstrip().startswith("# Parameters"), "the first code cell holds the size parameters"
    # every code cell ran when the notebook was built, in order
    counts = [c.execution_count for c in committed.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, monkeypatch):
    # the kernel inherits this process's environment (with matplotlib's inline backend, which needs
    # no display), here with this process's share of the cores: conftest.py gives each xdist worker
    # one, and a kernel on every core would oversubscribe them
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    build = _module("_build")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:  # execute from a clean slate, not on top of the committed outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    build.execute(nb, timeout=600)  # raises CellExecutionError when a cell raises
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook drew no figure"
