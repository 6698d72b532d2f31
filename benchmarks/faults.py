"""Fault injection: what every resumable stage does under the faults users meet, in one table.

Each stage runs through the real CLI (``python -m dldc ...``) as a subprocess, on tiny inputs
built here by code (SynthRS, a tiny in-domain scorer, a randomly initialised 8 px Stable
Diffusion base), with ``OMP_NUM_THREADS=1`` so that reruns are comparable bit for bit. A clean,
uninterrupted run of each stage is the reference; every fault is then injected and judged:

``recovered``
    The stage ran to completion and the files the next stage reads (parquet, safetensors and
    PNG by their bytes; JSON reports with timings, resume counters and the run's own folder
    removed) equal the reference's. For input faults (bad images and captions, which change the
    input): the stage completed and nothing was lost (every input pair is in the output or in a
    ``rejects.parquet`` with a reason).
``refused with a clear error``
    Non-zero exit, an ``Error: ...`` line naming the problem, no traceback, and no damaged
    file where the next stage reads (a file the failed run left there is either absent or
    complete, i.e. equal to the reference's); for a second writer, the first run's output is
    also identical to the reference.
``FAILED: ...``
    Anything else (different output, a traceback, a partial file, code run from a pickle).

Faults (``--faults``):

``sigkill``   SIGKILL (to the process group) at ``--kills`` seeded points, each in a fresh folder,
              then the same command again. A point is a time drawn uniformly between the first and
              the last new file of the reference run (its end, when all files appear at once, as in
              ingest), aimed at the same progress (files written, then the rest of the interval
              scaled to this run's speed), since machine load changes how long the same work takes.
``damaged``   a truncated and a bit-flipped cached piece (score shard, embedding-store part,
              caption shard, fine-tuning / segmenter checkpoint, finished adapter or weights;
              for ingest its previous outputs; for train-scorer the scorer files, which the
              consumer must refuse), then the same command again.
``lock``      two runs on one output folder, started together: the one that reaches the lock
              second must refuse, the other finish with the reference's output (ingest, which
              holds its lock for tenths of a second, ingests a 400-image SynthRS for this).
``enospc``    "disk full": ``RLIMIT_FSIZE`` set in the child (``preexec_fn``; CPython ignores
              SIGXFSZ, so the write fails with ``EFBIG`` "File too large") at half the size of the
              largest file the stage writes; then a rerun with space must recover. A small tmpfs
              would give ENOSPC proper but needs mount rights this benchmark does not assume.
``params``    a malformed ``params.yaml``: broken YAML, a wrong type, an unknown key.
``pickle``    a pickle that would run code (it creates a marker file when unpickled) where the
              stage loads a checkpoint (finetune / select-trial: ``optimizer.pt``; segment:
              ``checkpoint.pt``) — once as a plain replacement, once with its checksum forged —
              or, for stages that load no checkpoint of their own, where they read
              weights or data: an ``open_clip`` checkpoint of a scorer (score, caption), the
              manifest (train-scorer), an image file (ingest). The marker must never appear.
``inputs``    a hostile dataset: a decompression bomb (30000 x 30000 PNG header), CMYK / 16-bit /
              palette / grayscale TIFF and PNG (and CMYK JPEG, RGBA PNG), a truncated and a
              zero-byte image, a missing file, a pickle named like an image, captions with
              undecodable bytes (U+FFFD), empty and 10,000 characters long; every stage runs on
              it in turn (ingest → ... → segment). Ingest also gets a caption whose undecodable
              bytes are JSON-escaped lone surrogates (``\\udcff``).
``manifest``  an empty and a truncated input manifest (ingest: its annotation file; segment,
              which reads no manifest: an empty dataset folder and a truncated mask).

Usage::

    python benchmarks/faults.py                     # everything (about 20 min on 2 cores)
    python benchmarks/faults.py --stages score,finetune --faults sigkill,damaged --kills 3
    python benchmarks/faults.py --work /tmp/faults  # keep the inputs and references for reruns

Writes ``benchmarks/results/faults.json`` (full runs only, or with ``--write``) and prints the
README table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import pickle
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

RECOVERED = "recovered"
REFUSED = "refused with a clear error"
STAGES = ("ingest", "train-scorer", "score", "caption", "select-trial", "finetune", "segment")
FAULTS = ("sigkill", "damaged", "lock", "enospc", "params", "pickle", "inputs", "manifest")
DEPENDS = {
    "ingest": (),
    "train-scorer": ("ingest",),
    "score": ("ingest", "train-scorer"),
    "caption": ("ingest", "train-scorer", "score"),
    "select-trial": ("ingest", "train-scorer", "score", "caption"),
    "finetune": ("ingest",),
    "segment": (),
}
# JSON keys that describe a run rather than its result (timings, what was reused or resumed).
VOLATILE = {
    "seconds",
    "timings",
    "throughput",
    "train_seconds",
    "pairs_per_second",
    "resumed_from",
    "reused",
    "shards_reused",
    "images_encoded",
    "texts_encoded",
    "oom_retries",
    "generated",
    "images_per_s",
    "loop_s",
    "setup_s",
    "created",
    "total_s",
    "decode_s",
    "train_s",
}
SCENES = ["beach", "farmland", "forest", "residential"]
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore",
}


@dataclass(frozen=True)
class Stage:
    """How to run a stage and which of its files the next stage reads."""

    name: str
    out_key: str | None  # the setting naming its output folder (None: the --out flag)
    reads: tuple[str, ...]
    manifest_key: str | None = None  # the setting naming its input manifest
    section: str = ""  # its params section (for the params faults)
    int_key: str = ""  # an integer setting of that section

    def argv(self, world: str, out: str, extra: tuple[str, ...] = ()) -> list[str]:
        """The command line of one run into ``out`` (relative to the work folder)."""
        args = [sys.executable, "-m", "dldc", "--no-progress", "--params", f"{world}.yaml"]
        if self.out_key:
            args += ["-S", f"{self.out_key}={out}"]
        if self.name == "caption":  # its own embedding store, so runs never share one
            args += ["-S", f"caption.cache={out}/embeddings"]
        for setting in extra:
            args += ["-S", setting]
        if self.name == "select-trial":
            return [*args, "select-trial", "--ratio", "0.25", "--out", out]
        return [*args, self.name]


STAGE = {
    "ingest": Stage(
        "ingest",
        "ingest.out",
        ("manifest.parquet", "rejects.parquet", "ingest.json"),
        section="ingest",
        int_key="min_side",
    ),
    "train-scorer": Stage(
        "train-scorer",
        "indomain.out",
        (
            "open_clip_config.json",
            "folds.parquet",
            "texts.parquet",
            "fold-0.safetensors",
            "fold-1.safetensors",
            "fold-0.scene.safetensors",
            "fold-1.scene.safetensors",
            "indomain.json",
        ),
        manifest_key="indomain.manifest",
        section="indomain",
        int_key="epochs",
    ),
    "score": Stage(
        "score",
        "score.out",
        ("scores.parquet", "score.json"),
        manifest_key="score.manifest",
        section="score",
        int_key="shard_size",
    ),
    "caption": Stage(
        "caption",
        "caption.out",
        ("manifest.parquet", "captions.parquet", "scores.parquet", "caption.json"),
        manifest_key="caption.manifest",
        section="caption",
        int_key="rounds",
    ),
    "select-trial": Stage(
        "select-trial",
        None,
        ("trial.json", "cleaned_manifest.parquet", "evaluate/bootstrap.parquet"),
        manifest_key="select.manifest",
        section="select",
        int_key="trial_steps",
    ),
    "finetune": Stage(
        "finetune",
        "finetune.out",
        ("pytorch_lora_weights.safetensors", "samples.png", "finetune.json"),
        manifest_key="finetune.manifest",
        section="finetune",
        int_key="steps",
    ),
    "segment": Stage(
        "segment",
        "segment.out",
        ("results.json", "per_class.parquet", "segment.json", "results.md", "rejects.parquet", "split.json"),
        section="segment",
        int_key="steps",
    ),
}
REF_DIR = {
    "ingest": "ingest",
    "train-scorer": "scorer",
    "score": "scores",
    "caption": "captions",
    "select-trial": "trial",
    "finetune": "finetune",
    "segment": "segment",
}


def params(world: str) -> dict[str, Any]:
    """The tiny settings of every stage; ``world`` (``clean`` or ``hostile``) names inputs and references."""
    data = "inputs/synthrs" if world == "clean" else "inputs/hostile"
    scorer = f"indomain:{world}/scorer"
    return {
        "profile": "demo",
        "tracking": {"enabled": False},
        "synth": {
            "out": "inputs/synthrs",
            "n_images": 24,
            "size": 32,
            "captions_per_image": 2,
            "scenes": SCENES,
            "split_ratios": [0.5, 0.25, 0.25],
            "seed": 0,
        },
        "ingest": {"root": data, "out": f"{world}/ingest", "workers": 1},
        "indomain": {
            "manifest": f"{world}/ingest/manifest.parquet",
            "out": f"{world}/scorer",
            "architecture": "indomain-test",
            "folds": 2,
            "epochs": 3,
            "batch_size": 8,
            "warmup_steps": 1,
            "device": "cpu",
        },
        "score": {
            "manifest": f"{world}/ingest/manifest.parquet",
            "out": f"{world}/scores",
            "scorers": [scorer],
            "shard_size": 8,
            "batch_size": 8,
            "device": "cpu",
            "precision": "fp32",
        },
        "caption": {
            "manifest": f"{world}/ingest/manifest.parquet",
            "scores": f"{world}/scores/scores.parquet",
            "out": f"{world}/captions",
            "backends": ["mask2text:synthrs", "retrieval"],
            "rounds": 2,
            "shard_size": 4,
            "device": "cpu",
            "precision": "fp32",
        },
        "select": {
            "scores": f"{world}/captions/scores.parquet",
            "manifest": f"{world}/captions/manifest.parquet",
            "eval_split": "val",
            "min_scene_pairs": 4,
            "trial_steps": 8,
            "trial_prompts_per_image": 1,
            "trial_generate_steps": 2,
            "trial_bootstrap": 20,
        },
        "finetune": {
            "base": "inputs/base",
            "manifest": f"{world}/ingest/manifest.parquet",
            "out": f"{world}/finetune",
            "resolution": 8,
            "rank": 2,
            "steps": 24,
            "batch_size": 4,
            "warmup_steps": 1,
            "checkpoint_every": 4,
            "sample_steps": 2,
            "device": "cpu",
            "threads": 1,
        },
        "generate": {"batch_size": 8, "device": "cpu", "threads": 1},
        "evaluate": {
            "feature_scorers": {"indomain": scorer},
            "clip_scorers": {"indomain": scorer},
            "kid_subsets": 2,
            "kid_subset_size": 4,
            "device": "cpu",
            "workers": 0,
        },
        "segment": {
            "dataset": "synthrs",
            "root": data,
            "patch_size": 32,
            "widths": [4, 8],
            "steps": 30,
            "batch_size": 4,
            "checkpoint_every": 5,
            "eval_every": 10,
            "bootstrap": 20,
            "protocols": ["layout-prompt"],
            "base": "inputs/base",
            "arms": {"base": ""},
            "synthetic_per_arm": 6,
            "gen_steps": 2,
            "gen_batch_size": 8,
            "out": f"{world}/segment",
            "device": "cpu",
            "threads": 1,
        },
    }


# --------------------------------------------------------------------------------------- running


@dataclass
class Run:
    rc: int
    output: str
    seconds: float

    @property
    def error_line(self) -> str:
        lines = [line for line in self.output.splitlines() if line.startswith("Error:")]
        return lines[-1] if lines else (self.output.strip().splitlines() or [""])[-1][:300]


class Bench:
    def __init__(self, work: Path, seed: int, kills: int, keep: bool):
        self.work, self.seed, self.kills, self.keep = work, seed, kills, keep
        self.timing: dict[str, dict[str, float]] = {}
        self.ref: dict[str, dict[str, str | None]] = {}
        self.counter = 0
        self.mutex = threading.Lock()
        self.hostile: dict[str, tuple[str, str]] | None = None

    # -- processes

    def start(self, argv: list[str], limit: int | None = None) -> subprocess.Popen:
        def preexec() -> None:
            if limit is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        # A file, not a pipe: a run that is polled, not read, never blocks; closed by finish().
        log = tempfile.TemporaryFile(mode="w+", errors="replace")  # noqa: SIM115
        process = subprocess.Popen(
            argv,
            cwd=self.work,
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )
        process.log = log  # type: ignore[attr-defined]
        return process

    @staticmethod
    def finish(process: subprocess.Popen, timeout: float = 900) -> str:
        """Wait for ``process`` (killing its group after ``timeout``) and return what it printed."""
        note = ""
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            note = "\n[benchmark: timed out]"
        log = process.log  # type: ignore[attr-defined]
        log.seek(0)
        output = log.read()
        log.close()
        return output + note

    def run(self, argv: list[str], limit: int | None = None, timeout: float = 900) -> Run:
        started = time.perf_counter()
        process = self.start(argv, limit)
        output = self.finish(process, timeout)
        return Run(process.returncode, output, time.perf_counter() - started)

    def folder(self, stage: str, tag: str) -> str:
        """A fresh run folder, at the depth of the references (manifest roots are relative paths)."""
        with self.mutex:
            self.counter += 1
            name = f"runs/{REF_DIR[stage]}-{tag}-{self.counter:03d}"
        shutil.rmtree(self.work / name, ignore_errors=True)
        return name

    def discard(self, *folders: str) -> None:
        if not self.keep:
            for folder in folders:
                shutil.rmtree(self.work / folder, ignore_errors=True)

    # -- outputs

    def digests(self, stage: str, out: str) -> dict[str, str | None]:
        return {name: digest(self.work / out / name, out) for name in STAGE[stage].reads}

    def same_as_reference(
        self, stage: str, out: str, reference: dict[str, str | None] | None = None
    ) -> tuple[bool, str]:
        found = self.digests(stage, out)
        reference = reference or self.ref[stage]
        differ = [name for name, value in found.items() if value != reference[name]]
        return not differ, (f"differs from the reference: {differ}" if differ else "identical to the reference")

    def judge_refusal(
        self, stage: str, run: Run, out: str, before: dict[str, str | None] | None = None
    ) -> tuple[str, str]:
        """REFUSED when the run failed cleanly and left no damaged file where the next stage reads."""
        before = before or dict.fromkeys(STAGE[stage].reads)
        if run.rc == 0:
            return "FAILED: not refused", "exit status 0"
        if "Traceback" in run.output:
            return "FAILED: traceback", tail(run.output)
        if not run.error_line.startswith("Error:"):
            return "FAILED: unclear error", tail(run.output)
        damaged, complete = [], []
        for name, value in self.digests(stage, out).items():
            if value is None or value == before[name]:
                continue
            (complete if value == self.ref[stage][name] else damaged).append(name)
        temps = (
            [str(p.relative_to(self.work)) for p in (self.work / out).rglob("*.tmp")]
            if (self.work / out).exists()
            else []
        )
        if damaged:
            return "FAILED: partial output", f"{run.error_line} | left damaged: {damaged}"
        note = f" | complete files written before the error: {complete}" if complete else ""
        note += f" | temporary files left: {len(temps)}" if temps else ""
        return REFUSED, run.error_line + note

    # -- reference runs

    def build_inputs(self) -> None:
        work = self.work
        work.mkdir(parents=True, exist_ok=True)
        for world in ("clean", "hostile"):
            (work / f"{world}.yaml").write_text(yaml.safe_dump(params(world), sort_keys=False))
        if not (work / "inputs/synthrs/dataset_synthrs.json").is_file():
            check(self.run([sys.executable, "-m", "dldc", "--no-progress", "--params", "clean.yaml", "synth"]), "synth")
        if not (work / "inputs/base/model_index.json").is_file():
            from dldc.t2i.models import save_dummy_base

            save_dummy_base(work / "inputs/base")
        make_evil_files(work, "ingest")
        if not (work / "inputs/hostile/dataset_synthrs.json").is_file():
            build_hostile_dataset(work, self)

    def hostile_result(self, stage: str) -> tuple[str, str]:
        """The outcome of ``stage`` on the hostile dataset (the whole chain runs once, on first use)."""
        if self.hostile is None:
            self.hostile = run_hostile_chain(self, list(STAGES))
        return self.hostile.get(stage, ("FAILED: not run", ""))

    def reference(self, stage: str, world: str = "clean") -> Run:
        """The uninterrupted run of ``stage`` into ``<world>/<dir>``; records its duration and first-file time."""
        out = f"{world}/{REF_DIR[stage]}"
        if world == "clean" and stage in self.ref:
            return Run(0, "", 0.0)
        shutil.rmtree(self.work / out, ignore_errors=True)
        started = time.perf_counter()
        process = self.start(STAGE[stage].argv(world, out))
        seen: set[str] = set()
        events: list[list[float]] = []  # [seconds, files written so far] at each new file: the progress points
        while process.poll() is None:
            count = progress(self.work / out, seen)
            if not events or count > events[-1][1]:
                events.append([round(time.perf_counter() - started, 3), count])
            time.sleep(0.01)
        run = Run(process.returncode, self.finish(process), time.perf_counter() - started)
        if world == "clean":
            check(run, f"reference {stage}")
            events = [event for event in events if event[1] > 0]
            self.timing[stage] = {
                "seconds": round(run.seconds, 2),
                "first_file_s": events[0][0] if events else 0.0,
                "progress": events,
            }
            self.ref[stage] = self.digests(stage, out)
            missing = [name for name, value in self.ref[stage].items() if value is None]
            if missing:
                raise SystemExit(f"reference {stage} did not write {missing}")
            again = self.run(STAGE[stage].argv(world, out))  # same inputs again: same bytes, nothing recomputed
            check(again, f"reference {stage} rerun")
            self.timing[stage]["rerun_seconds"] = round(again.seconds, 2)
            self.timing[stage]["rerun_identical"] = self.digests(stage, out) == self.ref[stage]
        return run

    def copy_reference(self, stage: str, tag: str) -> str:
        """A finished output folder to damage: a copy of the reference's, or for select-trial a run of its own.

        A trial's adapter is keyed by its cleaned manifest's path, so a copied trial would retrain (and
        never look at the damaged pieces); it is run in place instead.
        """
        out = self.folder(stage, tag)
        if stage == "select-trial":
            check(self.run(STAGE[stage].argv("clean", out)), f"{stage} into {out}")
        else:
            shutil.copytree(self.work / "clean" / REF_DIR[stage], self.work / out)
        return out

    def rerun_and_compare(self, stage: str, out: str, what: str) -> tuple[str, str]:
        run = self.run(STAGE[stage].argv("clean", out))
        if run.rc != 0:
            return "FAILED: rerun crashed", f"{what}: {tail(run.output)}"
        same, detail = self.same_as_reference(stage, out)
        warned = "warned" if "WARNING" in run.output or "recomput" in run.output or "again" in run.output else "silent"
        return (RECOVERED if same else "FAILED: output differs"), f"{what}: {detail} ({warned})"

    def kill_at_checkpoint(self, stage: str, out: str, pattern: str, timeout: float = 300) -> bool:
        """Start ``stage`` into ``out`` and SIGKILL it as soon as a file matching ``pattern`` exists."""
        process = self.start(STAGE[stage].argv("clean", out))
        deadline = time.monotonic() + timeout
        found = False
        while process.poll() is None and time.monotonic() < deadline:
            if list((self.work / out).glob(pattern)):
                found = True
                break
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        self.finish(process)
        return found and bool(list((self.work / out).glob(pattern)))


def check(run: Run, what: str) -> None:
    if run.rc != 0:
        raise SystemExit(f"{what} failed (exit {run.rc}):\n{run.output[-3000:]}")


def tail(output: str, lines: int = 3) -> str:
    return " / ".join(line.strip() for line in output.strip().splitlines()[-lines:])[:500]


def progress(folder: Path, seen: set[str]) -> int:
    """How many distinct files a run has written so far into ``folder`` (its measure of progress).

    Temporaries (hidden names) are not counted, but the inside of the hidden sibling that
    ``atomic_dir`` fills before renaming it to ``folder`` (train-scorer writes everything there) is.
    ``seen`` accumulates across polls, so files deleted later (checkpoints) still count.
    """
    roots = [folder, *folder.parent.glob(f".{folder.name}.*.tmp")]
    for root in roots:
        with contextlib.suppress(OSError):
            for path in root.rglob("*"):
                relative = path.relative_to(root)
                if not any(part.startswith(".") for part in relative.parts) and path.is_file():
                    seen.add(str(relative))
    return len(seen)


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def digest(path: Path, out: str) -> str | None:
    """Content digest of one output: JSON without run-describing keys and without the run's folder name."""
    if not path.is_file():
        return None
    if path.suffix != ".json":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    text = path.read_text(encoding="utf-8", errors="replace").replace(out, "<OUT>")
    try:
        data = _strip(json.loads(text))
    except ValueError:
        return "unparsable:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def flip_byte(path: Path, where: float = 0.5) -> None:
    """Invert one byte of ``path`` at fraction ``where`` of its length (a bit flip that stays a valid file
    for safetensors data, often for parquet pages)."""
    data = bytearray(path.read_bytes())
    position = min(len(data) - 1, int(len(data) * where))
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------ the inputs


