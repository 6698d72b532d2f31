"""The real RSICD subset from params alone: ingest -> train-scorer -> score -> select (proxy) -> export-dataset
-> report, then the export re-ingested and the report opened in headless Chromium.

    python benchmarks/rsicd_dev_chain.py [--work DIR] [--profile rsicd-dev]

Each stage is `dldc <stage>` in WORK with the profile's params file (`dldc config init --profile`);
times are this run's, per stage. Writes benchmarks/results/rsicd_dev_chain.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from _common import SHARED_DATA, write_result

REPO = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "train-scorer", "score", "select", "export-dataset", "report"]
KEYS = ["image", "caption", "scene", "split"]


def dldc(work: Path, *args: str) -> str:
    command = [sys.executable, "-m", "dldc", "--no-progress", "-S", "tracking.enabled=false", *args]
    return subprocess.run(command, cwd=work, check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="working folder [a fresh temporary one]")
    parser.add_argument("--profile", default="rsicd-dev")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="rsicd-dev-"))
    work.mkdir(parents=True, exist_ok=True)
    root = SHARED_DATA / "rsicd-dev"
    dldc(work, "config", "init", "--profile", args.profile, "--out", "params.yaml", "--force")
    params = (work / "params.yaml").read_text().replace("root: ../shared/data/rsicd-dev", f"root: {root}")
    (work / "params.yaml").write_text(params)

    seconds, messages = {}, {}
    for stage in STAGES:
        start = time.perf_counter()
        messages[stage] = dldc(work, stage).splitlines()[-1]
        seconds[stage] = round(time.perf_counter() - start, 1)
        print(f"{stage}: {seconds[stage]} s: {messages[stage]}", flush=True)

    # The export re-ingests to exactly the kept pairs.
    from dldc.config import IngestConfig
    from dldc.data.ingest import ingest
    from dldc.data.manifest import read_manifest

    start = time.perf_counter()
    again = ingest(IngestConfig(root=str(work / "data/cleaned"), out=str(work / "reingest")), progress=False)
    seconds["reingest"] = round(time.perf_counter() - start, 1)
    kept = pd.read_parquet(work / "data/cleaned/provenance.parquet").query("status == 'kept'")
    kept = kept.rename(columns={"final_caption": "caption"})[KEYS].sort_values(KEYS).reset_index(drop=True)
    reread = read_manifest(again.manifest)[0][KEYS].sort_values(KEYS).reset_index(drop=True)
    round_trip = bool(kept.equals(reread))

    # The report in a real browser: every scene's section, every thumbnail loaded, no console errors.
    sys.path.insert(0, str(REPO / "tests"))
    from browser import chromium_binary, load_page

    browser = None
    if chromium_binary():
        probe = """(() => { const imgs = [...document.querySelectorAll('img')];
            return {scenes: document.querySelectorAll('section.scene').length, images: imgs.length,
                    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length}; })()"""
        loaded = load_page(work / "data/report/index.html", probe)
        browser = {**loaded.probe, "errors": loaded.errors}
    manifest = read_manifest(work / "data/ingest/manifest.parquet")[0]
    write_result(
        "rsicd_dev_chain",
        {
            "profile": args.profile,
            "data": {"root": "../shared/data/rsicd-dev", "pairs": len(manifest),
                     "images": int(manifest["image"].nunique()), "scenes": int(manifest["scene"].nunique())},
            "seconds": seconds,
            "total_seconds": round(sum(v for k, v in seconds.items() if k in STAGES), 1),
            "messages": messages,
            "export": {"kept_pairs": len(kept), "reingested_pairs": len(reread), "round_trip_exact": round_trip},
            "report_in_chromium": browser,
        },
    )


if __name__ == "__main__":
    main()
