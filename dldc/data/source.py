"""Where ``dldc ingest`` reads a dataset from: its folder in place, or a copy inside the output.

``ingest.root`` is a folder, or a URL that fsspec reads (``s3://bucket/rsicd``, ``gs://...``,
``file:///mnt/data/rsicd``; the ``s3`` / ``gs`` extras install the object-store filesystems). A URL
is always fetched into ``<out>/dataset/``. With ``ingest.copy_dataset`` a folder is copied there too
(hard links where the filesystem allows). The manifest then records ``dataset`` as its root, so the
output folder carries its own images: what an orchestrator's task needs when later tasks receive
only the manifest artifact (a Kubeflow pod sees no other task's files).

Symbolic links are copied as links, so an image that points outside the dataset is still rejected
as ``path_escape`` by the checks that follow.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from dldc.data.readers import DatasetFormatError

DATASET_DIR = "dataset"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(root: str) -> bool:
    """Whether ``root`` is a URL (``scheme://...``) rather than a local folder.

    Example:
        >>> is_url("s3://bucket/rsicd"), is_url("data/rsicd"), is_url("C:/data")
        (True, False, False)
    """
    return bool(_URL.match(root))


def stage_dataset(root: str, out: str | Path, copy: bool = False) -> Path:
    """The folder ingest reads: ``root`` itself, or its copy at ``<out>/dataset``.

    Args:
        root: a dataset folder or an fsspec URL.
        out: ingest's output folder.
        copy: copy a local folder too (a URL is always fetched).

    Returns:
        The local dataset folder.

    Raises:
        DatasetFormatError: ``root`` does not exist or is not a folder.
    """
    if not is_url(root) and not copy:
        return Path(root)
    target = Path(out) / DATASET_DIR
    partial = target.with_name(f".{DATASET_DIR}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    if is_url(root):
        _fetch(root, partial)
    else:
        if Path(root).resolve() == target.resolve():
            return target  # already ingest's own copy (a re-run on its output)
        if not Path(root).is_dir():
            raise DatasetFormatError(f"dataset root {root} is not a folder")
        shutil.copytree(root, partial, symlinks=True, copy_function=_link_or_copy)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


def _fetch(url: str, into: Path) -> None:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:  # no filesystem for the scheme (s3fs / gcsfs not installed)
        raise DatasetFormatError(f"cannot read {url}: {err} (install dldc with the s3 or gs extra)") from None
    if not fs.isdir(path):
        raise DatasetFormatError(f"dataset root {url} is not a folder (nothing under that prefix)")
    into.mkdir(parents=True)
    base = path.rstrip("/")
    for remote in fs.find(base):
        relative = remote[len(base) :].lstrip("/")
        local = into / relative
        if not local.resolve().is_relative_to(into.resolve()):
            raise DatasetFormatError(f"{url}: object {remote!r} would be written outside the dataset folder")
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(local))


def _link_or_copy(source: str, target: str) -> str:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)
    return target
