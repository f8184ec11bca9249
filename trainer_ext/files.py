"""Atomic writes: every file or folder the package writes appears complete or not at all.

Each helper writes to a temporary name beside the target, then renames it into place (`os.replace` is atomic on one
file system), so an interrupted run never leaves a half-written file that a later run would take as finished.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write a file or a folder to; on success it replaces `path`.

    On an exception the temporary path is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix (".png", ".parquet"): some writers pick the format from it.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # os.replace cannot replace a non-empty folder
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call `writer(tmp_path)` (which writes a file or a folder), then move the result to `path`."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, value: Any) -> Path:
    return write_text(path, json.dumps(value, indent=2, default=str))


def save_pretrained(path: str | os.PathLike, *objects: Any) -> Path:
    """`save_pretrained` every object (a model, its tokenizer, ...) into one folder that appears all at once."""

    def save(tmp: Path) -> None:
        for obj in objects:
            obj.save_pretrained(tmp)

    return write_atomic(path, save)


__all__ = ["atomic_path", "save_pretrained", "write_atomic", "write_json", "write_text"]
