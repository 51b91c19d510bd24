"""`gsutil` and `gcloud storage` stand-ins for local steps: cp, ls, cat, rm (and -r).

On a local step's PATH (`step_bin/`) ahead of any real Cloud SDK. gs:// URLs go through
gcsfs to `STORAGE_EMULATOR_HOST` (the local server's Cloud Storage subset, or the storage
emulator the user configured); local paths through the file system. Wildcards (`*`, `**`,
`?`, `[...]`) are expanded as fsspec globs. Errors are gsutil's one-line `CommandException:`
(gcloud's `ERROR: (gcloud.storage.CMD)`) with exit status 1; a command or option the stand-in
does not implement is refused the same way, never approximated.
"""
from __future__ import annotations

import getopt
import mimetypes
import os
import posixpath
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import one_line

GS = "gs://"
COMMANDS = ("cp", "ls", "cat", "rm")
_WILDCARDS = set("*?[")


class CommandError(Exception):
    """What the stand-in prints as its one-line error before exiting 1."""


@dataclass(frozen=True)
class Location:
    """A parsed URL: gs://bucket/path (`cloud`) or a local path."""

    url: str
    cloud: bool
    path: str  # gcsfs path "bucket/key" or a local path

    @classmethod
    def parse(cls, url: str) -> Location:
        if url.startswith(GS):
            bucket = url[len(GS):].split("/", 1)[0]
            if not bucket:
                raise CommandError(f'"{url}" names no bucket; use gs://BUCKET[/OBJECT]')
            return cls(url, True, url[len(GS):])
        if "://" in url and not url.startswith("file://"):
            raise CommandError(f'Unrecognized scheme in "{url}"; the local stand-in supports '
                               "gs:// URLs and local paths")
        path = url[len("file://"):] if url.startswith("file://") else url
        return cls(url, False, path)

    def join(self, *parts: str) -> Location:
        base = self.url.rstrip("/") if self.url.rstrip("/") != GS.rstrip("/") else self.url
        url = "/".join([base, *(part.strip("/") for part in parts if part)])
        return Location.parse(url)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))


