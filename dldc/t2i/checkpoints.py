"""Resumable training checkpoints: trainable weights, optimizer, gradient scaler, loop state.

A checkpoint is a folder written atomically (built in a temporary sibling, then renamed), so a
run killed while saving leaves the previous checkpoint intact::

    checkpoints/step-00000100/
      trainable.safetensors   every parameter with requires_grad, as "<module>.<name>"
      optimizer.pt            optimizer.state_dict()  (read with torch.load(weights_only=True))
      scaler.pt               GradScaler state (fp16 only)
      state.json              step, fingerprint, losses so far, anything the loop adds
      SHA256SUMS              sha256 of every file above (``sha256sum -c`` format)

A checkpoint is only resumed when its ``fingerprint`` (a digest of everything that changes
the numbers: config, base, data) equals the current run's; others are ignored, never mixed in.
Nor is one trusted because it exists: a checkpoint whose files do not match ``SHA256SUMS``
(truncated, bit-flipped, replaced) is skipped with a warning and the run resumes from the one
before it, or from scratch. A ``.pt`` file is only ever read with ``torch.load(weights_only=True)``:
one that holds other pickled objects (which could run code when loaded) is refused with
:class:`UnsafeCheckpointError`, even when its checksum was forged to match.

Example:
    >>> import tempfile, torch
    >>> folder = Path(tempfile.mkdtemp())
    >>> model = torch.nn.Linear(2, 2)
    >>> optimizer = torch.optim.AdamW(model.parameters())
    >>> _ = save_checkpoint(folder, 5, {"m": model}, optimizer, None, {"fingerprint": "x"}, keep=2)
    >>> latest_checkpoint(folder, "x").name, latest_checkpoint(folder, "other")
    ('step-00000005', None)
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from dldc.io import (
    UnsafeCheckpointError,
    atomic_dir,
    checksums_ok,
    load_tensors,
    write_checksums,
    write_safetensors,
    write_torch,
)

__all__ = ["UnsafeCheckpointError", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "save_checkpoint"]

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCALER_FILE = "scaler.pt"
PREFIX = "step-"
REQUIRED = (WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE)


def trainable_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Every trainable parameter of ``modules`` as ``{"<module>.<name>": tensor}`` (contiguous CPU copies)."""
    return {
        f"{key}.{name}": param.detach().to("cpu").contiguous()
        for key, module in modules.items()
        for name, param in module.named_parameters()
        if param.requires_grad
    }


def save_checkpoint(
    folder: str | Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the ``keep`` newest."""
    folder = Path(folder)
    for leftover in folder.glob(f".{PREFIX}*.tmp"):  # a process killed while saving leaves these
        shutil.rmtree(leftover, ignore_errors=True)
    target = folder / f"{PREFIX}{step:08d}"
    with atomic_dir(target) as tmp:
        write_safetensors(tmp / WEIGHTS_FILE, trainable_state(modules))
        write_torch(tmp / OPTIMIZER_FILE, optimizer.state_dict())
        if scaler is not None:
            write_torch(tmp / SCALER_FILE, scaler.state_dict())
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, sort_keys=True), encoding="utf-8")
        write_checksums(tmp)
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoint folders (with a state file), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{PREFIX}*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(folder: str | Path, fingerprint: str) -> Path | None:
    """The newest intact checkpoint written by a run with this ``fingerprint``, if any.

    Intact: every file matches the checkpoint's ``SHA256SUMS``; a damaged one is skipped with a warning.
    """
    for path in reversed(list_checkpoints(folder)):
        if not checksums_ok(path, required=REQUIRED):
            log.warning("checkpoint %s is damaged or incomplete; not resuming from it", path)
            continue
        try:
            state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if state.get("fingerprint") == fingerprint:
            return path
    return None


def load_checkpoint(
    path: str | Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, scaler: Any
) -> dict[str, Any]:
    """Restore trainable weights, optimizer and scaler from ``path``; returns its state.

    Raises:
        ValueError: the checkpoint's trainable weights do not match the modules' (other LoRA targets?).
        UnsafeCheckpointError: a ``.pt`` file holds pickled objects other than tensors.
    """
    path = Path(path)
    saved = load_file(str(path / WEIGHTS_FILE))
    current = trainable_state(modules)
    if set(saved) != set(current):
        missing, extra = sorted(set(current) - set(saved))[:3], sorted(set(saved) - set(current))[:3]
        raise ValueError(f"checkpoint {path} does not fit this model (missing {missing}, unexpected {extra})")
    with torch.no_grad():
        for key, module in modules.items():
            for name, param in module.named_parameters():
                if param.requires_grad:
                    param.copy_(saved[f"{key}.{name}"])
    optimizer.load_state_dict(load_tensors(path / OPTIMIZER_FILE))
    if scaler is not None and (path / SCALER_FILE).is_file():
        scaler.load_state_dict(load_tensors(path / SCALER_FILE))
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
