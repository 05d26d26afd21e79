"""What `--src-path` names, as the platform reads an OBS input path: a directory (every file in it,
subdirectories too, in sorted order) or a `.manifest` file (JSON lines with a `"source"`).

A manifest source is a local path (relative to the manifest), a `file://` URL, an `http(s)://` URL
(the platform's signed links) or `obs://bucket/key` / `s3://bucket/key`, which only resolve with
`--source-root DIR` (DIR/bucket/key). Listing never reads a file: reading happens per input, so an
unreadable, missing or oversized source fails alone with its reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

# The platform's limit for a batch input (images under 12 MB in the current docs; CSV files up to 12 MB).
MAX_INPUT_BYTES = 12 * 1024 * 1024
DOWNLOAD_TIMEOUT = 60.0
BUCKET_SCHEMES = ("obs", "s3")
# The first read of an input: most uploads fit, and a buffer under malloc's mmap threshold (128 KB) is cheap.
FIRST_READ_BYTES = 64 * 1024


class UsageError(ValueError):
    """The job cannot start as given (exit 2): nothing has been sent."""


class InputError(RuntimeError):
    """One input cannot be read or sent: it is FAILED with this reason, the others go on."""


@dataclass(frozen=True)
class Input:
    """One input: `source` as the manifest will name it, `name` its result file's stem (unique
    within the job), and where to read it from (`path` or `url`)."""

    source: str
    name: str
    path: Path | None = None
    url: str | None = None

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix.lower()

    def read(self, limit: int = MAX_INPUT_BYTES) -> bytes:
        """The input's bytes; InputError when missing, unreadable or over `limit`."""
        if self.url is not None:
            return _download(self.url, limit)
        assert self.path is not None
        try:
            data = _read_file(self.path, limit)
        except FileNotFoundError:
            raise InputError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise InputError(f"{self.path}: a directory, not a file") from None
        except OSError as exc:
            raise InputError(f"{self.path}: cannot be read: {exc.strerror or exc}") from None
        if len(data) > limit:
            raise InputError(_too_large(self.path.stat().st_size, limit))
        return data


def list_inputs(src: Path, source_root: Path | None = None) -> list[Input]:
    """Every input of the job, in a fixed order (sorted paths, or the manifest's line order)."""
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() or p.is_symlink())
        return _named([(str(p.absolute()), p.relative_to(src).as_posix(), p, None) for p in files])
    if src.suffix == ".manifest" and src.is_file():
        return _from_manifest(src, source_root)
    if not src.exists():
        raise UsageError(f"--src-path {src}: not found")
    raise UsageError(f"--src-path {src}: give a directory or a .manifest file")


def _from_manifest(manifest: Path, source_root: Path | None) -> list[Input]:
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--src-path {manifest}: cannot be read: {exc}") from None
    entries: list[tuple[str, str, Path | None, str | None]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{manifest}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not JSON ({exc.msg})") from None
        source = record.get("source") if isinstance(record, dict) else None
        if not isinstance(source, str) or not source:
            raise UsageError(f'{where}: want an object with a "source" string')
        entries.append(_resolve(source, manifest.parent, source_root, where))
    return _named(entries)


def _resolve(source: str, base: Path, source_root: Path | None, where: str) -> tuple[str, str, Path | None, str | None]:
    parts = urlsplit(source)
    scheme = parts.scheme.lower() if len(parts.scheme) > 1 else ""  # "C:" is not a scheme
    name = unquote(parts.path.rsplit("/", 1)[-1]) if scheme else Path(source).name
    if scheme in BUCKET_SCHEMES:
        if source_root is None:
            raise UsageError(f"{where}: {source} is in a bucket: give --source-root DIR to read "
                             f"{scheme}://BUCKET/KEY from DIR/BUCKET/KEY")
        key = unquote(parts.path).lstrip("/")
        return source, name, source_root / parts.netloc / key, None
    if scheme == "file":
        return source, name, Path(unquote(parts.path)), None
    if scheme in ("http", "https"):
        return source, name or "index", None, source
    if scheme:
        raise UsageError(f"{where}: {source}: unsupported scheme {scheme}:// (local paths, file://, "
                         "http(s)://, obs:// and s3:// with --source-root)")
    path = Path(source)
    return source, name, path if path.is_absolute() else base / path, None


def _named(entries: list[tuple[str, str, Path | None, str | None]]) -> list[Input]:
    """Inputs with unique result names: a name met again gets `~2`, `~3`, ... before its suffix-free
    result extension, so two sources called a.jpg never write the same result file."""
    seen: dict[str, int] = {}
    out = []
    for source, name, path, url in entries:
        count = seen.get(name, 0) + 1
        seen[name] = count
        out.append(Input(source, name if count == 1 else f"{name}~{count}", path, url))
    return out


def _download(url: str, limit: int) -> bytes:
    import urllib.error  # here: http(s) sources are rare, and `maserve` builds its parser with this module
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:  # noqa: S310 - the user's URL
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise InputError(_too_large(int(declared), limit))
            data = response.read(limit + 1)
    except urllib.error.HTTPError as exc:
        raise InputError(f"{url}: download failed with HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"{url}: download failed: {reason}") from None
    if len(data) > limit:
        raise InputError(_too_large(len(data), limit))
    return data


def _too_large(size: int, limit: int) -> str:
    return f"{size} bytes, over the platform's {limit // (1024 * 1024)} MB limit for a batch input: not sent"


def _read_file(path: Path, limit: int) -> bytes:
    """At most `limit` + 1 bytes of a file, in three system calls for a small one (open, read,
    close; `open()` + `fstat` took five): creating each result file costs the run enough already.
    A short read of a regular file is its end; a larger file is read to its size (from fstat)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, min(FIRST_READ_BYTES, limit + 1))
        if len(data) < FIRST_READ_BYTES:
            return data
        wanted = min(os.fstat(fd).st_size, limit) + 1  # sized by the file, not the limit
        chunks = [data]
        size = len(data)
        while size < wanted and (chunk := os.read(fd, wanted - size)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
