"""Step cache of the local runner, as KFP's: the same step on the same inputs -> the same outputs.

The key covers everything that decides a step's outputs: its resolved container (image,
command, arguments, environment but the pod's identity), the digest of each input artifact,
the code and library versions that execute it (a local run's image digest) and, for a
BigQuery query, the contents of every table it reads (`table_fingerprint`).

An entry keeps the outputs by content: the output parameter values plus a sha256-named copy
of every output artifact and of every file an output parameter names (the split CSV at
`output_gcs_path`, local or gs://). A hit checks each copy against its digest and writes it
back wherever the file in place differs, so a path that another run overwrote never leaks
into this one. A query that writes a named table hits only while that table still holds what
the step wrote; DDL and DML (their effect is the warehouse itself) always run.

Entries live in `<home>/cache/<key>/` (`manifest.json` and `blobs/`), staged and renamed into
place, so a crash never leaves half an entry. A broken entry (unreadable manifest, missing or
altered copy) is a miss, logged in one line, and the re-run's outputs replace it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.atomic import write_atomic
from pipeline.errors import one_line
from pipeline.local.home import local_home
from pipeline.local.storage import local_gcs_path, resolves_inside

if TYPE_CHECKING:
    import duckdb

BIGQUERY_LAUNCHER = "kfp_component.google.bigquery"
MANIFEST = "manifest.json"
FORMAT = 3  # 3: files named by artifacts too
NAMED_FILE_LIMIT = 4096  # an artifact larger than this is data, not a file name
# Pod identity changes on every run and attempt; it is not an input of the step.
_IDENTITY_ENV = {"KFP_POD_NAME", "KFP_POD_UID", "KFP_NAMESPACE", "WORKFLOW_ID", "KFP_RUN_ID",
                 "ENABLE_CACHING"}
_REPO = Path(__file__).resolve().parents[2]
# What executes a step besides its command: this checkout's code and these libraries.
_CODE_FOLDERS = ("pipeline", "trainer_image")
_LIBRARIES = ("duckdb", "sqlglot", "pyfarmhash", "pyarrow", "numpy", "pandas", "scikit-learn",
              "fsspec", "gcsfs")
logger = logging.getLogger(__name__)


class CacheError(Exception):
    """A cache entry or an output cannot be used; the step runs instead."""


class NotCacheable(Exception):
    """A step output the cache cannot keep by content (a folder); the step is not stored."""


@dataclass(frozen=True)
class StepKey:
    """A step's cache key, and the named warehouse tables the step writes."""

    step: str
    digest: str
    tables_written: tuple[str, ...] = ()


@dataclass(frozen=True)
class CacheEntry:
    """A cached step's outputs, put back in place: parameter values and artifact paths."""

    outputs: dict[str, str]
    artifacts: dict[str, str] = field(default_factory=dict)


