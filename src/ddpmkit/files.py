"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pathlib
import re
import shutil
import tempfile


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path for ``path``; on success it is fsynced and renamed over ``path``
    (atomic on POSIX), on error it is removed and ``path`` is left as it was.

    The temporary file lies in a private folder beside ``path``, ``.NAME.PID.XXXX.tmp/NAME``, named
    after the writer so that one a killed writer left behind can be told apart from a live one's
    (``remove_stale_temps``). The folder also catches what a library writes beside the file it is
    given: safetensors' ``save_file`` writes a full-size ``.tmpXXXXXX`` sibling and renames it, which
    a kill would otherwise leave in the user's folder, under a name no one could attribute."""
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: folder {path.parent} does not exist")
    folder = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    tmp = folder / path.name
    try:
        tmp.touch()
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        # give the file the mode that a plain open() of path would have
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp(\.\w+)?$")


def remove_stale_temps(folder: str | os.PathLike) -> list[pathlib.Path]:
    """Remove the temporary files and folders of ``atomic_path`` in ``folder`` whose writer no longer
    runs (a process killed mid-write); returns them. A live writer's, this process's included, stay."""
    removed = []
    for p in pathlib.Path(folder).glob(".*.tmp*"):
        m = _TEMP.match(p.name)
        if m is None or _alive(int(m["pid"])):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex). Memoised on the file's stat, ctime included (which no
    user call can set back), so asking again for an unchanged file costs a stat and a rewritten
    one is read afresh."""
    path = pathlib.Path(path).resolve()
    st = path.stat()
    return _digest(str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, *stat) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
