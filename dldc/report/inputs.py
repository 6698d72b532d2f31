"""What the cleaning report reads: the stage outputs it needs, and the optional ones it shows when present.

Required: the manifest ``dldc select`` ranked, its scores and the selection folder. Optional (each a
folder; ``None`` = off, a path that does not exist = left out and said so on the page): the
caption stage (EGL before/after), ingest (rejects by reason), generations (sample grids) and the
evaluation (metric tables). Every file is checked here, so the renderer meets only well-formed
tables and a problem stops the run with a message naming the file.

Example:
    >>> describe_input("captions", None)
    InputStatus(name='captions', path=None, state='off', detail='turned off (null)')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dldc.config import ReportConfig
from dldc.data.manifest import ManifestMeta, dataset_root, ids_in, read_manifest_meta
from dldc.io import file_sha256
from dldc.select.ranking import load_ranked

SELECTION_FILE = "selection.json"  # dldc.select.selection's names; read, not imported, to keep this light
DROPPED_FILE = "dropped.parquet"
CAPTIONS_FILE = "captions.parquet"
CAPTION_REPORT = "caption.json"
REJECTS_FILE = "rejects.parquet"
INGEST_REPORT = "ingest.json"
RESULTS_FILE = "results.json"
GENERATIONS_FILE = "generations.parquet"

CAPTION_COLUMNS = ("pair_id", "scene", "round", "backend", "model", "caption", "status", "fused", "selected")
REJECT_COLUMNS = ("pair_id", "image", "caption", "scene", "reason", "detail")
GENERATION_COLUMNS = ("gen_id", "pair_id", "image_id", "scene", "prompt", "seed", "path", "arm")


@dataclass(frozen=True)
class InputStatus:
    """One input of the report: where it was looked for and whether it was used (``used``/``absent``/``off``)."""

    name: str
    path: str | None
    state: str
    detail: str = ""


@dataclass
class ReportInputs:
    """Everything the report shows, read and checked.

    Attributes:
        manifest: path of the ranked manifest; ``meta`` its metadata; ``root`` its dataset root.
        ranked: the manifest joined with its scores, ranked within scene (:func:`dldc.select.ranking.load_ranked`)
            with ``dropped`` (bool) added from ``dropped.parquet``.
        selection: ``selection.json``.
        captions, caption_report: the caption stage's lineage table and ``caption.json`` (or ``None``).
        rejects, ingest_report: ingest's ``rejects.parquet`` and ``ingest.json`` (or ``None``).
        generations, generations_dir: ``generations.parquet`` and its folder (or ``None``).
        evaluation: ``results.json`` of ``dldc evaluate`` (or ``None``).
        statuses: one :class:`InputStatus` per input, in page order.
    """

    manifest: Path
    meta: ManifestMeta
    root: Path
    ranked: pd.DataFrame
    selection: dict[str, Any]
    captions: pd.DataFrame | None = None
    caption_report: dict[str, Any] | None = None
    rejects: pd.DataFrame | None = None
    ingest_report: dict[str, Any] | None = None
    generations: pd.DataFrame | None = None
    generations_dir: Path | None = None
    evaluation: dict[str, Any] | None = None
    statuses: list[InputStatus] = field(default_factory=list)


def describe_input(name: str, path: str | None) -> InputStatus:
    """Whether an optional input folder is turned off, absent or there to read."""
    if path is None:
        return InputStatus(name, None, "off", "turned off (null)")
    if not Path(path).is_dir():
        return InputStatus(name, path, "absent", "not found: its stage has not run (or set another folder)")
    return InputStatus(name, path, "used")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path} cannot be read as JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_table(path: Path, columns: tuple[str, ...], stage: str) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {path.parent} a `{stage}` output folder?")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable Parquet table (truncated or damaged?): {err}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; is it written by `{stage}`?")
    return frame


def _read_selection(folder: Path, manifest: Path, scores: Path) -> tuple[dict[str, Any], pd.Series]:
    if not (folder / SELECTION_FILE).is_file():
        raise FileNotFoundError(f"{folder / SELECTION_FILE} not found; run `dldc select` first (or pass --selection)")
    selection = _read_json(folder / SELECTION_FILE)
    for key in ("mode", "ratios", "global_ratio", "splits"):
        if key not in selection:
            raise ValueError(f"{folder / SELECTION_FILE} has no {key!r}; is it written by `dldc select`?")
    # The ranking is recomputed from the manifest and scores: they must be the ones select ranked.
    recorded = selection.get("inputs", {})
    for name, path in (("manifest", manifest), ("scores", scores)):
        digest = recorded.get(f"{name}_sha256")
        if digest and digest != file_sha256(path):
            raise ValueError(
                f"{path} is not the {name} {folder / SELECTION_FILE} was made from (sha256 differs from "
                f"{digest[:12]}…); pass the {name} `dldc select` read ({recorded.get(name)})"
            )
    dropped = _read_table(folder / DROPPED_FILE, ("pair_id",), "dldc select")
    return selection, dropped["pair_id"]


def read_inputs(cfg: ReportConfig) -> ReportInputs:
    """Read and check every input of ``cfg`` (see the module docstring).

    Raises:
        FileNotFoundError: a required input, or a file of an optional folder that exists, is missing.
        ValueError: an input is unreadable, lacks columns, or belongs to another run.
    """
    manifest, scores, selection_dir = Path(cfg.manifest), Path(cfg.scores), Path(cfg.selection)
    if not manifest.is_file():  # the manifest's error before the selection's
        raise FileNotFoundError(2, "No such manifest", str(manifest))
    selection, dropped = _read_selection(selection_dir, manifest, scores)
    ranked = load_ranked(scores, manifest, list(selection["splits"]))  # reads the rows once, checks the schema
    meta = read_manifest_meta(manifest)
    unknown = dropped[~ids_in(dropped, ranked["pair_id"])]
    if len(unknown):
        raise ValueError(
            f"{selection_dir / DROPPED_FILE} names {len(unknown)} pairs missing from {manifest} "
            f"(e.g. {sorted(unknown.tolist())[:3]}); pass the manifest `dldc select` read"
        )
    ranked["dropped"] = ids_in(ranked["pair_id"], dropped)
    inputs = ReportInputs(manifest, meta, dataset_root(manifest, meta), ranked, selection)
    inputs.statuses = [
        InputStatus("manifest", str(manifest), "used"),
        InputStatus("scores", str(scores), "used"),
        InputStatus("selection", str(selection_dir), "used"),
    ]
    for name, path in (("captions", cfg.captions), ("ingest", cfg.ingest), ("generations", cfg.generations),
                       ("evaluation", cfg.evaluation)):  # fmt: skip
        status = describe_input(name, path)
        inputs.statuses.append(status)
        if status.state == "used":
            _read_optional(inputs, name, Path(str(path)))
    return inputs


def _read_optional(inputs: ReportInputs, name: str, folder: Path) -> None:
    if name == "captions":
        inputs.captions = _read_table(folder / CAPTIONS_FILE, CAPTION_COLUMNS, "dldc caption")
        if (folder / CAPTION_REPORT).is_file():
            inputs.caption_report = _read_json(folder / CAPTION_REPORT)
    elif name == "ingest":
        inputs.rejects = _read_table(folder / REJECTS_FILE, REJECT_COLUMNS, "dldc ingest")
        if (folder / INGEST_REPORT).is_file():
            inputs.ingest_report = _read_json(folder / INGEST_REPORT)
    elif name == "generations":
        inputs.generations = _read_table(folder / GENERATIONS_FILE, GENERATION_COLUMNS, "dldc generate")
        inputs.generations_dir = folder
    elif name == "evaluation":
        if not (folder / RESULTS_FILE).is_file():
            raise FileNotFoundError(f"{folder / RESULTS_FILE} not found; is {folder} a `dldc evaluate` output folder?")
        results = _read_json(folder / RESULTS_FILE)
        if not isinstance(results.get("metrics"), list) or "protocol" not in results:
            raise ValueError(f"{folder / RESULTS_FILE} has no metrics/protocol; is it written by `dldc evaluate`?")
        inputs.evaluation = results