def step_key(step: str, container: dict[str, Any], command: list[str], env: dict[str, str],
             input_artifacts: dict[str, Path]) -> StepKey | None:
    """The cache key of a step from its resolved (not yet localised) command and inputs.

    None when the step cannot be cached: a BigQuery statement other than a query, or an
    input that cannot be read (the step then runs and reports it).
    """
    try:
        artifacts = {name: file_digest(path) for name, path in sorted(input_artifacts.items())}
        tables_read: dict[str, str] = {}
        tables_written: tuple[str, ...] = ()
        if BIGQUERY_LAUNCHER in command:
            tables = _query_tables(command)
            if tables is None:
                return None
            names_read, tables_written = tables
            with _warehouse() as warehouse:
                tables_read = {name: table_fingerprint(warehouse.con, name)
                               for name in names_read}
    except (OSError, *_warehouse_errors()) as error:
        logger.warning("step cache: cannot key %s (%s); running it", step, one_line(error))
        return None
    material = {
        "image": container.get("image", ""),
        "command": command,
        "env": {name: value for name, value in sorted(env.items()) if name not in _IDENTITY_ENV},
        "artifacts": artifacts,
        "tables": tables_read,
        "code": code_digest(),
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:40]
    return StepKey(step, digest, tables_written)


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a local file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.cache
def code_digest() -> str:
    """The local stand-in of an image digest: this checkout's code and the library versions."""
    digest = hashlib.sha256()
    for folder in _CODE_FOLDERS:
        for path in sorted((_REPO / folder).rglob("*")):
            if path.suffix in (".py", ".yaml") and path.is_file():
                digest.update(f"{path.relative_to(_REPO)}\0".encode() + path.read_bytes())
    for library in _LIBRARIES:
        try:
            digest.update(f"{library}=={metadata.version(library)}\0".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{library} absent\0".encode())
    return digest.hexdigest()


def table_fingerprint(con: duckdb.DuckDBPyConnection, name: str) -> str:
    """A digest of a warehouse table's contents: duplicates and row order count.

    Row count, column names and types, two independent order-free sums of 64-bit row hashes
    modulo 2**64 (DuckDB's hash of the row, FarmHash Fingerprint64 of its JSON text), and a
    sum of hashes of (position, row): the steps export rows in table order, so a reordered
    table changes their outputs. Unlike XOR, sums do not cancel duplicate rows.
    """
    from pipeline.local.bigquery import parse_table_name

    dataset, table = parse_table_name(name)
    kinds = con.execute(
        "SELECT 'table' FROM duckdb_tables() WHERE lower(schema_name) = lower($1) "
        "AND lower(table_name) = lower($2) UNION ALL SELECT 'view' FROM duckdb_views() "
        "WHERE NOT internal AND lower(schema_name) = lower($1) AND lower(view_name) = lower($2)",
        [dataset, table]).fetchall()
    if not kinds:
        return "missing"
    source = f'"{dataset}"."{table}"'
    columns = con.execute(f"DESCRIBE {source}").fetchall()
    position = "rowid" if kinds[0][0] == "table" else "row_number() OVER ()"
    count, row_hashes, farm_hashes, ordered = con.execute(
        "SELECT count(*), sum(hash(_cache_row)), "
        "sum(farm_fingerprint(to_json(_cache_row)::VARCHAR)), "
        "sum(hash(_cache_position, _cache_row)) FROM "
        f"(SELECT {position} AS _cache_position, _cache_row FROM {source} _cache_row)"
    ).fetchone()
    layout = ",".join(f"{column[0]}:{column[1]}" for column in columns)
    sums = ":".join(f"{int(value or 0) % 2**64:016x}"
                    for value in (row_hashes, farm_hashes, ordered))
    return f"{count}:{hashlib.sha256(layout.encode()).hexdigest()[:16]}:{sums}"


def _query_tables(command: list[str]) -> tuple[list[str], tuple[str, ...]] | None:
    """(tables read, named tables written) by a BigQuery step's query; None if not a query."""
    import sqlglot
    from sqlglot import exp

    query = _flag(command, "--query")
    try:
        statement = sqlglot.parse_one(query, read="bigquery")
    except sqlglot.errors.SqlglotError:
        return None  # the step itself reports the bad query
    if not isinstance(statement, exp.Query):
        return None
    ctes = {cte.alias_or_name.lower() for cte in statement.find_all(exp.CTE)}
    read = set()
    for table in statement.find_all(exp.Table):
        if not table.db:
            if table.name.lower() in ctes:
                continue
            return None  # an unqualified name: which table it means is not ours to guess
        read.add(f"{table.db}.{table.name}")
    dataset, table = _flag(command, "--dataset_id"), _flag(command, "--table_id")
    written = (f"{dataset}.{table}",) if dataset and table else ()
    return sorted(read), written


def _warehouse() -> Any:
    """The local warehouse (DuckDB is loaded only for the steps that touch it)."""
    from pipeline.local.bigquery import Warehouse

    return Warehouse()


def _warehouse_errors() -> tuple[type[Exception], ...]:
    """The warehouse's errors, for an `except` (evaluated only when something was raised)."""
    import duckdb

    from pipeline.local.bigquery import WarehouseError

    return WarehouseError, duckdb.Error


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1] if flag in command[:-1] else ""


