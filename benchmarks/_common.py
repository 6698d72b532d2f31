"""Helpers shared by the benchmark scripts: machine description, result files and ``--work`` caches.

A benchmark's ``--work`` folder keeps the results of its expensive steps between runs. A step is
reused only when a digest of everything that determines it (its settings, the digests of the steps
it reads, the bytes of its input files, the dldc version) matches the one recorded with it
(:func:`cached_step`); a reused figure then says where it came from (``reused_from``) and is never
reported as this run's measurement (:func:`reuse_note` does the same for the library's own caches:
``finetune``, ``run_trial``, segmentation runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def machine() -> dict[str, Any]:
    """What ran the benchmark: numbers from different machines are not comparable."""
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # 1, 5 and 15 min load when the result was written: timings on a shared, busy machine run slow
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def write_result(name: str, figures: dict[str, Any]) -> Path:
    """Print the figures and write them to benchmarks/results/NAME.json."""
    payload = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **figures,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(json.dumps(payload, indent=2, sort_keys=True))
    return path


CACHE_FILE = "cache.json"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def config_digest(config: Any) -> str:
    """16 hex digits of the sha256 of ``config`` as sorted JSON (as dldc's fingerprints)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_step(
    folder: Path, config: dict[str, Any], compute: Callable[[Path], Any], inputs: Iterable[Path] = ()
) -> dict[str, Any]:
    """Run ``compute(folder)`` unless ``folder`` holds its result for exactly this ``config`` and ``inputs``.

    The digest covers ``config`` (put the digests of the steps it reads in it), the sha256 of every
    file of ``inputs`` (files, or folders: every file under them) and the dldc version. A finished
    step is recorded last, in ``folder/cache.json`` (digest, date, seconds, config, input digests,
    and ``compute``'s JSON result). A missing, unreadable or different record: ``folder`` is
    deleted and computed afresh (``compute`` gets it absent, as a clean output folder).

    Returns:
        ``{"result", "config", "digest", "date", "seconds"}`` when computed in this run;
        ``{"result", "config", "digest", "reused_from": {"digest", "date", "seconds"}}`` when reused
        (``seconds``: what the step took in the run that made it).
    """
    from dldc import __version__
    from dldc.io import file_sha256, write_json

    files: dict[str, str] = {}
    for path in map(Path, inputs):
        for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            files[str(file)] = file_sha256(file)
    digest = config_digest({"config": config, "inputs": files, "dldc": __version__})
    record = folder / CACHE_FILE
    try:
        stored = json.loads(record.read_text(encoding="utf-8"))
        if stored["digest"] == digest:
            return {
                "result": stored["result"],
                "config": stored["config"],
                "digest": digest,
                "reused_from": {"digest": digest, "date": stored["date"], "seconds": stored["seconds"]},
            }
    except (OSError, ValueError, KeyError, TypeError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():  # a file in the folder's place
        folder.unlink()
    started = time.perf_counter()
    result = compute(folder)
    seconds = round(time.perf_counter() - started, 1)
    date = _now()
    folder.mkdir(parents=True, exist_ok=True)
    write_json(
        record,
        {
            "digest": digest,
            "date": date,
            "seconds": seconds,
            "config": config,
            "inputs": files,
            "dldc": __version__,
            "result": result,
        },
    )
    return {"result": result, "config": config, "digest": digest, "date": date, "seconds": seconds}


def provenance(step: dict[str, Any]) -> dict[str, Any]:
    """How a report states a :func:`cached_step`: its ``seconds`` in this run, or ``reused_from``."""
    return {"reused_from": step["reused_from"]} if "reused_from" in step else {"seconds": step["seconds"]}


def reuse_note(call: Callable[[], Any], record: Path, digest_key: str) -> tuple[Any, dict[str, Any]]:
    """Call a dldc stage that keeps a finished output keyed on a digest (``finetune``, ``run_trial``...).

    ``record`` is the JSON file the stage writes last (``finetune.json``, ``trial.json``); when the
    call leaves it untouched, the stage reused an earlier run. Returns the call's result and
    ``{"seconds": ...}`` (measured now) or ``{"reused_from": {"digest": record[digest_key], "date":
    the record's modification time, "seconds": record["seconds"] if it has one}}``.
    """

    def stamp() -> tuple[int, bytes] | None:
        try:
            return record.stat().st_mtime_ns, record.read_bytes()
        except OSError:
            return None

    before = stamp()
    started = time.perf_counter()
    result = call()
    seconds = round(time.perf_counter() - started, 1)
    if before is None or stamp() != before:
        return result, {"seconds": seconds}
    stored = json.loads(before[1])
    date = datetime.fromtimestamp(before[0] / 1e9, UTC).isoformat(timespec="seconds")
    return result, {"reused_from": {"digest": stored.get(digest_key), "date": date, "seconds": stored.get("seconds")}}


def cached_synthrs_ingest(
    root: Path, synth: dict[str, Any], ingest_cfg: Any, progress: bool = False
) -> dict[str, dict[str, Any]]:
    """SynthRS made by ``write_synthrs(root, **synth)``, then ingested with ``ingest_cfg``: two chained
    :func:`cached_step` s (the ingest's digest covers the SynthRS step's), as ``{"synthrs", "ingest"}``."""
    from dldc.data.ingest import ingest
    from dldc.data.synthrs import write_synthrs

    steps = {
        "synthrs": cached_step(
            root, {"step": "synthrs", "synth": synth}, lambda out: write_synthrs(out, **synth, progress=progress)
        )
    }
    steps["ingest"] = cached_step(
        Path(ingest_cfg.out),
        {
            "step": "ingest",
            "ingest": ingest_cfg.model_dump(mode="json", exclude={"root", "out"}),
            "synthrs": steps["synthrs"]["digest"],
        },
        lambda out: ingest(ingest_cfg, progress=progress).report,
    )
    return steps


def rsicd_subset_manifest(out_dir: Path, n_images: int) -> Path:
    """Ingest the real RSICD subset (reused when from the same files) and keep its first ``n_images`` images."""
    from dldc.config import IngestConfig
    from dldc.data.ingest import ingest
    from dldc.data.manifest import ManifestMeta, read_manifest, write_manifest

    full = out_dir / "rsicd-full"
    source = SHARED_DATA / "rsicd-dev"
    cfg = IngestConfig(root=str(source), out=str(full))
    settings = cfg.model_dump(mode="json", exclude={"root", "out"})
    cached_step(full, {"step": "ingest", "ingest": settings}, lambda _: ingest(cfg, progress=False).report, [source])
    frame, meta = read_manifest(full / "manifest.parquet")
    keep = frame["image_id"].drop_duplicates().head(n_images)
    subset = frame[frame["image_id"].isin(set(keep))]
    path = out_dir / f"rsicd-{n_images}" / "manifest.parquet"
    root = str((full / meta.root).resolve()) if not Path(meta.root).is_absolute() else meta.root
    write_manifest(path, subset.to_dict("records"), ManifestMeta(**{**meta.__dict__, "root": root}))
    return path
