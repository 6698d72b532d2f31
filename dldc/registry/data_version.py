"""The data version of a trained model: manifest hash, DVC's record of it, and the git revision.

A registered adapter is only reproducible if we know exactly which data it was trained on:

* ``manifest_sha256`` — sha256 of the manifest file's bytes (the manifest names every pair and
  the sha256 of every image, so this pins the data);
* ``dvc_md5`` — the md5 DVC recorded for the manifest (or the folder holding it) in ``dvc.lock``,
  when the manifest is a DVC output; ``dvc checkout`` at ``git_rev`` brings that data back;
* ``git_rev`` / ``git_dirty`` — the commit of the code and ``dvc.lock``.

Every field is ``None`` when unavailable (no git, no dvc.lock, manifest outside the project);
nothing here fails because a tool is missing.

Example:
    >>> version = data_version(None)
    >>> version["manifest_sha256"] is None
    True
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from dldc.io import file_sha256

DVC_LOCK = "dvc.lock"


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def dvc_md5(path: str | Path, lock: str | Path = DVC_LOCK) -> dict[str, str] | None:
    """DVC's record of ``path`` in ``dvc.lock``: the output that is ``path`` or contains it.

    Returns:
        ``{"stage", "path", "md5"}`` or ``None`` when ``dvc.lock`` does not list it.
    """
    lock = Path(lock)
    if not lock.is_file():
        return None
    try:
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    except yaml.YAMLError:
        return None
    root = lock.resolve().parent
    try:
        target = Path(path).resolve().relative_to(root)
    except ValueError:
        return None
    for stage, record in stages.items():
        for out in record.get("outs", []) or []:
            out_path = Path(out.get("path", ""))
            if target == out_path or out_path in target.parents:
                return {"stage": stage, "path": out_path.as_posix(), "md5": str(out.get("md5", ""))}
    return None


def data_version(manifest: str | Path | None, lock: str | Path = DVC_LOCK) -> dict[str, Any]:
    """What identifies the training data of a model (see the module docstring).

    Args:
        manifest: the training manifest, or ``None`` when unknown.
        lock: the project's ``dvc.lock``.

    Returns:
        ``manifest``, ``manifest_sha256``, ``dvc`` (``{"stage", "path", "md5"}``), ``git_rev``,
        ``git_dirty``; unknown values are ``None``.
    """
    here = Path.cwd()
    rev = _git(["rev-parse", "HEAD"], here)
    status = _git(["status", "--porcelain", "--untracked-files=no"], here) if rev else None
    version: dict[str, Any] = {
        "manifest": None,
        "manifest_sha256": None,
        "dvc": None,
        "git_rev": rev,
        "git_dirty": None if status is None else bool(status),
    }
    if manifest is not None and Path(manifest).is_file():
        version["manifest"] = str(manifest)
        version["manifest_sha256"] = file_sha256(Path(manifest))
        version["dvc"] = dvc_md5(manifest, lock)
    elif manifest is not None:
        version["manifest"] = str(manifest)
    return version


def manifest_from_adapter(folder: str | Path) -> str | None:
    """The training manifest an adapter folder's JSON metadata names, if any.

    Looks at the top-level ``*.json`` files of the folder for a ``manifest`` key (at the top
    level, or under ``config``, ``data`` or ``train``), the convention of dldc stage reports.
    """
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        for scope in (data, data.get("config"), data.get("data"), data.get("train")):
            if isinstance(scope, dict) and isinstance(scope.get("manifest"), str):
                return scope["manifest"]
    return None