class Payload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do (never done here)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


MARKER = "PICKLE-CODE-RAN"


def make_evil_files(work: Path, stage: str) -> str:
    """Pickles that would run code (they would create ``<MARKER>-<stage>``), in ``inputs/evil-<stage>``."""
    evil = work / f"inputs/evil-{stage}"
    evil.mkdir(parents=True, exist_ok=True)
    blob = pickle.dumps({"state": Payload(str(work / f"{MARKER}-{stage}"))}, protocol=2)
    for name in ("optimizer.pt", "checkpoint.pt", "open_clip.pt", "manifest.parquet", "evil.png"):
        (evil / name).write_bytes(blob)
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    (evil / "tiny-clip.json").write_text(json.dumps(config))
    return str(evil.relative_to(work))


def _png_header_bomb(path: Path, side: int = 30000) -> None:
    """A PNG whose header declares ``side`` x ``side`` grey pixels (900 M): a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (side + 1) * 4, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def build_hostile_dataset(work: Path, bench: Bench) -> None:
    """SynthRS plus every hostile input: image modes, a bomb, damaged files, bad and long captions."""
    import numpy as np
    from PIL import Image

    hostile = work / "inputs/hostile"
    shutil.copytree(work / "inputs/synthrs", hostile)
    extra = work / "inputs/extra"  # other images (another seed), so the variants are no near-duplicates
    shutil.rmtree(extra, ignore_errors=True)
    check(
        bench.run(
            [
                sys.executable,
                "-m",
                "dldc",
                "--no-progress",
                "--params",
                "clean.yaml",
                "synth",
                "--out",
                "inputs/extra",
                "--n-images",
                "12",
                "--seed",
                "7",
            ]
        ),
        "extra synth",
    )
    sources = sorted((extra / "images").glob("*.png"))
    document = json.loads((hostile / "dataset_synthrs.json").read_text())
    lists = {scene: (hostile / "txtclasses_synthrs" / f"{scene}.txt") for scene in SCENES}
    variants = [
        ("cmyk", "tif", lambda im: im.convert("CMYK")),
        ("cmyk", "jpg", lambda im: im.convert("CMYK")),
        ("gray16", "tif", lambda im: Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 257)),
        ("gray16", "png", lambda im: Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 257)),
        ("palette", "tif", lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)),
        ("palette", "png", lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)),
        ("gray", "tif", lambda im: im.convert("L")),
        ("gray", "png", lambda im: im.convert("L")),
        ("rgba", "png", lambda im: im.convert("RGBA")),
    ]
    entries = []
    for index, ((kind, ext, convert), source) in enumerate(zip(variants, sources)):
        scene = source.stem.split("_")[0]
        name = f"{scene}_{9000 + index}.{ext}"
        with Image.open(source) as image:
            convert(image.convert("RGB")).save(hostile / "images" / name)
        if ext == "png":  # segment reads images/*.png with masks/<name>.png
            shutil.copy(extra / "masks" / source.name, hostile / "masks" / name)
        entries.append((name, scene, "train", [f"a {kind} {ext} image of a {scene}", f"{kind} {ext} {scene} tile"]))
    bomb = hostile / "images" / "beach_9100.png"
    _png_header_bomb(bomb)
    shutil.copy(extra / "masks" / sources[10].name, hostile / "masks" / "beach_9100.png")
    truncated = hostile / "images" / "farmland_9101.png"
    data = sources[9].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    (hostile / "images" / "forest_9102.png").write_bytes(b"")
    (hostile / "images" / "beach_9104.png").write_bytes((work / "inputs/evil-ingest/evil.png").read_bytes())
    entries += [
        ("beach_9100.png", "beach", "train", ["a decompression bomb", "a huge beach"]),
        ("farmland_9101.png", "farmland", "train", ["a truncated farmland", "half a file"]),
        ("forest_9102.png", "forest", "train", ["an empty file", "nothing here"]),
        ("residential_9103.png", "residential", "train", ["a file that is missing", "no such tile"]),
        ("beach_9104.png", "beach", "train", ["a pickle named like an image", "code, not pixels"]),
    ]
    long_caption = ("a long caption about a wide sandy beach with waves at the bottom and dunes at the top " * 120)[
        :10_000
    ]
    for image in document["images"]:
        if image["filename"] == "beach_0001.png":
            image["sentences"][0]["raw"] = long_caption  # 10,000 characters
        if image["filename"] == "farmland_0001.png":
            image["sentences"][0]["raw"] = "farm fields \ufffd\ufffd with rows"  # bytes that were not UTF-8
        if image["filename"] == "forest_0001.png":
            image["sentences"][1]["raw"] = "   "  # empty
    next_id = max(image["imgid"] for image in document["images"]) + 1
    for offset, (name, scene, split, captions) in enumerate(entries):
        document["images"].append(
            {
                "filename": name,
                "imgid": next_id + offset,
                "split": split,
                "sentences": [{"raw": c, "tokens": c.split()} for c in captions],
            }
        )
        with lists[scene].open("a") as handle:
            handle.write(f"{name}\n")
    (hostile / "dataset_synthrs.json").write_text(json.dumps(document))


def input_pairs(dataset: Path) -> int:
    document = json.loads((dataset / "dataset_synthrs.json").read_text())
    return sum(len(image["sentences"]) for image in document["images"])


# ----------------------------------------------------------------------------------------- faults


Case = dict[str, str]


def case(name: str, outcome: str, detail: str) -> Case:
    return {"case": name, "outcome": outcome, "detail": detail}


def fault_sigkill(bench: Bench, stage: str) -> list[Case]:
    """SIGKILL at seeded points of the stage's work, then the same command again.

    A point is a time drawn uniformly between the reference run's first and last new file. Machine
    load changes how long the same work takes, so the kill is aimed at the same *progress*: the run
    is watched until it has written as many files as the reference had at the last file before that
    time, then killed after the rest of the interval, scaled by how much slower or faster this run
    got there.
    """
    events = bench.timing[stage]["progress"]
    rng = random.Random(f"{bench.seed}:{stage}")
    low, high = events[0][0], events[-1][0]
    if high - low < 0.05:  # every file at once (ingest): up to the end of the run instead
        high = bench.timing[stage]["seconds"]
    points = sorted(rng.uniform(low, high) for _ in range(bench.kills))
    cases = []
    for point in points:
        at, files = max((event for event in events if event[0] <= point), key=lambda event: event[0])
        out = bench.folder(stage, "kill")
        process = bench.start(STAGE[stage].argv("clean", out))
        started, seen = time.perf_counter(), set()
        while process.poll() is None and progress(bench.work / out, seen) < files:
            time.sleep(0.01)
        scale = min(4.0, max(0.25, (time.perf_counter() - started) / at)) if at else 1.0
        until = time.perf_counter() + (point - at) * scale
        while process.poll() is None and time.perf_counter() < until:
            time.sleep(0.005)
        hit = process.poll() is None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        bench.finish(process)
        had = progress(bench.work / out, set())
        where = f"at {files} files + {point - at:.2f} s (reference {point:.2f} s of {high:.2f})"
        outcome, detail = bench.rerun_and_compare(stage, out, f"killed {where}" + ("" if hit else ", after it ended"))
        cases.append(case(f"SIGKILL {where}", outcome, f"{detail}; {had} files on disk after the kill"))
        if outcome == RECOVERED:
            bench.discard(out)
    return cases


def remove(path: Path) -> None:
    """Delete a finished piece (what a run killed before writing it would leave), so the rerun reaches the damage."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def flip_data(path: Path) -> None:
    """A bit flip in a safetensors file's tensor data: the file stays valid, only a checksum can tell."""
    flip_byte(path, 0.98)


