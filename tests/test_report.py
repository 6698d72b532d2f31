"""The cleaning report: built from a tiny SynthRS run, escaped, bounded, and checked in a real browser."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from dldc.cli import main
from dldc.config import ReportConfig, load_config
from dldc.data.manifest import read_manifest, write_manifest
from dldc.report import INDEX_FILE, SUMMARY_FILE, build_report, single_file
from dldc.select.selection import select_ratios

sys.path.insert(0, str(Path(__file__).parent))
from browser import chromium_binary, environment_note, load_page  # noqa: E402
from eval_fixtures import make_manifest, random_scores, write_generations  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
INJECTED = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> "quoted" & more'


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny run: SynthRS 40 images (4 scenes) → ingest → scores → select (proxy) + EGL, rejects, generations, eval."""
    work = tmp_path_factory.mktemp("report")
    ingest_manifest = make_manifest(work / "data", n_images=40, size=32)
    frame, meta = read_manifest(ingest_manifest)
    # A caption is user data: one that tries HTML injection must be shown as text.
    frame.loc[frame.index[0], "caption"] = INJECTED
    manifest = work / "captions" / "manifest.parquet"
    write_manifest(manifest, frame.to_dict("records"), dataclasses.replace(meta, root="../data/synthrs"))
    random_scores(frame).to_parquet(work / "captions" / "scores.parquet")
    cfg = load_config(None, updates={"select.scores": str(work / "captions" / "scores.parquet"),
                                     "select.manifest": str(manifest), "select.out": str(work / "select"),
                                     "select.mode": "proxy", "select.min_scene_pairs": 4, "select.plots": False,
                                     "tracking.enabled": False})  # fmt: skip
    select_ratios(cfg)

    # EGL lineage: an original and its accepted replacement for two pairs per scene.
    rows = []
    for scene, group in frame[frame["split"] == "train"].groupby("scene"):
        for i, pair in enumerate(group.head(2).itertuples()):
            base = {"pair_id": pair.pair_id, "image_id": pair.image_id, "scene": scene, "backend": "mask2text",
                    "model": "synthrs"}  # fmt: skip
            rows.append({**base, "candidate_id": f"{pair.pair_id}@r0", "round": 0, "backend": "original",
                         "caption": pair.caption, "status": "original", "fused": 0.1, "layout": 0.5,
                         "selected": False})  # fmt: skip
            rows.append({**base, "candidate_id": f"{pair.pair_id}@r1.0", "round": 1,
                         "caption": f"a {scene} with <b>bold</b> fields at the top {i}", "status": "scored",
                         "fused": 0.6 + i / 10, "layout": 1.0, "selected": True})  # fmt: skip
    pd.DataFrame(rows).to_parquet(work / "captions" / "captions.parquet")
    (work / "captions" / "caption.json").write_text(json.dumps({"low_at_start": 8, "stop": "rounds"}))

    # Ingest rejects: one kept image's duplicate, a path that escapes the root, a missing file.
    ingest_dir = work / "data" / "ingest"
    image = frame["image"].iloc[1]
    rejects = pd.DataFrame([
        {"pair_id": "d:0", "image_id": "d", "image": image, "caption": "same bytes", "scene": "forest",
         "split": "train", "reason": "duplicate_image", "detail": f"same sha256 as {image}"},
        {"pair_id": "e:0", "image_id": "e", "image": "../../../etc/hostname", "caption": "<i>escape</i>",
         "scene": "forest", "split": "train", "reason": "path_escape", "detail": "outside the root"},
        {"pair_id": "m:0", "image_id": "m", "image": "images/gone.png", "caption": "gone", "scene": "beach",
         "split": "train", "reason": "missing_file", "detail": "gone.png does not exist"},
    ])  # fmt: skip
    rejects.to_parquet(ingest_dir / "rejects.parquet")

    write_generations(work / "generate", manifest, {"base": 0.8, "raw": 0.5, "clean": 0.2}, seeds=(0, 1))
    metric = {"scene": "all", "metric": "FD-indomain", "value": 1.5, "ci_low": 1.2, "ci_high": 1.9,
              "higher_is_better": False, "n_real": 20, "n_generated": 40, "extractor": "indomain:abc",
              "feature_dim": 32.0, "resolution": "32x32"}  # fmt: skip
    evaluation = {
        "protocol": {"n_real": 20, "split": "test", "resolution": "32x32", "ci": 0.95, "bootstrap": 10,
                     "ci_method": "percentile bootstrap", "fingerprint": "f00d", "warnings": ["<b>warn</b>"]},
        "extractors": {"FD-indomain": {"kind": "scorer", "extractor_id": "indomain:abc", "feature_dim": 32}},
        "metrics": [{**metric, "arm": arm, "value": v} for arm, v in (("base", 3.0), ("raw", 2.0), ("clean", 1.5))]
        + [{**metric, "arm": "clean", "scene": "forest"}],
    }  # fmt: skip
    (work / "evaluate").mkdir()
    (work / "evaluate" / "results.json").write_text(json.dumps(evaluation))
    return {"work": work, "manifest": manifest, "scores": work / "captions" / "scores.parquet",
            "selection": work / "select", "captions": work / "captions", "ingest": ingest_dir,
            "generations": work / "generate", "evaluation": work / "evaluate"}  # fmt: skip


def _cfg(project: dict[str, Path], out: Path, **extra: object) -> ReportConfig:
    paths = {name: str(project[name]) for name in
             ("manifest", "scores", "selection", "captions", "ingest", "generations", "evaluation")}  # fmt: skip
    return ReportConfig(**{**paths, "out": str(out), **extra})


