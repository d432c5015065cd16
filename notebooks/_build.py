"""Write a notebook from a list of cells and execute it, so that its figures are real outputs.

Used by the ``build_*.py`` scripts of this folder and by ``tests/test_notebooks.py`` (both need
``nbclient`` and ``ipykernel``, in the ``test`` extra). The kernel is the interpreter that runs
this code, whatever kernel named ``python3`` the machine has installed elsewhere.
"""
import os
from pathlib import Path

import nbformat
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook of ``cells`` (``("md" | "code", source)`` pairs), not executed."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, *, timeout: int = 900) -> nbformat.NotebookNode:
    """Run every cell of ``nb`` in place, in this folder, on a kernel of this interpreter.

    The kernel gets this process's environment with matplotlib's inline backend, which needs no
    display and keeps the figures as outputs (an ``MPLBACKEND=Agg`` set for CI would drop them).
    Raises ``nbclient.exceptions.CellExecutionError`` when a cell raises.
    """
    # kernel_dirs=[]: only the native spec, whose argv is this interpreter (sys.executable)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    env = {**os.environ, "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    NotebookClient(nb, km=km, timeout=timeout, resources={"metadata": {"path": str(HERE)}}).execute(env=env)
    return nb


def build(cells: list[tuple[str, str]], name: str) -> None:
    """Execute ``cells`` in this folder and write the notebook with its outputs to ``name``."""
    nb = execute(notebook(cells))
    for cell in nb.cells:  # drop library warnings printed to stderr (e.g. tqdm's notebook notice)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]
    nbformat.write(nb, HERE / name)
