"""Atomic file output, checksums and output-folder locks shared by every stage.

A stage that is killed half-way must never leave a file that looks complete: everything is
written to a temporary sibling and moved into place with :func:`os.replace`.

Pieces a re-run reuses (score shards, embedding-store parts, caption shards, checkpoints) are
never trusted because they exist: their sha256 is recorded when they are written (a
``<name>.sha256`` sidecar in ``sha256sum`` format, :func:`write_checksum`, or a ``SHA256SUMS``
file in a checkpoint folder, :func:`write_checksums`) and checked before reuse
(:func:`checksum_ok`, :func:`checksums_ok`); a piece that fails the check is logged and
recomputed.

:func:`output_lock` keeps two processes from writing one output folder at once.

Tensors are written through Python's file I/O (:func:`write_safetensors`, :func:`write_torch`), so
a full disk is an :class:`OSError` like any other, and read back without running pickled code
(:func:`load_tensors`); :func:`png_intact` checks an image a re-run would reuse.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

CHECKSUM_SUFFIX = ".sha256"
CHECKSUMS_FILE = "SHA256SUMS"
LOCK_SUFFIX = ".dldc.lock"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    A write error of a library that does not raise :class:`OSError` (safetensors, ``torch.save``)
    inside the block is raised as one (see :func:`write_errors`), naming ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with write_errors(path):
            yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success it replaces ``path``.

    Library write errors inside the block are raised as :class:`OSError` (:func:`write_errors`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with write_errors(path):
            yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual folder mode
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def write_errors(path: str | Path) -> Iterator[None]:
    """Raise the write failures of libraries that report them otherwise as :class:`OSError` on ``path``.

    safetensors raises ``SafetensorError("... I/O error: No space left on device (os error 28)")`` and
    ``torch.save`` a ``RuntimeError("... file write failed")``; as an ``OSError`` they reach the user as
    one line ("No space left on device: <path>") like every other full disk. An ``OSError`` that names
    no file (a failed ``write``) gets ``path``. Other errors pass unchanged.
    """
    try:
        yield
    except OSError as err:
        if err.errno and not err.filename:  # file writes (pyarrow, Python's own) do not say which file
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise
    except Exception as err:
        text = str(err)
        code = re.search(r"os error (\d+)", text)
        if code:
            number = int(code.group(1))
            raise OSError(number, os.strerror(number), str(path)) from err
        if "file write failed" in text or "I/O error" in text:
            raise OSError(errno.EIO, "write failed (disk full or file too large?)", str(path)) from err
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, with sorted keys so identical data gives identical bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_parquet(path: str | Path, table: pa.Table) -> None:
    """Write a Parquet table atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


TEMP_PATTERNS = (".*.tmp", ".*.old-*")  # what atomic_path / atomic_dir leave when their process is killed


def remove_stale_temps(folder: str | Path, patterns: tuple[str, ...] = TEMP_PATTERNS, recursive: bool = True) -> int:
    """Delete what killed runs left in ``folder``: temporaries of :func:`atomic_path` / :func:`atomic_dir`
    (``.<name>.<random>.tmp``) and folders they were replacing (``.<name>.old-<pid>``); returns the count.

    Only call it holding the folder's :func:`output_lock`: a running writer's temporaries look the same.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for pattern in patterns:
        for path in list(folder.rglob(pattern) if recursive else folder.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d temporary files left in %s by interrupted runs", removed, folder)
    return removed


# --------------------------------------------------------------------------- checksums


def checksum_path(path: str | Path) -> Path:
    """The sidecar that records ``path``'s sha256: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksum(path: str | Path) -> str:
    """Record the sha256 of ``path`` in its sidecar (``sha256sum -c`` format), atomically.

    Write it right after ``path`` itself: a run killed in between leaves a file without a
    sidecar, which :func:`checksum_ok` does not trust.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "part.bin"
        >>> _ = target.write_bytes(b"data")
        >>> _ = write_checksum(target)
        >>> checksum_ok(target), checksum_path(target).read_text().split()[1]
        (True, 'part.bin')
    """
    path = Path(path)
    digest = file_sha256(path)
    with atomic_path(checksum_path(path)) as tmp:
        tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    return digest


def checksum_ok(path: str | Path) -> bool:
    """Whether ``path`` exists and matches the sha256 recorded in its sidecar.

    A missing or unreadable sidecar, or a mismatch, is ``False`` (logged as a warning when the
    file exists): the caller recomputes the piece instead of trusting it.
    """
    path = Path(path)
    if not path.is_file():
        return False
    recorded = _recorded_digest(checksum_path(path))
    if recorded is None:
        log.warning("%s has no recorded checksum (written by a killed or older run); recomputing it", path)
        return False
    if file_sha256(path) != recorded:
        log.warning("%s does not match its recorded sha256 (damaged?); recomputing it", path)
        return False
    return True


