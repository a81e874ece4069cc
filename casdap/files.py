"""Atomic file writes, one way for every output of the package.

A file is written to a temporary name in its own folder and renamed onto its final name when
complete, so a reader (``casdap compare``, a resumed run) never sees a half-written file and a
crash or Ctrl-C never destroys the previous version. The file gets the permissions an ordinary
``open()`` would give it (0666 less the umask), so results stay readable by the group like
any other file of the run folder.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "remove_stale_temporaries", "write_json", "write_text"]

# what atomic_path names its temporary files: ".<final name>.<random>.tmp"
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` when the block ends without error
    and is removed when it raises (the old ``path``, if any, is then left as it was)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def remove_stale_temporaries(*folders: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of atomic writes in ``folders`` that were never renamed: what a
    write leaves when its process is killed (SIGKILL runs no clean-up). Call it only where no other
    process is writing (a run folder when its run starts); returns what it deleted."""
    stale = [p for folder in map(Path, folders) if folder.is_dir() for p in folder.iterdir()
             if _TEMPORARY.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
