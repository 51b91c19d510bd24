"""The one atomic write of a local file: readers see the old file or the new one, never half.

Data goes to a temporary file in the target's folder, which is then renamed over the target
(`os.replace` is atomic within a file system), so a crash or kill -9 never leaves a partial
file under the real name. Standard library only: the trainer and base images carry it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o644,
                 durable: bool = False) -> None:
    """Write `data` (text is UTF-8 encoded) to `path` atomically, creating its folder.

    Args:
        path: the local file to write.
        data: the whole new content.
        mode: permission bits of the new file (mkstemp alone would make it owner-only).
        durable: fsync the data before the rename, so it survives a power loss too.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                         dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            stream.write(data.encode() if isinstance(data, str) else data)
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
