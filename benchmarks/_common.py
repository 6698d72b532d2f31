"""Helpers shared by the benchmark scripts: machine description and result files."""

from __future__ import annotations

import json
import os
import platform
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


def rsicd_subset_manifest(out_dir: Path, n_images: int) -> Path:
    """Ingest the real RSICD subset once and keep the pairs of its first ``n_images`` images."""
    from dldc.config import IngestConfig
    from dldc.data.ingest import ingest
    from dldc.data.manifest import ManifestMeta, read_manifest, write_manifest

    full = out_dir / "rsicd-full"
    if not (full / "manifest.parquet").is_file():
        ingest(IngestConfig(root=str(SHARED_DATA / "rsicd-dev"), out=str(full)), progress=False)
    frame, meta = read_manifest(full / "manifest.parquet")
    keep = frame["image_id"].drop_duplicates().head(n_images)
    subset = frame[frame["image_id"].isin(set(keep))]
    path = out_dir / f"rsicd-{n_images}" / "manifest.parquet"
    root = str((full / meta.root).resolve()) if not Path(meta.root).is_absolute() else meta.root
    write_manifest(path, subset.to_dict("records"), ManifestMeta(**{**meta.__dict__, "root": root}))
    return path
