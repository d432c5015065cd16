"""Write a notebook from a list of cells and execute it, so that its figures are real outputs.

Used by the ``build_*.py`` scripts of this folder (they need the ``notebooks`` extra: jupyter).
"""
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def build(cells: list[tuple[str, str]], name: str) -> None:
    """Execute ``cells`` (``("md" | "code", source)`` pairs) in this folder and write ``name``."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    here = Path(__file__).resolve().parent
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(here)}}).execute()
    for cell in nb.cells:  # drop library warnings printed to stderr (e.g. tqdm's notebook notice)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]
    nbformat.write(nb, here / name)