class StepCache:
    """Cache entries under `<home>/cache`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def restore(self, key: StepKey, artifact_paths: dict[str, Path]) -> CacheEntry | None:
        """Put a cached step's outputs in place (artifacts at `artifact_paths`, the files its
        output parameters name where they belong); None on a miss."""
        folder = self.root / key.digest
        if not folder.is_dir():
            return None
        try:
            manifest = _read_manifest(folder)
            blobs = {digest: _verified_blob(folder, digest) for digest in
                     {*manifest["artifacts"].values(), *manifest["files"].values()}}
            unknown = set(manifest["artifacts"]) - set(artifact_paths)
            if unknown:
                raise CacheError(f"artifact {sorted(unknown)[0]!r} is not an output of the step")
            outside = [uri for uri in manifest["files"] if not (
                (local := local_gcs_path(uri)).startswith("gs://") or _in_local_home(local))]
            if outside:
                raise CacheError(f"it names {outside[0]}, outside the local home")
        except (CacheError, OSError) as error:
            logger.warning("step cache: entry %s of %s unusable (%s); running the step",
                           key.digest, key.step, one_line(error))
            _discard(folder)
            return None
        try:
            if manifest["tables"]:
                with _warehouse() as warehouse:
                    for name, fingerprint in manifest["tables"].items():
                        if table_fingerprint(warehouse.con, name) != fingerprint:
                            return None  # the table the step wrote has changed since
            for uri, digest in manifest["files"].items():
                _put_file(uri, blobs[digest], digest)
            for name, digest in manifest["artifacts"].items():
                _put_file(str(artifact_paths[name]), blobs[digest], digest)
        except (OSError, *_warehouse_errors()) as error:
            logger.warning("step cache: cannot put back the outputs of %s (%s); running the step",
                           key.step, one_line(error))
            return None
        return CacheEntry(dict(manifest["outputs"]),
                          {name: str(artifact_paths[name]) for name in manifest["artifacts"]})

    def store(self, key: StepKey, outputs: dict[str, str], artifacts: dict[str, str]) -> None:
        """Keep a finished step's outputs by content (staged, then renamed into place)."""
        folder = self.root / key.digest
        if folder.exists():
            return
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        try:
            (staging / "blobs").mkdir(parents=True)
            manifest = {"format": FORMAT, "step": key.step, "outputs": outputs,
                        "artifacts": {name: _keep(staging, Path(path).read_bytes())
                                      for name, path in sorted(artifacts.items())},
                        "files": {}, "tables": {}}
            for value in named_files(outputs, artifacts):
                content = _output_file(value)
                if content is not None:
                    manifest["files"][value] = _keep(staging, content)
            if key.tables_written:
                with _warehouse() as warehouse:
                    manifest["tables"] = {name: table_fingerprint(warehouse.con, name)
                                          for name in key.tables_written}
            write_atomic(staging / MANIFEST, json.dumps(manifest, indent=1))
            os.rename(staging, folder)
        except FileExistsError:
            pass  # another run stored the same key first
        except OSError as error:
            if not folder.exists():
                logger.warning("step cache: not storing %s (%s)", key.step, one_line(error))
        except (CacheError, *_warehouse_errors()) as error:
            logger.warning("step cache: not storing %s (%s)", key.step, one_line(error))
        except NotCacheable as reason:
            logger.debug("step cache: not storing %s (%s)", key.step, reason)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except ValueError as error:
        raise CacheError(f"{MANIFEST} is not JSON: {one_line(error)}") from None
    parts = ("outputs", "artifacts", "files", "tables")
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT
            or not all(isinstance(manifest.get(part), dict)
                       and all(isinstance(value, str) for value in manifest[part].values())
                       for part in parts)):
        raise CacheError(f"{MANIFEST} is not a format {FORMAT} manifest")
    return manifest


