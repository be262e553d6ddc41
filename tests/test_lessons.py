"""Every lesson notebook executes top to bottom, in reading order, well inside its time budget.

The notebooks keep their saved outputs (they should read well on GitHub without running);
this test executes a fresh copy in memory and leaves the files untouched.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

LESSONS = sorted((Path(__file__).parent.parent / "lessons").glob("[0-9][0-9]_*.ipynb"))
BUDGET_SECONDS = 300  # each lesson aims at well under 120 s on 2 cores; this only catches a hang


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_executes(path):
    notebook = nbformat.read(path, as_version=4)
    start = time.time()
    NotebookClient(notebook, timeout=BUDGET_SECONDS, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    assert time.time() - start < BUDGET_SECONDS
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