def test_report_shows_every_section_escaped_and_bounded(project: dict[str, Path], tmp_path: Path) -> None:
    result = build_report(_cfg(project, tmp_path / "report", lowest_dropped=2, around_cut=1, best_kept=1))
    page = result.index.read_text(encoding="utf-8")
    selection = json.loads((project["selection"] / "selection.json").read_text())
    for scene in selection["ratios"]:
        assert f'data-scene="{scene}"' in page
    for anchor in ("selection", "egl", "ingest", "generations", "evaluation"):
        assert f'id="{anchor}"' in page
    # User text is escaped everywhere: no script element, no injected <img>, no bold from a caption or warning.
    assert "<script" not in page and "<b>bold</b>" not in page and "<b>warn</b>" not in page
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "onerror=&quot;" in page and 'onerror="' not in page
    assert "layout holds" in page and "contradicted (50% of places hold)" in page
    assert "1.5 <span class=\"ci\">[1.2, 1.9]</span>" in page and "N real 20, N gen 40" in page
    summary = json.loads((result.out / SUMMARY_FILE).read_text())
    assert summary["scenes"] == 4 and summary["egl_replaced"] == 8 and summary["rejected"] == 3
    # The path that escapes the root and the missing file get placeholders, never a read outside the root.
    assert summary["thumbnail_failures"] == 2 and any("outside the dataset root" in v
                                                      for v in summary["failures"].values())  # fmt: skip
    # Bounded: per scene at most lowest + 2 * around + best thumbnails, plus the other sections' caps.
    thumbs = list((result.out / "thumbs").iterdir())
    assert len(thumbs) == summary["thumbnails"] <= 4 * (2 + 2 + 1) + 4 * 2 + 1 + 6 * 4
    assert all(p.suffix == ".jpg" for p in thumbs) and summary["bytes"] < 500_000
    # One file with the thumbnails inlined reads nothing else.
    inlined = single_file(result.out)
    assert 'src="thumbs/' not in inlined and inlined.count("data:image/jpeg;base64,") >= len(thumbs)


def test_report_needs_only_manifest_scores_and_selection(project: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    cfg = _cfg(project, tmp_path / "report", captions=None, ingest=str(missing), generations=None,
               evaluation=str(missing))  # fmt: skip
    result = build_report(cfg)
    page = result.index.read_text(encoding="utf-8")
    assert 'id="egl"' not in page and 'id="generations"' not in page and 'id="evaluation"' not in page
    states = {name: info["state"] for name, info in result.summary["inputs"].items()}
    assert states["ingest"] == "absent" and states["captions"] == "off" and states["selection"] == "used"
    with pytest.raises(ValueError, match="score_column 'nope'"):
        build_report(_cfg(project, tmp_path / "r2", score_column="nope"))
    with pytest.raises(FileNotFoundError, match="run `dldc select` first"):
        build_report(_cfg(project, tmp_path / "r3", selection=str(missing)))
    # Scores that are not the ones select ranked are refused, not silently shown.
    other = tmp_path / "scores.parquet"
    pd.read_parquet(project["scores"]).assign(fused=0.5).to_parquet(other)
    with pytest.raises(ValueError, match="is not the scores"):
        build_report(_cfg(project, tmp_path / "r4", scores=str(other)))


def test_cli_report_writes_the_folder_and_metrics(project: dict[str, Path], tmp_path: Path) -> None:
    out, page = tmp_path / "report", tmp_path / "one.html"
    args = ["-S", "tracking.enabled=false", "report", "--manifest", str(project["manifest"]), "--scores",
            str(project["scores"]), "--selection", str(project["selection"]), "--ingest", str(project["ingest"]),
            "--out", str(out), "--single-file", str(page)]  # fmt: skip
    result = CliRunner().invoke(main, ["--params", str(REPO / "params.yaml"), *args])
    assert result.exit_code == 0, result.output
    assert "4 scenes" in result.output and (out / INDEX_FILE).is_file() and page.is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scenes"] == 4 and metrics["rejected"] == 3 and metrics["bytes"] > 0


@pytest.mark.slow
def test_report_in_headless_chromium(project: dict[str, Path], tmp_path: Path) -> None:
    if chromium_binary() is None:
        pytest.skip(environment_note())
    pytest.importorskip("websocket", reason="websocket-client (the dev extra) drives Chromium")
    result = build_report(_cfg(project, tmp_path / "report"))
    probe = """(() => {
        const imgs = [...document.querySelectorAll('img')];
        return {
          scenes: [...document.querySelectorAll('section.scene')].map(s => s.dataset.scene),
          sections: [...document.querySelectorAll('main section[id]')].map(s => s.id),
          images: imgs.length,
          broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
          scripts: document.scripts.length,
          pwned: window.pwned || 0,
          injected: document.body.innerText.includes('<script>window.pwned = 1</script>'),
        };
    })()"""
    screenshot = tmp_path / "report.png"
    loaded = load_page(result.index, probe, screenshot=screenshot)
    selection = json.loads((project["selection"] / "selection.json").read_text())
    assert sorted(loaded.probe["scenes"]) == sorted(selection["ratios"])
    assert {"selection", "egl", "ingest", "generations", "evaluation"} <= set(loaded.probe["sections"])
    assert loaded.probe["images"] >= result.summary["thumbnails"] > 0  # an image may show in two sections
    assert loaded.probe["broken"] == []
    assert loaded.errors == []
    assert loaded.probe["scripts"] == 0 and loaded.probe["pwned"] == 0 and loaded.probe["injected"]
    assert screenshot.stat().st_size > 10_000
    # Kept as a test artifact beside pytest's own copy (build/ is not committed).
    artifacts = REPO / "build" / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copy(screenshot, artifacts / "report.png")