DAMAGE: dict[str, list[tuple[str, list[tuple[str, Callable[[Path], None]]]]]] = {
    # stage: [(case, [(glob inside a finished output folder, what is done to the first match)])]
    "ingest": [
        ("truncated previous manifest.parquet", [("manifest.parquet", truncate)]),
        ("bit-flipped previous rejects.parquet", [("rejects.parquet", flip_byte)]),
    ],
    "score": [
        ("truncated score shard", [("shards/shard-00002.parquet", truncate)]),
        ("bit-flipped score shard", [("shards/shard-00003.parquet", flip_byte)]),
        ("truncated embedding-store part", [("embeddings/*/image-*.safetensors", truncate), ("shards", remove)]),
        ("bit-flipped embedding-store part", [("embeddings/*/text-*.safetensors", flip_data), ("shards", remove)]),
    ],
    "caption": [
        ("truncated caption shard", [("rounds/round-01/gen/b0-00000.parquet", truncate)]),
        ("bit-flipped caption shard", [("rounds/round-01/gen/b1-00000.parquet", flip_byte)]),
        ("bit-flipped candidate score shard", [("rounds/round-01/iel/shards/shard-00000.parquet", flip_byte)]),
        (
            "bit-flipped embedding-store part",
            [("embeddings/*/text-*.safetensors", flip_data), ("rounds/round-01/iel/shards", remove)],
        ),
    ],
    "select-trial": [
        ("bit-flipped trial.json", [("trial.json", flip_byte)]),
        ("bit-flipped evaluate/bootstrap.parquet", [("evaluate/bootstrap.parquet", flip_byte)]),
        # Killed before trial.json was written, so the rerun goes through the damaged pieces:
        ("truncated generated image", [("generate/images/*.png", truncate), ("trial.json", remove)]),
        (
            "bit-flipped finished adapter",
            [("adapter/pytorch_lora_weights.safetensors", flip_data), ("trial.json", remove)],
        ),
    ],
    "finetune": [
        ("bit-flipped finished adapter", [("pytorch_lora_weights.safetensors", flip_data)]),
        ("truncated samples.png", [("samples.png", truncate)]),
    ],
    "segment": [
        ("bit-flipped finished weights", [("runs/real/model.safetensors", flip_data)]),
        ("truncated synthetic image", [("synthetic/base/images/*.png", truncate)]),
    ],
}
CHECKPOINT = {  # stage: (glob that marks a written checkpoint, its files)
    "finetune": ("checkpoints/step-*/SHA256SUMS", "checkpoints/step-*"),
    "select-trial": ("adapter/checkpoints/step-*/SHA256SUMS", "adapter/checkpoints/step-*"),
    "segment": ("runs/real/checkpoint.pt.sha256", "runs/real"),
}


