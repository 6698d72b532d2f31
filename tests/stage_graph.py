"""The stage graph as dvc.yaml and the compiled Kubeflow pipeline each define it.

Tests compare the two (and check runs against them) instead of keeping a third copy. A stage is
named by its DVC name; ``foreach`` instances (``finetune@raw``) and KFP's numbered copies
(``finetune-2``) belong to their stage.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

# How the pipeline fans `dldc score` out (plan the parts, score each, gather): one DVC stage.
KFP_STAGE = {"score_part": "score", "gather_scores": "score"}
# Tasks only the pipeline has: planning the fan-out, and the optional ONNX export of the scorer
# (`export_precision`, default "none": the parts then score with the torch model, as DVC does).
KFP_ONLY = {"plan_parts", "export_scorer"}


def dvc_stages(dvc_file: Path = REPO / "dvc.yaml", params: dict[str, Any] | None = None) -> dict[str, dict]:
    """``{instance name: stage body}``: ``${key}`` from ``params`` (default params.yaml), ``foreach`` expanded."""
    if params is None:
        params = yaml.safe_load((dvc_file.parent / "params.yaml").read_text())
    stages = {}
    text = re.sub(r"\$\{(?!item|key)([\w.]+)\}", lambda m: str(_param(params, m.group(1))), dvc_file.read_text())
    for name, body in yaml.safe_load(text)["stages"].items():
        if "foreach" not in body:
            stages[name] = body
            continue
        items = body["foreach"]
        if isinstance(items, str):  # ${select.grid}, substituted above as its text
            items = yaml.safe_load(items)
        pairs = items.items() if isinstance(items, dict) else ((item, item) for item in items)
        for key, item in pairs:
            text = yaml.safe_dump(body["do"]).replace("${key}", str(key)).replace("${item}", str(item))
            stages[f"{name}@{key}"] = yaml.safe_load(text)
    return stages


def dvc_edges(stages: dict[str, dict]) -> set[tuple[str, str]]:
    """``(producer stage, consumer stage)`` pairs: a consumer's dep is (inside) a producer's out."""

    def paths(entries: list) -> list[str]:
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]

    outs = {name: paths(body.get("outs")) + paths(body.get("metrics")) for name, body in stages.items()}
    edges = set()
    for consumer, body in stages.items():
        for dep in paths(body.get("deps")):
            for producer, produced in outs.items():
                if any(dep == out or out.startswith(dep + "/") or dep.startswith(out + "/") for out in produced):
                    edges.add((stage_of(producer), stage_of(consumer)))
    return {(a, b) for a, b in edges if a != b}


def kfp_tasks(spec: dict[str, Any]) -> dict[str, list[str]]:
    """``{task: tasks it runs after}`` of a compiled pipeline, loops flattened into their tasks."""
    loops = {
        name: list(spec["components"][task["componentRef"]["name"]]["dag"]["tasks"])
        for name, task in spec["root"]["dag"]["tasks"].items()
        if "parameterIterator" in task or "artifactIterator" in task
    }
    tasks = {}
    for name, task in spec["root"]["dag"]["tasks"].items():
        after = [inner for dep in task.get("dependentTasks", []) for inner in loops.get(dep, [dep])]
        for inner in loops.get(name, [name]):
            tasks[inner] = after
    return tasks


def kfp_edges(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """``(producer stage, consumer stage)`` pairs of the compiled pipeline, pipeline-only tasks left out."""
    edges = set()
    for task, after in kfp_tasks(spec).items():
        for dep in after:
            a, b = stage_of(dep), stage_of(task)
            if a != b and a not in KFP_ONLY and b not in KFP_ONLY:
                edges.add((a, b))
    return edges


def stage_of(name: str) -> str:
    """The stage of a DVC instance (``finetune@raw``) or a KFP task (``finetune-2``, ``score-part``)."""
    base = name.split("@")[0].replace("-", "_")
    head, _, tail = base.rpartition("_")
    if head and tail.isdigit():
        base = head
    return KFP_STAGE.get(base, base)


def _param(params: dict[str, Any], dotted: str) -> Any:
    value: Any = params
    for key in dotted.split("."):
        value = value[key]
    return value
