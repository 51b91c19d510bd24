"""Step cache of the local runner, as KFP's: same component, inputs and data -> same outputs.

The key is the step's resolved container (image, command, arguments, environment but the
pod's identity), the digests of its input artifacts and, for BigQuery steps, the contents of
the tables its query reads (so reloading the source table invalidates the splits). A hit
also needs every output that names a file or gs:// object to still exist. Entries live in
`<home>/cache/<key>/`, written to a temp folder and renamed, so a crash never leaves half.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIGQUERY_LAUNCHER = "kfp_component.google.bigquery"
# Pod identity changes on every run and attempt; it is not an input of the step.
_IDENTITY_ENV = {"KFP_POD_NAME", "KFP_POD_UID", "KFP_NAMESPACE", "WORKFLOW_ID", "KFP_RUN_ID",
                 "ENABLE_CACHING"}


@dataclass(frozen=True)
class CacheEntry:
    """What a cached step produced: output parameters and artifact files."""

    outputs: dict[str, str]
    artifacts: dict[str, Path]


def step_key(container: dict[str, Any], command: list[str], env: dict[str, str],
             input_artifacts: dict[str, Path]) -> str:
    """The cache key of a step from its resolved (not yet localised) command and inputs."""
    material = {
        "image": container.get("image", ""),
        "command": command,
        "env": {name: value for name, value in sorted(env.items()) if name not in _IDENTITY_ENV},
        "artifacts": {name: _file_digest(path) for name, path in sorted(input_artifacts.items())},
        "tables": _tables_digest(command) if BIGQUERY_LAUNCHER in command else {},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:40]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _tables_digest(command: list[str]) -> dict[str, str]:
    """Row count and content hash of every table the step's query reads."""
    import sqlglot
    from sqlglot import exp

    from pipeline.local.bigquery import Warehouse, parse_table_name

    query = command[command.index("--query") + 1] if "--query" in command else ""
    try:
        statement = sqlglot.parse_one(query, read="bigquery")
    except sqlglot.errors.ParseError:
        return {"unparsed": query}
    names = sorted({f"{table.db}.{table.name}" for table in statement.find_all(exp.Table)
                    if table.db and table.name})
    digests = {}
    with Warehouse() as warehouse:
        for name in names:
            dataset, table = parse_table_name(name)
            try:
                count, digest = warehouse.con.execute(
                    f'SELECT count(*), bit_xor(hash(t)) FROM "{dataset}"."{table}" t').fetchone()
            except Exception:  # a missing table: the step itself reports it
                count, digest = None, None
            digests[name] = f"{count}:{digest}"
    return digests


class StepCache:
    """Cache entries under `<home>/cache`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def lookup(self, key: str) -> CacheEntry | None:
        """The entry for `key` if it exists and what it names still exists."""
        folder = self.root / key
        try:
            manifest = json.loads((folder / "outputs.json").read_text())
        except (OSError, ValueError):
            return None
        artifacts = {name: folder / "artifacts" / file
                     for name, file in manifest["artifacts"].items()}
        if not all(path.is_file() for path in artifacts.values()):
            return None
        if not all(_exists(value) for value in manifest["outputs"].values()):
            return None
        return CacheEntry(manifest["outputs"], artifacts)

    def store(self, key: str, outputs: dict[str, str], artifacts: dict[str, str]) -> None:
        """Keep a finished step's outputs (atomic: staged, then renamed into place)."""
        folder = self.root / key
        if folder.exists():
            return
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        (staging / "artifacts").mkdir(parents=True)
        files = {}
        for index, (name, path) in enumerate(sorted(artifacts.items())):
            files[name] = f"{index}"
            shutil.copyfile(path, staging / "artifacts" / files[name])
        (staging / "outputs.json").write_text(json.dumps({"outputs": outputs, "artifacts": files}))
        try:
            os.rename(staging, folder)
        except OSError:  # another run stored the same key first
            shutil.rmtree(staging, ignore_errors=True)


def _exists(value: str) -> bool:
    """Outputs that name a file or object must still be there; other values always hold."""
    if value.startswith("gs://"):
        import fsspec

        return fsspec.filesystem("gs").exists(value)
    if value.startswith("/"):
        return Path(value).exists()
    return True