def write_parquet_checked(path: str | Path, table: pa.Table) -> None:
    """:func:`write_parquet`, then its checksum sidecar (for pieces a re-run reuses)."""
    write_parquet(path, table)
    write_checksum(path)


def remove_with_checksum(path: str | Path) -> None:
    """Delete a file and its checksum sidecar (either may be missing)."""
    Path(path).unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


def write_checksums(folder: str | Path, names: list[str] | None = None) -> dict[str, str]:
    """Write ``folder/SHA256SUMS`` (``sha256sum -c`` format) for ``names`` (default: every file in it).

    Call it last when filling a folder (e.g. inside :func:`atomic_dir`); returns ``{name: sha256}``.
    """
    folder = Path(folder)
    if names is None:
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS_FILE)
    digests = {name: file_sha256(folder / name) for name in names}
    with atomic_path(folder / CHECKSUMS_FILE) as tmp:
        tmp.write_text("".join(f"{digest}  {name}\n" for name, digest in digests.items()), encoding="utf-8")
    return digests


def checksums_ok(folder: str | Path, required: tuple[str, ...] | list[str] = ()) -> bool:
    """Whether ``folder/SHA256SUMS`` lists every ``required`` file and every file it lists matches.

    Problems are logged as warnings.
    """
    folder = Path(folder)
    try:
        lines = (folder / CHECKSUMS_FILE).read_text(encoding="utf-8").splitlines()
        recorded = dict(reversed(line.split(None, 1)) for line in lines if line.strip())
    except (OSError, UnicodeDecodeError, ValueError):
        log.warning("%s has no readable %s (written by a killed or older run); not trusted", folder, CHECKSUMS_FILE)
        return False
    unlisted = [name for name in required if name not in recorded]
    if unlisted:
        log.warning("%s: %s not listed in its %s; not trusted", folder, unlisted, CHECKSUMS_FILE)
        return False
    return not files_mismatching(folder, recorded, what=str(folder))


def files_mismatching(folder: str | Path, recorded: dict[str, str], what: str = "") -> list[str]:
    """Names in ``recorded`` (``{name: sha256}``, relative to ``folder``) that are missing or differ.

    Each is logged as a warning naming ``what`` (the folder by default).
    """
    folder = Path(folder)
    bad = []
    for name, digest in recorded.items():
        path = folder / name
        if not path.is_file() or file_sha256(path) != digest:
            bad.append(name)
    if bad:
        log.warning("%s: %s missing or not matching the recorded sha256 (damaged?)", what or folder, bad)
    return bad


def finished_report(
    report: str | Path, field: str, value: str, recorded: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any] | None:
    """The JSON ``report`` of a finished run that may be reused, else ``None``.

    Reusable means: the file parses to an object whose ``field`` (the run's fingerprint or key)
    equals ``value``, and every file that ``recorded(report)`` lists (``{name: sha256}``, names
    relative to the report's folder) is still there with that sha256 (:func:`files_mismatching`
    logs the ones that are not).
    """
    report = Path(report)
    try:
        previous = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(previous, dict) or previous.get(field) != value:
        return None
    if files_mismatching(report.parent, recorded(previous), what=f"{report.parent} (per {report.name})"):
        return None
    return previous


def _recorded_digest(sidecar: Path) -> str | None:
    try:
        fields = sidecar.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None
    digest = fields[0] if fields else ""
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None