def fault_damaged(bench: Bench, stage: str) -> list[Case]:
    cases = []
    if stage == "train-scorer":
        for name, damage in (("bit-flipped fold weights", flip_data), ("truncated fold weights", truncate)):
            out = bench.copy_reference(stage, "damaged")
            damage(bench.work / out / "fold-1.safetensors")
            consumer = bench.folder("score", "consumer")
            run = bench.run(STAGE["score"].argv("clean", consumer, (f"score.scorers=[indomain:{out}]",)))
            outcome, detail = bench.judge_refusal("score", run, consumer)
            cases.append(case(f"{name}: `dldc score` reading it", outcome, detail))
            outcome, detail = bench.rerun_and_compare(stage, out, f"{name}: train-scorer again")
            cases.append(case(f"{name}: train-scorer again", outcome, detail))
            bench.discard(out, consumer)
        return cases
    for name, steps in DAMAGE.get(stage, []):
        out = bench.copy_reference(stage, "damaged")
        missing = [pattern for pattern, _ in steps if not list((bench.work / out).glob(pattern))]
        if missing:
            cases.append(case(name, "FAILED: no such piece", str(missing)))
            continue
        for pattern, action in steps:
            action(sorted((bench.work / out).glob(pattern))[0])
        outcome, detail = bench.rerun_and_compare(stage, out, name)
        cases.append(case(name, outcome, detail))
        if outcome == RECOVERED:
            bench.discard(out)
    if stage in CHECKPOINT:
        marker, files = CHECKPOINT[stage]
        weights = {
            "finetune": "trainable.safetensors",
            "select-trial": "trainable.safetensors",
            "segment": "checkpoint.pt",
        }[stage]
        for name, damage in (
            ("truncated checkpoint", truncate),
            ("bit-flipped checkpoint", flip_data),
        ):
            out = bench.folder(stage, "ckpt")
            if not bench.kill_at_checkpoint(stage, out, marker):
                cases.append(case(name, "FAILED: no checkpoint seen", marker))
                continue
            target = sorted((bench.work / out).glob(files))[-1] / weights
            damage(target)
            outcome, detail = bench.rerun_and_compare(stage, out, f"{name} ({target.relative_to(bench.work / out)})")
            cases.append(case(name, outcome, detail))
            if outcome == RECOVERED:
                bench.discard(out)
    return cases