def _verified_blob(folder: Path, digest: str) -> bytes:
    if not isinstance(digest, str) or len(digest) != 64:
        raise CacheError(f"{digest!r} is not a sha256 digest")
    try:
        content = (folder / "blobs" / digest).read_bytes()
    except FileNotFoundError:
        raise CacheError(f"blob {digest[:12]} is missing") from None
    if hashlib.sha256(content).hexdigest() != digest:
        raise CacheError(f"blob {digest[:12]} does not match its sha256")
    return content


def _keep(staging: Path, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()
    (staging / "blobs" / digest).write_bytes(content)
    return digest


def _output_file(value: str) -> bytes | None:
    """The content of the file an output parameter value names; None for other values.

    Raises:
        NotCacheable: the value names a folder, whose contents the cache cannot vouch for.
    """
    value = local_gcs_path(value)
    if value.startswith("gs://"):
        fs = _gcs()
        if fs.isdir(value):
            raise NotCacheable(f"output {value} is a folder")
        return fs.cat_file(value) if fs.isfile(value) else None
    if value.startswith("/") and not {"\n", "\0"} & set(value):
        path = Path(value)
        if not path.exists():
            return None
        if not _in_local_home(value):
            raise NotCacheable(f"output {value} lies outside the local home")
        if path.is_dir():
            raise NotCacheable(f"output {value} is a folder")
        return path.read_bytes() if path.is_file() else None
    return None


def _in_local_home(path: str) -> bool:
    """Whether a local path lies in the local home (its storage, its runs): the only files a
    cache entry keeps or puts back."""
    return resolves_inside(path, local_home())


def named_files(outputs: dict[str, str], artifacts: dict[str, str]) -> list[str]:
    """The values that may name a file a step wrote: its output parameters, and its artifacts
    that hold one path or URI (a UriOutput, such as the BigQuery component's output_gcs_path,
    names the CSV the step exported), whichever of them a later step happens to consume."""
    values = list(outputs.values())
    for path in artifacts.values():
        try:
            if os.path.getsize(path) <= NAMED_FILE_LIMIT:
                values.append(Path(path).read_text().strip())
        except (OSError, UnicodeDecodeError):
            continue
    return list(dict.fromkeys(values))


def output_digests(values: list[str]) -> dict[str, str]:
    """sha256 of each file a value names (folders and other values skipped)."""
    digests = {}
    for value in values:
        try:
            content = _output_file(value)
        except (NotCacheable, OSError):
            continue
        if content is not None:
            digests[value] = hashlib.sha256(content).hexdigest()
    return digests


def changed_files(digests: dict[str, str]) -> list[str]:
    """The files among `digests` whose content now differs (or that are gone)."""
    changed = []
    for uri, digest in digests.items():
        try:
            content = _output_file(uri)
        except (NotCacheable, OSError):
            content = None
        if content is None or hashlib.sha256(content).hexdigest() != digest:
            changed.append(uri)
    return changed


def _put_file(target: str, content: bytes, digest: str) -> None:
    """Make `target` hold `content`: left alone when it already does, else written atomically."""
    target = local_gcs_path(target)
    if target.startswith("gs://"):
        fs = _gcs()
        if not (fs.isfile(target) and hashlib.sha256(fs.cat_file(target)).hexdigest() == digest):
            fs.pipe_file(target, content)
        return
    path = Path(target)
    if not (path.is_file() and file_digest(path) == digest):
        write_atomic(path, content)


def _gcs() -> Any:
    """The gs:// filesystem, without listings cached from before a step wrote its outputs."""
    import fsspec

    fs = fsspec.filesystem("gs")
    fs.invalidate_cache()
    return fs


def _discard(folder: Path) -> None:
    """Remove a broken entry (renamed away first, so no reader sees it half-deleted)."""
    trash = folder.with_name(f".trash-{uuid.uuid4().hex}")
    try:
        os.rename(folder, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)