def write_safetensors(path: str | Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors at ``path`` through Python's file I/O; same tensors, same bytes.

    Serialised in memory, then written: a full disk is an :class:`OSError` naming ``path``, not a
    ``SafetensorError``; the header is written with sorted keys (:func:`canonical_safetensors`). Not
    atomic by itself: call it on the path :func:`atomic_path` / :func:`atomic_dir` give.
    """
    from safetensors.torch import save  # here, not at the top: most users of this module write no tensors

    Path(path).write_bytes(_sorted_header(save(tensors, metadata=metadata)))


def canonical_safetensors(path: str | Path) -> None:
    """Rewrite a safetensors file's header with sorted keys, in place (atomically) when it is not already.

    safetensors writes its ``__metadata__`` from a hash map whose order changes from process to
    process, so files written by libraries (diffusers' LoRA files) differ in bytes between identical
    runs. The header is JSON ahead of the tensor data, whose offsets are relative to the data: sorting
    it changes no tensor and no value, and makes same tensors and metadata give same bytes.
    """
    path = Path(path)
    data = path.read_bytes()
    canonical = _sorted_header(data)
    if canonical != data:
        with atomic_path(path) as tmp:
            tmp.write_bytes(canonical)


def _sorted_header(data: bytes) -> bytes:
    """safetensors bytes with the ``__metadata__`` keys sorted; everything else as safetensors wrote it."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])  # keeps the order of the tensor entries
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or list(metadata) == sorted(metadata):
        return data
    header["__metadata__"] = dict(sorted(metadata.items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header so the data stays 8-byte aligned
    return struct.pack("<Q", len(text)) + text + data[8 + size :]


def write_torch(path: str | Path, obj: Any) -> None:
    """``torch.save(obj)`` at ``path`` through Python's file I/O (a full disk is an :class:`OSError`).

    ``torch.save`` into a file reports a failed write as a ``RuntimeError`` without the reason; serialised
    in memory first, it cannot. Not atomic by itself (see :func:`write_safetensors`).
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    Path(path).write_bytes(buffer.getbuffer())


def png_intact(path: str | Path) -> bool:
    """Whether ``path`` is a complete PNG whose every chunk matches its CRC-32 (a truncated or
    bit-flipped image fails). For images a re-run reuses; a failure is logged as a warning."""
    from PIL import Image  # here, not at the top: only image stages need it

    path = Path(path)
    if not path.is_file():
        return False
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise ValueError(f"a {image.format} file")
            image.verify()  # reads every chunk and checks its CRC, up to IEND
        with Image.open(path) as image:
            image.load()  # and the pixel stream inflates completely
    except Exception as err:  # Pillow raises many types for damaged files
        log.warning("%s is damaged (%s); making it again", path, str(err).splitlines()[0] if str(err) else err)
        return False
    return True


class UnsafeCheckpointError(ValueError):
    """A ``.pt`` file holds pickled objects other than tensors: loading it could run code."""


def load_tensors(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code.

    Raises:
        UnsafeCheckpointError: the file holds other pickled objects (loading it could run code).
    """
    import torch  # here, not at the top: most users of this module never load a checkpoint

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol ...": the error says it all
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False; keep only what it found.
        found = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        what = found.group(1).strip() if found else "not a weights-only file"
        raise UnsafeCheckpointError(
            f"refusing {path}: it holds pickled objects other than tensors, which could run code when loaded "
            f"({what}); delete it to train again without it"
        ) from None


# --------------------------------------------------------------------------- output-folder lock


class OutputLockedError(OSError):
    """Another process holds the lock of an output folder (see :func:`output_lock`)."""


_HELD: dict[str, list[int]] = {}  # lock file -> [file descriptor, depth]: re-entrant within a process


def lock_path(folder: str | Path) -> Path:
    """The lock file of an output folder: ``.<name>.dldc.lock`` beside it.

    Beside, not inside: stages that replace their whole folder atomically (``train-scorer``)
    would otherwise move the lock away with the old folder, and nothing lands in a DVC output.
    """
    folder = Path(os.path.abspath(folder))
    return folder.with_name(f".{folder.name}{LOCK_SUFFIX}")


@contextlib.contextmanager
def output_lock(folder: str | Path) -> Iterator[Path]:
    """Hold the write lock of output folder ``folder`` for the duration of the block.

    A second process that asks for the same folder's lock is refused at once with
    :class:`OutputLockedError` naming the holder's pid; nothing is written by it. The lock is an
    ``fcntl.flock`` on :func:`lock_path`, so the kernel releases it when the holder exits, even
    when it is killed: the file a killed run leaves behind never blocks a later run. A finished
    run deletes its lock file. Re-entrant within a process (a stage that calls another stage on the
    same folder).

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "scores"
        >>> with output_lock(out):
        ...     with output_lock(out):  # the same process may nest
        ...         pass
        >>> lock_path(out).exists()
        False
    """
    lock = lock_path(folder)
    key = str(lock)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield Path(folder)
        finally:
            _HELD[key][1] -= 1
        return
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where the output's parent folder should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(lock.parent)) from None
    fd = _acquire(lock, folder)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is only for the message; the lock holds without it (e.g. disk full)
    _HELD[key] = [fd, 1]
    try:
        yield Path(folder)
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            lock.unlink()  # while still holding it: whoever opens the path next gets a new file
        os.close(fd)  # releases the flock


def _acquire(lock: Path, folder: str | Path) -> int:
    """Open and flock ``lock`` without waiting; the file descriptor, or :class:`OutputLockedError`."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise OutputLockedError(
                f"another dldc process (pid {holder}) is writing {folder}; wait for it to finish (or stop it), "
                "then run again"
            ) from None
        # A holder that was releasing may have deleted the file between our open and our flock: then
        # we locked a file nobody else will see. Only the file still at the path counts.
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                return fd
        os.close(fd)
