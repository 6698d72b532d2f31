"""Run one ``dldc`` command in a child process and read back its stage metrics.

What an orchestrator's task calls (the Kubeflow components do): the command runs exactly as on a
workstation (``dldc --no-progress -S key=value ... <stage> ...``), in its own process so a stage's
threads, CUDA context and memory end with it, and the task gets the stage's ``metrics.json``
(:data:`dldc.tracking.METRICS_FILE`) to report. Nothing here knows the orchestrator.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from dldc.tracking import RUN_GROUP_ENV, read_metrics


def run_stage(
    args: Sequence[str],
    settings: Sequence[str] = (),
    run_group: str | None = None,
    metrics_from: str | Path | None = None,
    profile: str = "",
) -> dict[str, float]:
    """Run ``dldc --no-progress [-S profile=PROFILE] [-S setting]... ARGS`` in a child process.

    Args:
        args: the command and its flags, e.g. ``["ingest", "--root", path, "--out", out]``.
        settings: ``key=value`` overrides, passed as ``-S``.
        run_group: the MLflow parent-run group (``DLDC_RUN_GROUP``) the stage's run joins.
        metrics_from: the stage's output folder, whose ``metrics.json`` is returned.
        profile: the profile the settings start from (``dldc config profiles``); empty: the params
            file's, or ``demo`` without one.

    Returns:
        The stage's metrics (``{}`` without ``metrics_from`` or when the stage wrote none).

    Raises:
        subprocess.CalledProcessError: the command failed (its output is on stderr).
    """
    chosen = [f"profile={profile}"] if profile else []
    overrides = [arg for setting in [*chosen, *settings] for arg in ("-S", setting)]
    env = {**os.environ, **({RUN_GROUP_ENV: run_group} if run_group else {})}
    command = [sys.executable, "-m", "dldc", "--no-progress", *overrides, *args]
    subprocess.run(command, check=True, env=env)
    return read_metrics(metrics_from) if metrics_from is not None else {}


def arm_args(adapters: Mapping[str, str | None]) -> list[str]:
    """``--arm`` flags for ``dldc generate`` / ``dldc segment``: ``base``, then each adapter folder given.

    Example:
        >>> arm_args({"raw": "/adapters/raw", "clean": None})
        ['--arm', 'base=', '--arm', 'raw=/adapters/raw']
    """
    flags = ["--arm", "base="]
    for name, folder in adapters.items():
        if folder is not None:
            flags += ["--arm", f"{name}={folder}"]
    return flags
