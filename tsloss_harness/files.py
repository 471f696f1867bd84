"""Writing results so that a reader never sees half of one: the atomic file write and directory swap."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished directory ``tmp`` to ``final`` (same file system). An existing ``final`` is
    replaced only now that ``tmp`` is complete: it is moved aside, ``tmp`` moved in, then deleted;
    if the second move fails the old one is put back. ``rename`` alone cannot replace a non-empty
    directory."""
    if not final.exists():
        os.rename(tmp, final)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.rename(final, aside / final.name)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(aside / final.name, final)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """``path.write_text(text)`` that a reader (or a kill mid-write) never sees half of: written beside
    it, then renamed over it. A sweep takes a cell whose ``summary.json`` exists for finished."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
