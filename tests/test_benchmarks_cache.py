"""The benchmarks' ``--work`` caches: reuse only on a matching digest, and say so (benchmarks/_common.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import CACHE_FILE, cached_step, provenance, reuse_note  # noqa: E402


class Step:
    """A compute function that counts its calls and writes one file into its output folder."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, out: Path) -> dict:
        assert not out.exists(), "a step must start from a clean folder"
        self.calls += 1
        out.mkdir(parents=True)
        (out / "data.txt").write_text(f"run {self.calls}")
        return {"run": self.calls}


def test_hit_reports_where_it_came_from(tmp_path: Path) -> None:
    step = Step()
    first = cached_step(tmp_path / "s", {"a": 1}, step)
    assert first["result"] == {"run": 1} and "reused_from" not in first
    assert first["seconds"] >= 0 and first["date"]
    second = cached_step(tmp_path / "s", {"a": 1}, step)
    assert step.calls == 1
    assert second["result"] == {"run": 1} and second["config"] == {"a": 1}
    assert second["reused_from"] == {"digest": first["digest"], "date": first["date"], "seconds": first["seconds"]}
    assert "seconds" not in second
    assert provenance(first) == {"seconds": first["seconds"]}
    assert provenance(second) == {"reused_from": second["reused_from"]}


def test_changed_config_recomputes_in_a_clean_folder(tmp_path: Path) -> None:
    step = Step()
    first = cached_step(tmp_path / "s", {"a": 1}, step)
    (tmp_path / "s" / "stale.txt").write_text("from the first run")
    second = cached_step(tmp_path / "s", {"a": 2}, step)
    assert step.calls == 2 and "reused_from" not in second
    assert second["digest"] != first["digest"]
    assert not (tmp_path / "s" / "stale.txt").exists()
    assert json.loads((tmp_path / "s" / CACHE_FILE).read_text())["config"] == {"a": 2}


def test_changed_input_file_recomputes(tmp_path: Path) -> None:
    step, source = Step(), tmp_path / "in" / "x.txt"
    source.parent.mkdir()
    source.write_text("one")
    cached_step(tmp_path / "s", {"a": 1}, step, inputs=[source.parent])
    assert "reused_from" in cached_step(tmp_path / "s", {"a": 1}, step, inputs=[source.parent])
    source.write_text("two")
    assert "reused_from" not in cached_step(tmp_path / "s", {"a": 1}, step, inputs=[source.parent])
    assert step.calls == 2


@pytest.mark.parametrize("damage", ["missing", "corrupt", "incomplete"])
def test_missing_or_broken_record_recomputes(tmp_path: Path, damage: str) -> None:
    step = Step()
    cached_step(tmp_path / "s", {"a": 1}, step)
    record = tmp_path / "s" / CACHE_FILE
    if damage == "missing":  # e.g. a folder written by an older benchmark, keyed on "the file exists"
        record.unlink()
    elif damage == "corrupt":
        record.write_text("{not json")
    else:
        record.write_text(json.dumps({"digest": json.loads(record.read_text())["digest"]}))
    again = cached_step(tmp_path / "s", {"a": 1}, step)
    assert step.calls == 2 and again["result"] == {"run": 2} and "reused_from" not in again


def test_failed_step_is_not_recorded(tmp_path: Path) -> None:
    def fails(out: Path) -> None:
        out.mkdir()
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cached_step(tmp_path / "s", {"a": 1}, fails)
    assert not (tmp_path / "s" / CACHE_FILE).exists()
    assert "reused_from" not in cached_step(tmp_path / "s", {"a": 1}, Step())


def test_reuse_note_tells_a_library_cache_hit_from_a_run(tmp_path: Path) -> None:
    record, runs = tmp_path / "trial.json", []

    def run() -> str:
        runs.append(1)
        record.write_text(json.dumps({"key": "k1", "seconds": 12.5 * len(runs)}))
        return "ran"

    result, note = reuse_note(run, record, "key")
    assert result == "ran" and set(note) == {"seconds"}
    result, note = reuse_note(lambda: "kept", record, "key")  # the stage found its output and left it
    assert result == "kept"
    assert note["reused_from"]["digest"] == "k1" and note["reused_from"]["seconds"] == 12.5
    assert note["reused_from"]["date"]
    _, note = reuse_note(run, record, "key")  # rewritten: measured now
    assert set(note) == {"seconds"}
