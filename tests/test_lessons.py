"""Every lesson notebook, and every solutions notebook, executes top to bottom, in reading order,
well inside its time budget; every lesson with a "Try this" section has its solutions notebook.

The notebooks keep their saved outputs (they should read well on GitHub without running);
these tests execute a fresh copy in memory and leave the files untouched. A lesson runs with
its kernel's working directory `lessons/`, a solutions notebook with `lessons/solutions/`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

LESSON_DIR = Path(__file__).parent.parent / "lessons"
SOLUTION_DIR = LESSON_DIR / "solutions"
LESSONS = sorted(LESSON_DIR.glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted(SOLUTION_DIR.glob("[0-9][0-9]_*_solutions.ipynb"))
BUDGET_SECONDS = 300  # each lesson aims at well under 120 s on 2 cores; this only catches a hang
TRY_THIS = re.compile(r"^#+\s*Try this", re.MULTILINE | re.IGNORECASE)


def execute(path: Path) -> None:
    """Run the notebook at `path` in a fresh kernel whose cwd is its folder; fail on any error output."""
    notebook = nbformat.read(path, as_version=4)
    start = time.time()
    NotebookClient(notebook, timeout=BUDGET_SECONDS, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    assert time.time() - start < BUDGET_SECONDS
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


def has_try_this(path: Path) -> bool:
    notebook = nbformat.read(path, as_version=4)
    return any(c.cell_type == "markdown" and TRY_THIS.search(c.source) for c in notebook.cells)


LESSONS_WITH_EXERCISES = [p for p in LESSONS if has_try_this(p)]


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_executes(path):
    execute(path)


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solutions_execute(path):
    execute(path)


@pytest.mark.parametrize("path", LESSONS_WITH_EXERCISES, ids=[p.stem for p in LESSONS_WITH_EXERCISES])
def test_exercises_have_solutions(path):
    """A lesson with a "Try this" heading has lessons/solutions/<its stem>_solutions.ipynb."""
    assert (SOLUTION_DIR / f"{path.stem}_solutions.ipynb").exists(), f"no solutions notebook for {path.name}"