class Tool:
    """One invocation: file systems made on first use, counters for the summary."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._gcs: Any = None
        self._local: Any = None

    def fs(self, location: Location) -> Any:
        if location.cloud:
            if self._gcs is None:
                os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
                if not os.environ.get("STORAGE_EMULATOR_HOST"):
                    raise CommandError("STORAGE_EMULATOR_HOST is not set: this gsutil stand-in "
                                       "only runs inside a local pipeline step")
                import gcsfs

                self._gcs = gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)
            return self._gcs
        if self._local is None:
            from fsspec.implementations.local import LocalFileSystem

            self._local = LocalFileSystem()
        return self._local

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    # Matching -----------------------------------------------------------------------------
    def expand(self, location: Location) -> list[tuple[Location, bool]]:
        """(location, is_folder) for each match of a URL (wildcards expanded), sorted."""
        fs = self.fs(location)
        if _WILDCARDS & set(location.path):
            matches = fs.glob(location.path, detail=True)
            return [(self._child(location, path), info["type"] == "directory")
                    for path, info in sorted(matches.items())]
        path = location.path.rstrip("/") or location.path
        if fs.isfile(path):
            return [(location, False)]
        if _is_folder(fs, path, location.cloud):
            return [(location, True)]
        return []

    def files_below(self, location: Location) -> list[tuple[Location, str]]:
        """Every file under a folder, with its path relative to the folder."""
        fs = self.fs(location)
        base = location.path.rstrip("/")
        return [(self._child(location, path), posixpath.relpath(path, base))
                for path in sorted(fs.find(base))]

    def _child(self, pattern: Location, path: str) -> Location:
        return Location.parse(GS + path if pattern.cloud else path)

    # Transfers ----------------------------------------------------------------------------
    def copy(self, source: Location, target: Location) -> None:
        self.say(f"Copying {source.url if source.cloud else 'file://' + source.path}...")
        source_fs, target_fs = self.fs(source), self.fs(target)
        if target.cloud:
            if source.cloud:
                target_fs.copy(source.path, target.path)
            else:
                content_type = mimetypes.guess_type(source.path)[0] or "application/octet-stream"
                target_fs.put_file(source.path, target.path, content_type=content_type)
            return
        folder = os.path.dirname(os.path.abspath(target.path))
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.",
                                             suffix=".gstmp")
        os.close(handle)
        try:  # written beside the target, then renamed: never half a file under its name
            source_fs.get_file(source.path, temporary)
            os.replace(temporary, target.path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def exists(self, location: Location) -> bool:
        return self.fs(location).exists(location.path)

    def is_folder(self, location: Location) -> bool:
        return _is_folder(self.fs(location), location.path.rstrip("/"), location.cloud)


def _is_folder(fs: Any, path: str, cloud: bool) -> bool:
    if cloud and "/" not in path:  # a bucket
        try:
            return fs.isdir(path)
        except OSError:
            return False
    return fs.isdir(path)


# Commands ---------------------------------------------------------------------------------
def cp(tool: Tool, options: dict[str, str], urls: list[str]) -> int:
    if len(urls) < 2:
        raise CommandError("cp needs a source and a destination: cp [-r] SOURCE... DESTINATION")
    recursive = bool({"-r", "-R"} & set(options))
    no_clobber = "-n" in options
    target = Location.parse(urls[-1])
    plans: list[tuple[Location, Location]] = []
    unmatched: list[str] = []
    sources = [Location.parse(url) for url in urls[:-1]]
    matched = [(source, tool.expand(source)) for source in sources]
    count = sum(len(found) for _, found in matched)
    into = urls[-1].endswith("/") or count > 1 or tool.is_folder(target)
    if count > 1 and not target.cloud and not tool.is_folder(target):
        raise CommandError("Destination URL must name a directory, bucket, or bucket "
                           "subdirectory for the multiple source form of the cp command.")
    omitted = False
    for source, found in matched:
        if not found:
            unmatched.append(source.url)
        for location, folder in found:
            if not folder:
                plans.append((location, target.join(location.name) if into else target))
                continue
            if not recursive:
                tool.say(f'Omitting {"prefix" if location.cloud else "directory"} '
                         f'"{location.url}". (Did you mean to do cp -r?)')
                omitted = True
                continue
            base = target.join(location.name) if into else target
            plans += [(file, base.join(relative)) for file, relative in tool.files_below(location)]
    if unmatched:
        raise CommandError(f"No URLs matched: {' '.join(unmatched)}")
    done = 0
    for source, destination in plans:
        if no_clobber and tool.exists(destination):
            tool.say(f"Skipping existing item: {destination.url}")
            continue
        tool.copy(source, destination)
        done += 1
    if omitted:
        raise CommandError(f"{len(plans) - done + 1} file/object could not be transferred.")
    if done > 1:
        tool.say(f"Operation completed over {done} objects.")
    return 0


def ls(tool: Tool, options: dict[str, str], urls: list[str]) -> int:
    long, recursive = "-l" in options or "-L" in options, bool({"-r", "-R"} & set(options))
    if not urls:
        fs = tool.fs(Location.parse("gs://_/"))
        for bucket in sorted(fs.ls("")):
            print(f"{GS}{bucket.strip('/')}/")
        return 0
    totals = [0, 0]
    missing = False
    for url in urls:
        found = tool.expand(Location.parse(url))
        missing = missing or not found
        for location, folder in found:
            if not folder:
                _print_entry(tool, location, long, totals)
            elif recursive:
                _print_tree(tool, location, long, totals)
            else:
                _print_level(tool, location, long, totals)
    if long and totals[0]:
        print(f"TOTAL: {totals[0]} objects, {totals[1]} bytes ({_human(totals[1])})")
    if missing:
        raise CommandError("One or more URLs matched no objects.")
    return 0


def _print_entry(tool: Tool, location: Location, long: bool, totals: list[int],
                 info: dict | None = None) -> None:
    if not long:
        print(location.url)
        return
    info = info or tool.fs(location).info(location.path)
    size = int(info.get("size") or 0)
    totals[0], totals[1] = totals[0] + 1, totals[1] + size
    print(f"{size:>10}  {_updated(info)}  {location.url}")


def _print_level(tool: Tool, folder: Location, long: bool, totals: list[int]) -> None:
    fs = tool.fs(folder)
    for info in sorted(fs.ls(folder.path.rstrip("/"), detail=True), key=lambda i: i["name"]):
        child = tool._child(folder, info["name"].rstrip("/"))
        if info["type"] == "directory":
            print(f"{'':>34}{child.url}/" if long else f"{child.url}/")
        else:
            _print_entry(tool, child, long, totals, info)


def _print_tree(tool: Tool, folder: Location, long: bool, totals: list[int]) -> None:
    """gsutil ls -r: each folder's url with a colon, then its objects, a blank line between."""
    fs = tool.fs(folder)
    base = folder.path.rstrip("/")
    by_folder: dict[str, list[tuple[str, dict]]] = {}
    for path, info in sorted(fs.find(base, detail=True).items()):
        by_folder.setdefault(posixpath.dirname(path), []).append((path, info))
    for index, (parent, entries) in enumerate(sorted(by_folder.items())):
        if index:
            print()
        print(f"{tool._child(folder, parent).url.rstrip('/')}/:")
        for path, info in entries:
            _print_entry(tool, tool._child(folder, path), long, totals, info)