def fault_lock(bench: Bench, stage: str) -> list[Case]:
    """Two runs of the stage on one output folder, started together: one must refuse, the other finish.

    Started together, not one after the other: a second process spends seconds importing before it
    reaches the lock, longer than some stages hold it (ingest: a few tenths of a second). Whichever
    takes the lock first is the first writer; the other arrives while it is held. When one ran to its
    end before the other reached the lock (nothing overlapped, nothing was tested), it is tried again
    with the second started a little later, up to 8 times. Ingest holds its lock for a few tenths of a
    second on the tiny dataset, less than two processes' start-up differs: it ingests a 400-image
    SynthRS here (``inputs/synthrs-400``), its reference run made first.
    """
    extra: tuple[str, ...] = ()
    reference = None
    if stage == "ingest":
        extra = ("ingest.root=inputs/synthrs-400",)
        if not (bench.work / "inputs/synthrs-400/dataset_synthrs.json").is_file():
            argv = [sys.executable, "-m", "dldc", "--no-progress", "--params", "clean.yaml", "synth"]
            check(bench.run([*argv, "--out", "inputs/synthrs-400", "--n-images", "400"]), "synth 400")
        alone = bench.folder(stage, "lockref")
        check(bench.run(STAGE[stage].argv("clean", alone, extra)), "ingest 400")
        reference = bench.digests(stage, alone)
        bench.discard(alone)
    for attempt, delay in enumerate((0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6), start=1):
        out = bench.folder(stage, "lock")
        processes = [bench.start(STAGE[stage].argv("clean", out, extra))]
        time.sleep(delay)
        processes.append(bench.start(STAGE[stage].argv("clean", out, extra)))
        outputs = [bench.finish(process) for process in processes]
        runs = [Run(process.returncode, output, 0.0) for process, output in zip(processes, outputs)]
        refused = [run for run in runs if run.rc != 0]
        finished = [run for run in runs if run.rc == 0]
        if len(finished) == 2:
            bench.discard(out)
            continue  # no overlap this time
        if len(finished) != 1:
            return [case("second writer", "FAILED: both runs failed", " || ".join(tail(r.output) for r in runs))]
        second = refused[0]
        if "Traceback" in second.output or "another dldc process" not in second.error_line:
            return [case("second writer", "FAILED: unclear error", tail(second.output))]
        same, what = bench.same_as_reference(stage, out, reference)
        if not same:
            return [case("second writer", "FAILED: first run's output differs", what)]
        bench.discard(out)
        detail = f"{second.error_line} | the other run: {what} (attempt {attempt})"
        return [case("second writer", REFUSED, detail)]
    return [case("second writer", "FAILED: could not overlap", "each time one run ended before the other began")]


