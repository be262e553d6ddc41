"""Writing results so that nothing is lost: atomic writes, strict JSON, output folders checked first.

Four rules every command of the project follows when it writes:
- **atomic**: a file is written to a temporary file in the same folder, then renamed over
  its final name (`os.replace`, atomic on one file system). A crash mid-write leaves the
  old file or the new one, never half of each.
- **strict JSON**: `NaN` and `Infinity` are not JSON; a result holding them is refused
  (`allow_nan=False`) with the offending key named, instead of writing a file other tools
  cannot read.
- **checked before work**: `prepare_output_dir` (a folder) and `check_output_file` (one
  file) run before any training. An output path that is a file, is not writable, or
  already holds results (unless the caller asked to overwrite) stops the command at once,
  not after an hour of training.
- **nothing replaced by default**: a command's default output is a new folder
  (`fresh_run_dir`, e.g. `runs/compare-20250101-120000`), and the committed results and the
  shipped base model are written only on an explicit request.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` to write a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def find_non_finite(value, where: str = "") -> str | None:
    """The key path of the first NaN or infinite float in a JSON-like value (None: all finite)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "<top level>"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = find_non_finite(item, f"{where}[{key!r}]")
        if found:
            return found
    return None


def to_json(value, indent: int | None = 1) -> str:
    """Strict JSON text: a NaN or infinity is refused, naming where it is."""
    bad = find_non_finite(value)
    if bad is not None:
        raise ValueError(f"the result holds a non-finite number at {bad} (NaN or inf is not JSON); "
                         "training diverged: lower the learning rate")
    return json.dumps(value, indent=indent, allow_nan=False) + "\n"


def write_json(path: str | Path, value, indent: int | None = 1) -> Path:
    """Write `value` as strict JSON, atomically."""
    return atomic_write_text(path, to_json(value, indent))


def prepare_output_dir(path: str | Path, overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """Check (before any work) that `path` can receive a run's files; create it; return it.

    Refused: a path that is a file; a folder that already holds files, unless `overwrite`
    (then the files this run writes replace theirs, one by one, atomically); a folder that
    cannot be written to. `flag` is the option the user passes to allow overwriting.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output path {path} is a file, not a folder; pass a folder path")
    held = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if held and not overwrite:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise ValueError(f"output folder {path} already holds results ({shown}); choose another folder, "
                         f"or pass {flag} to replace them")
    try:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / ".write-test", "").unlink()
    except OSError as error:
        raise ValueError(f"cannot write to output folder {path} ({error}); choose a folder you can write to") \
            from error
    return path


def fresh_run_dir(name: str, root: str | Path = "runs") -> Path:
    """A folder that does not exist yet, `root/name-YYYYMMDD-HHMMSS` (with `-2`, `-3`, ... if taken).

    The default output of a command: re-running it never collides with, or replaces, an
    earlier run. Nothing is created here; `prepare_output_dir` does that.
    """
    stem = Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = stem, 1
    while path.exists():
        n += 1
        path = stem.with_name(f"{stem.name}-{n}")
    return path


def is_within(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` is `folder` or lies inside it, comparing resolved paths (links and `..` followed)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_output_file(path: str | Path, overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """Check (before any work) that a single result file can be written at `path`.

    Refused: a folder; an existing file, unless `overwrite`; a parent folder that cannot be
    written to. The parent folder is created.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output path {path} is a folder; pass a file path such as {path / 'results.json'}")
    if path.exists() and not overwrite:
        raise ValueError(f"output file {path} already exists; choose another path, or pass {flag} to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path.parent / f".{path.name}.write-test", "").unlink()
    except OSError as error:
        raise ValueError(f"cannot write to {path.parent} ({error}); choose a folder you can write to") from error
    return path


def save_figure(fig, path: str | Path, **savefig_kwargs) -> Path:
    """`fig.savefig(path)`, atomically: the format is taken from `path`'s suffix (the temporary file's is .tmp)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig_kwargs))
