"""Resumable training checkpoints: trainable weights, optimizer, gradient scaler, loop state.

A checkpoint is a folder written atomically (built in a temporary sibling, then renamed), so a
run killed while saving leaves the previous checkpoint intact::

    checkpoints/step-00000100/
      trainable.safetensors   every parameter with requires_grad, as "<module>.<name>"
      optimizer.pt            optimizer.state_dict()  (read with torch.load(weights_only=True))
      scaler.pt               GradScaler state (fp16 only)
      state.json              step, fingerprint, losses so far, anything the loop adds

A checkpoint is only resumed when its ``fingerprint`` (a digest of everything that changes
the numbers: config, base, data) equals the current run's; others are ignored, never mixed in.

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
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dldc.io import atomic_dir

STATE_FILE = "state.json"
WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCALER_FILE = "scaler.pt"
PREFIX = "step-"


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
        save_file(trainable_state(modules), str(tmp / WEIGHTS_FILE))
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / SCALER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, sort_keys=True), encoding="utf-8")
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
    """The newest checkpoint written by a run with this ``fingerprint``, if any."""
    for path in reversed(list_checkpoints(folder)):
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
    optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, weights_only=True))
    if scaler is not None and (path / SCALER_FILE).is_file():
        scaler.load_state_dict(torch.load(path / SCALER_FILE, weights_only=True))
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