def fault_enospc(bench: Bench, stage: str) -> list[Case]:
    ref = bench.work / "clean" / REF_DIR[stage]
    largest = max(p.stat().st_size for p in ref.rglob("*") if p.is_file())
    limit = max(4096, largest // 2)
    out = bench.folder(stage, "enospc")
    run = bench.run(STAGE[stage].argv("clean", out), limit=limit)
    outcome, detail = bench.judge_refusal(stage, run, out)
    cases = [case(f"file-size limit {limit} B (RLIMIT_FSIZE)", outcome, detail)]
    outcome, detail = bench.rerun_and_compare(stage, out, "rerun with space")
    cases.append(case("rerun with space", outcome, detail))
    if all(c["outcome"] in (RECOVERED, REFUSED) for c in cases):
        bench.discard(out)
    return cases


def fault_params(bench: Bench, stage: str) -> list[Case]:
    spec = STAGE[stage]
    base = params("clean")
    broken_yaml = yaml.safe_dump(base, sort_keys=False).replace(f"{spec.section}:\n", f"{spec.section}: [\n", 1)
    wrong_type = copy.deepcopy(base)
    wrong_type[spec.section][spec.int_key] = "many"
    unknown = copy.deepcopy(base)
    unknown[spec.section]["no_such_setting"] = 1
    cases = []
    for name, text in (
        ("broken YAML", broken_yaml),
        (f"{spec.section}.{spec.int_key}: many", yaml.safe_dump(wrong_type)),
        (f"unknown key {spec.section}.no_such_setting", yaml.safe_dump(unknown)),
    ):
        (bench.work / f"malformed-{stage}.yaml").write_text(text)
        out = bench.folder(stage, "params")
        argv = spec.argv("clean", out)
        argv[argv.index("clean.yaml")] = f"malformed-{stage}.yaml"
        run = bench.run(argv)
        outcome, detail = bench.judge_refusal(stage, run, out)
        if outcome == REFUSED and (bench.work / out).exists() and _has_files(bench.work / out):
            outcome, detail = "FAILED: wrote output", detail
        cases.append(case(name, outcome, detail))
        bench.discard(out)
    return cases


def fault_pickle(bench: Bench, stage: str) -> list[Case]:
    marker = bench.work / f"{MARKER}-{stage}"
    marker.unlink(missing_ok=True)
    evil = make_evil_files(bench.work, stage)
    cases: list[Case] = []

    def code_ran(result: tuple[str, str]) -> tuple[str, str]:
        return ("FAILED: code ran", result[1]) if marker.exists() else result

    if stage in CHECKPOINT:
        marker_glob, files = CHECKPOINT[stage]
        name = "checkpoint.pt" if stage == "segment" else "optimizer.pt"
        for forged in (False, True):
            out = bench.folder(stage, "pickle")
            if not bench.kill_at_checkpoint(stage, out, marker_glob):
                cases.append(case(f"pickled {name}", "FAILED: no checkpoint seen", marker_glob))
                continue
            folder = sorted((bench.work / out).glob(files))[-1]
            shutil.copy(bench.work / evil / name, folder / name)
            if forged:
                from dldc.io import write_checksum, write_checksums

                if stage == "segment":
                    write_checksum(folder / name)
                else:
                    write_checksums(folder, ["trainable.safetensors", "optimizer.pt", "state.json"])
                run = bench.run(STAGE[stage].argv("clean", out))
                result = code_ran(bench.judge_refusal(stage, run, out))
                cases.append(case(f"pickled {name}, checksum forged", *result))
            else:
                result = code_ran(bench.rerun_and_compare(stage, out, f"pickled {name} (checksum mismatch)"))
                cases.append(case(f"pickled {name}", *result))
            if result[0] in (RECOVERED, REFUSED):
                bench.discard(out)
        return cases
    if stage in ("score", "caption"):
        out = bench.folder(stage, "pickle")
        key = "score.scorers" if stage == "score" else "caption.scorers"
        spec = f"open_clip:{evil}/tiny-clip.json:{evil}/open_clip.pt"
        run = bench.run(STAGE[stage].argv("clean", out, (f"{key}=[{spec}]",)))
        cases.append(case("pickled open_clip checkpoint as a scorer", *code_ran(bench.judge_refusal(stage, run, out))))
        bench.discard(out)
        return cases
    if stage == "train-scorer":
        out = bench.folder(stage, "pickle")
        run = bench.run(STAGE[stage].argv("clean", out, (f"indomain.manifest={evil}/manifest.parquet",)))
        cases.append(case("pickle as the manifest", *code_ran(bench.judge_refusal(stage, run, out))))
        bench.discard(out)
        return cases
    if stage == "ingest":
        return [case("pickle as an image (in the hostile dataset)", *code_ran(bench.hostile_result("pickle-image")))]
    return cases


def fault_manifest(bench: Bench, stage: str) -> list[Case]:
    cases = []
    if stage == "ingest":
        for name, damage in (
            ("empty annotation file", lambda p: p.write_bytes(b"")),
            ("truncated annotation file", truncate),
            (
                "annotation file with a byte that is not UTF-8",
                lambda p: p.write_bytes(p.read_bytes().replace(b"an empty desert", b"an \xff desert", 1)),
            ),
        ):
            dataset = bench.work / "inputs/broken-ingest"
            shutil.rmtree(dataset, ignore_errors=True)
            shutil.copytree(bench.work / "inputs/synthrs", dataset)
            damage(dataset / "dataset_synthrs.json")
            out = bench.folder(stage, "manifest")
            run = bench.run(STAGE[stage].argv("clean", out, ("ingest.root=inputs/broken-ingest",)))
            cases.append(case(name, *bench.judge_refusal(stage, run, out)))
            bench.discard(out)
        return cases
    if stage == "segment":
        dataset = bench.work / "inputs/broken-segment"
        for name, prepare in (("empty dataset folder", _empty_dataset), ("truncated mask file", _truncated_mask)):
            shutil.rmtree(dataset, ignore_errors=True)
            shutil.copytree(bench.work / "inputs/synthrs", dataset)
            prepare(dataset)
            out = bench.folder(stage, "manifest")
            run = bench.run(STAGE[stage].argv("clean", out, ("segment.root=inputs/broken-segment",)))
            if name.startswith("truncated"):  # one bad mask among good ones: that image is rejected, the rest used
                result = _segment_nothing_lost(bench, run, out, dataset)
            else:
                result = bench.judge_refusal(stage, run, out)
            cases.append(case(name, *result))
            bench.discard(out)
        return cases
    from dldc.data.manifest import read_manifest, write_manifest

    source = bench.work / "clean/ingest/manifest.parquet"
    if stage == "select-trial":
        source = bench.work / "clean/captions/manifest.parquet"
    _, meta = read_manifest(source)
    broken = bench.work / f"inputs/broken-manifest-{stage}"
    broken.mkdir(parents=True, exist_ok=True)
    empty = broken / "empty.parquet"
    write_manifest(empty, [], meta)
    cut = broken / "truncated.parquet"
    cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    for name, path in (("empty manifest", empty), ("truncated manifest", cut)):
        out = bench.folder(stage, "manifest")
        run = bench.run(
            STAGE[stage].argv("clean", out, (f"{STAGE[stage].manifest_key}={path.relative_to(bench.work)}",))
        )
        cases.append(case(name, *bench.judge_refusal(stage, run, out)))
        bench.discard(out)
    return cases


def _empty_dataset(dataset: Path) -> None:
    for folder in ("images", "masks"):
        shutil.rmtree(dataset / folder)
        (dataset / folder).mkdir()


def _truncated_mask(dataset: Path) -> None:
    mask = sorted((dataset / "masks").glob("*.png"))[0]
    truncate(mask)


def _segment_nothing_lost(bench: Bench, run: Run, out: str, dataset: Path) -> tuple[str, str]:
    import pandas as pd

    if run.rc != 0:
        return ("FAILED: crashed" if "Traceback" in run.output else REFUSED), tail(run.output)
    images = {p.stem for p in (dataset / "images").glob("*.png")}  # what the synthrs layout reads
    split = json.loads((bench.work / out / "split.json").read_text())  # tile ("images/<stem>") -> split
    used = {Path(tile).stem for tile in split}
    rejects = pd.read_parquet(bench.work / out / "rejects.parquet")
    rejected = {Path(str(image)).stem for image in rejects["image"]}
    lost = sorted(images - used - rejected)
    reasons = sorted(set(rejects.loc[~rejects["reason"].eq("layout_filter"), "reason"]))
    if lost:
        return "FAILED: images lost", f"not in split.json nor rejects.parquet: {lost[:5]}"
    return RECOVERED, f"completed; {len(used)} images used, rejected with reasons {reasons}; nothing lost"


# ------------------------------------------------------------------------------ the hostile chain


def run_hostile_chain(bench: Bench, stages: list[str]) -> dict[str, tuple[str, str]]:
    """Every stage on the hostile dataset, in order; returns {stage: (outcome, detail)}."""
    import pandas as pd

    results: dict[str, tuple[str, str]] = {}
    needed = sorted({d for s in stages if s != "segment" for d in (*DEPENDS[s], s)}, key=STAGES.index)
    for stage in needed:
        if any(results.get(d, (RECOVERED,))[0] != RECOVERED for d in DEPENDS[stage]):
            results[stage] = ("FAILED: an earlier stage failed", "")
            continue
        run = bench.reference(stage, "hostile")
        out = bench.work / "hostile" / REF_DIR[stage]
        if run.rc != 0:
            results[stage] = ("FAILED: crashed" if "Traceback" in run.output else "FAILED: refused", tail(run.output))
            continue
        if stage == "ingest":
            manifest, rejects = pd.read_parquet(out / "manifest.parquet"), pd.read_parquet(out / "rejects.parquet")
            total = input_pairs(bench.work / "inputs/hostile")
            reasons = rejects.groupby("reason").size().to_dict()
            kept_images = set(manifest["image"].map(lambda p: Path(p).name))
            modes = sorted(n for n in kept_images if "_90" in n)
            expected_rejects = {
                "too_large",
                "corrupt_image",
                "empty_file",
                "missing_file",
                "not_an_image",
                "undecodable_caption",
                "empty_caption",
            }
            long_kept = int((manifest["caption"].str.len() >= 10_000).sum())
            detail = (
                f"{len(manifest)} kept + {len(rejects)} rejected = {len(manifest) + len(rejects)} of {total} input "
                f"pairs; rejected {reasons}; image-mode variants kept: {modes}; 10,000-character captions "
                f"kept: {long_kept}"
            )
            ok = len(manifest) + len(rejects) == total and expected_rejects <= set(reasons) and len(modes) == 9
            results[stage] = (RECOVERED if ok else "FAILED: lost or misjudged pairs", detail)
            results["pickle-image"] = (
                (RECOVERED, "beach_9104.png (a pickle) rejected as not_an_image; never unpickled")
                if "not_an_image" in reasons and not (bench.work / f"{MARKER}-ingest").exists()
                else ("FAILED: pickle image", detail)
            )
            continue
        pairs = len(pd.read_parquet(bench.work / "hostile/ingest/manifest.parquet"))
        if stage == "score":
            scored = pd.read_parquet(out / "scores.parquet")
            truncated = int(scored["indomain_truncated"].sum())
            ok = len(scored) == pairs and scored["pair_id"].is_unique
            detail = f"{len(scored)} of {pairs} pairs scored ({truncated} captions truncated to the context)"
        elif stage == "caption":
            kept = pd.read_parquet(out / "manifest.parquet")
            ok = len(kept) == pairs
            detail = f"{len(kept)} of {pairs} pairs in the output manifest"
        elif stage == "select-trial":
            report = json.loads((out / "trial.json").read_text())
            captions = len(pd.read_parquet(bench.work / "hostile/captions/manifest.parquet"))
            ok = report["kept_pairs"] + report["dropped_pairs"] == captions
            detail = f"{report['kept_pairs']} kept + {report['dropped_pairs']} dropped of {captions} pairs"
        elif stage == "finetune":
            report = json.loads((out / "finetune.json").read_text())
            ok, detail = True, f"trained on {report['data']['pairs']} pairs ({report['data']['images']} images)"
        else:
            ok, detail = True, "completed"
        results[stage] = (RECOVERED if ok else "FAILED: pairs lost", detail)
    if "segment" in stages:
        run = bench.reference("segment", "hostile")
        results["segment"] = _segment_nothing_lost(bench, run, "hostile/segment", bench.work / "inputs/hostile")
    return results


def fault_inputs(bench: Bench, stage: str) -> list[Case]:
    outcome, detail = bench.hostile_result(stage)
    cases = [
        case("hostile dataset (bomb, image modes, damaged files, bad and 10,000-character captions)", outcome, detail)
    ]
    if stage == "ingest":
        cases.append(case("caption with undecodable bytes as JSON escapes (\\udcff)", *_surrogate_caption(bench)))
    return cases


def _surrogate_caption(bench: Bench) -> tuple[str, str]:
    """A Karpathy file whose caption holds escaped lone surrogates (bytes that were not UTF-8, escaped)."""
    import pandas as pd

    dataset = bench.work / "inputs/surrogates"
    shutil.rmtree(dataset, ignore_errors=True)
    shutil.copytree(bench.work / "inputs/synthrs", dataset)
    document = json.loads((dataset / "dataset_synthrs.json").read_text())
    document["images"][0]["sentences"][0]["raw"] = "sand \udcff\udcfe dunes"
    (dataset / "dataset_synthrs.json").write_text(json.dumps(document))  # ensure_ascii: written as \\udcff
    out = bench.folder("ingest", "inputs")
    run = bench.run(STAGE["ingest"].argv("clean", out, ("ingest.root=inputs/surrogates",)))
    if run.rc != 0:
        outcome = "FAILED: crashed" if "Traceback" in run.output else "FAILED: refused the dataset"
        return outcome, run.error_line
    manifest = pd.read_parquet(bench.work / out / "manifest.parquet")
    rejects = pd.read_parquet(bench.work / out / "rejects.parquet")
    total = input_pairs(dataset)
    reasons = rejects.groupby("reason").size().to_dict()
    bench.discard(out)
    if len(manifest) + len(rejects) == total and reasons.get("undecodable_caption") == 1:
        return RECOVERED, f"{len(manifest)} kept + {len(rejects)} rejected of {total}: {reasons}"
    return "FAILED: lost or misjudged pairs", f"{len(manifest)} kept, rejected {reasons}, of {total}"


FAULT_FUNCTIONS = {
    "sigkill": fault_sigkill,
    "damaged": fault_damaged,
    "lock": fault_lock,
    "enospc": fault_enospc,
    "params": fault_params,
    "pickle": fault_pickle,
    "inputs": fault_inputs,
    "manifest": fault_manifest,
}


# ------------------------------------------------------------------------------------------ main


def cell(cases: list[Case]) -> str:
    """One table cell: the outcomes of a fault's cases (e.g. ``recovered (10/10)``)."""
    outcomes = [c["outcome"] for c in cases]
    if not outcomes:
        return "n/a"
    failed = [o for o in outcomes if o not in (RECOVERED, REFUSED)]
    if failed:
        return f"**{failed[0]}** ({len(failed)}/{len(outcomes)})"
    parts = [
        f"{label} ({outcomes.count(label)}/{len(outcomes)})" for label in (RECOVERED, REFUSED) if label in outcomes
    ]
    return " + ".join(parts)


def table(results: dict[str, dict[str, list[Case]]], faults: list[str]) -> str:
    lines = ["| stage | " + " | ".join(faults) + " |", "|---" * (len(faults) + 1) + "|"]
    for stage, by_fault in results.items():
        lines.append(f"| {stage} | " + " | ".join(cell(by_fault.get(f, [])) for f in faults) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="work folder (default: a new temporary one, removed at the end)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {','.join(STAGES)}")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {','.join(FAULTS)}")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILL points per stage")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill points")
    parser.add_argument("--keep", action="store_true", help="keep every run folder (failed ones are always kept)")
    parser.add_argument("--write", action="store_true", help="write results/faults.json even for a partial run")
    parser.add_argument(
        "--jobs", type=int, default=2, help="fault cells run at once (each child uses one thread; default: 2 cores)"
    )
    args = parser.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(stages) - set(STAGES)) + sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown stages or faults: {unknown}")
    temporary = args.work is None
    work = (args.work or Path(tempfile.mkdtemp(prefix="dldc-faults-"))).resolve()
    bench = Bench(work, args.seed, args.kills, args.keep)
    started = time.perf_counter()
    bench.build_inputs()
    needed = sorted({d for s in stages for d in (*DEPENDS[s], s)}, key=STAGES.index)
    for stage in needed:
        print(f"reference: {stage}", flush=True)
        bench.reference(stage)
        print(f"  {bench.timing[stage]}", flush=True)
    if "inputs" in faults or ("pickle" in faults and "ingest" in stages):
        print("hostile dataset: every stage in turn", flush=True)
        bench.hostile = run_hostile_chain(bench, list(STAGES))

    def one(stage: str, fault: str) -> list[Case]:
        mark = time.perf_counter()
        cases = FAULT_FUNCTIONS[fault](bench, stage)
        lines = [f"{stage} x {fault}: {cell(cases)} [{time.perf_counter() - mark:.0f} s]"]
        lines += [
            f"    {c['case']}: {c['outcome']}: {c['detail']}" for c in cases if c["outcome"] not in (RECOVERED, REFUSED)
        ]
        print("\n".join(lines), flush=True)
        return cases

    # The long cells (SIGKILL: one run and one resume per kill point) first, then the rest.
    cells = sorted(((s, f) for s in stages for f in faults), key=lambda sf: (sf[1] != "sigkill", STAGES.index(sf[0])))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {(s, f): pool.submit(one, s, f) for s, f in cells}
    results = {s: {f: futures[(s, f)].result() for f in faults} for s in stages}
    seconds = time.perf_counter() - started
    markdown = table(results, faults)
    ok = all(c["outcome"] in (RECOVERED, REFUSED) for by in results.values() for cs in by.values() for c in cs)
    if set(stages) == set(STAGES) and set(faults) == set(FAULTS) or args.write:
        write_result(
            "faults",
            {
                "command": " ".join(["python", "benchmarks/faults.py", *sys.argv[1:]]),
                "seconds": round(seconds, 1),
                "all_recovered_or_refused": ok,
                "kills_per_stage": args.kills,
                "jobs": args.jobs,
                "seed": args.seed,
                "enospc_method": "RLIMIT_FSIZE at half the largest output file, SIGXFSZ ignored: EFBIG",
                "stages": stages,
                "faults": faults,
                "reference_runs": bench.timing,
                "results": results,
                "table": markdown,
            },
        )
    print()
    print(markdown)
    print(
        f"\n{'every cell recovered or refused with a clear error' if ok else 'SOME CELLS FAILED'}; "
        f"{seconds / 60:.1f} min; work folder {work}"
    )
    if temporary and ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
