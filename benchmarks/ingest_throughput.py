"""Ingest throughput on the real RSICD subset, 1 worker vs all cores, in one run.

    python benchmarks/ingest_throughput.py

Reports images/s and pairs/s of the full ingest stage (read JSON, decode and hash every
image, near-duplicate search, write Parquet) for each worker count.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, write_result  # noqa: E402

from dldc.config import IngestConfig  # noqa: E402
from dldc.data.ingest import ingest  # noqa: E402


def main() -> None:
    root = SHARED_DATA / "rsicd-dev"
    runs = {}
    for workers in sorted({1, os.cpu_count() or 1}):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = IngestConfig(root=str(root), out=tmp, workers=workers)
            ingest(cfg, progress=False)  # warm the page cache: compare decoding, not disk
            start = time.perf_counter()
            result = ingest(cfg, progress=False)
            seconds = time.perf_counter() - start
        counts = result.report["counts"]
        runs[f"workers_{workers}"] = {
            "seconds": round(seconds, 3),
            "images_per_s": round(counts["input_images"] / seconds, 1),
            "pairs_per_s": round(counts["input_pairs"] / seconds, 1),
        }
    first, *rest = runs.values()
    figures = {"dataset": "rsicd-dev (1860 images, 9300 pairs, 224 px JPEG)", "runs": runs}
    if rest:
        figures["speedup_all_cores_vs_1"] = round(first["seconds"] / rest[-1]["seconds"], 2)
    write_result("ingest_throughput", figures)


if __name__ == "__main__":
    main()