def cat(tool: Tool, options: dict[str, str], urls: list[str]) -> int:
    if not urls:
        raise CommandError("cat needs at least one gs:// URL")
    for url in urls:
        location = Location.parse(url)
        if not location.cloud:
            raise CommandError(f'"cat" command does not support "file://" URLs. Did you mean to '
                               f'use a gs:// URL? ({url})')
        files = [found for found, folder in tool.expand(location) if not folder]
        if not files:
            raise CommandError(f"No URLs matched: {url}")
        for found in files:
            with tool.fs(found).open(found.path, "rb") as stream:
                for block in iter(lambda stream=stream: stream.read(1 << 20), b""):
                    sys.stdout.buffer.write(block)
    sys.stdout.buffer.flush()
    return 0


def rm(tool: Tool, options: dict[str, str], urls: list[str]) -> int:
    if not urls:
        raise CommandError("rm needs at least one gs:// URL")
    recursive, force = bool({"-r", "-R"} & set(options)), "-f" in options
    for url in urls:
        location = Location.parse(url)
        if not location.cloud:
            raise CommandError(f'"rm" command does not support "file://" URLs. Did you mean to '
                               f'use a gs:// URL? ({url})')
        fs = tool.fs(location)
        found = tool.expand(location)
        targets = [item for item in found if recursive or not item[1]]
        if not targets:
            if not force:
                raise CommandError(f"No URLs matched: {url}")
            continue
        for match, folder in targets:
            files = [file for file, _ in tool.files_below(match)] if folder else [match]
            for file in files:
                tool.say(f"Removing {file.url}...")
                fs.rm_file(file.path)
            if folder and "/" not in match.path.strip("/"):  # rm -r gs://bucket removes it
                tool.say(f"Removing {GS}{match.path.strip('/')}/...")
                fs.rmdir(match.path.strip("/"))
    return 0


_COMMANDS: dict[str, tuple[Callable[[Tool, dict[str, str], list[str]], int], str, list[str]]] = {
    "cp": (cp, "rRn", ["recursive", "no-clobber"]),
    "ls": (ls, "rRlL", ["recursive", "long"]),
    "cat": (cat, "", []),
    "rm": (rm, "rRfa", ["recursive", "all-versions", "continue-on-error"]),
}
_LONG = {"--recursive": "-r", "--no-clobber": "-n", "--long": "-l", "--all-versions": "-a",
         "--continue-on-error": "-f"}


def run(tool_name: str, argv: list[str]) -> int:
    """Run one command line of `gsutil` or `gcloud`; return the exit status."""
    label = "CommandException:" if tool_name == "gsutil" else "ERROR: (gcloud)"
    try:
        quiet, command, arguments = _split(tool_name, argv)
        if tool_name == "gcloud":
            label = f"ERROR: (gcloud.storage.{command})"
        function, short, long = _COMMANDS[command]
        try:
            pairs, urls = getopt.gnu_getopt(arguments, short,
                                            long if tool_name == "gcloud" else [])
        except getopt.GetoptError as error:
            raise CommandError(f"{error}; the local stand-in's {command} supports "
                               f"{' '.join('-' + c for c in short) or 'no options'}") from None
        options = {_LONG.get(name, name): value for name, value in pairs}
        return function(Tool(quiet), options, urls)
    except CommandError as error:
        print(f"{label} {one_line(error)}", file=sys.stderr)
    except (OSError, ValueError) as error:
        print(f"{label} {type(error).__name__}: {one_line(error)}", file=sys.stderr)
    return 1


def _split(tool_name: str, argv: list[str]) -> tuple[bool, str, list[str]]:
    """(quiet, command, its arguments) after the tool's own options."""
    if tool_name == "gcloud":
        if argv[:1] != ["storage"] or len(argv) < 2 or argv[1] not in COMMANDS:
            raise CommandError(
                f"`gcloud {' '.join(argv[:2])}` is not available in a local step: the local "
                "stand-in supports only `gcloud storage cp|ls|cat|rm`")
        return False, argv[1], argv[2:]
    quiet = False
    while argv and argv[0].startswith("-"):
        flag = argv.pop(0)
        if flag == "-q":
            quiet = True
        elif flag != "-m":  # -m (parallel) changes nothing here
            raise CommandError(f"gsutil option {flag} is not supported by the local stand-in; "
                               "it takes -m and -q")
    if not argv or argv[0] not in COMMANDS:
        name = argv[0] if argv else ""
        raise CommandError(f'Invalid command "{name}": the local gsutil stand-in supports '
                           f"{', '.join(COMMANDS)}")
    return quiet, argv[0], argv[1:]


def _updated(info: dict) -> str:
    value = info.get("updated") or info.get("mtime")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value or "")[:19] + "Z" if value else ""


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.2f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"


if __name__ == "__main__":  # step_bin/gsutil and step_bin/gcloud: python3 -m ... TOOL ARGS
    sys.exit(run(sys.argv[1], sys.argv[2:]))
