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
KFP_ONLY = {"plan_parts", "export_scorer", "name_base"}


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


def kfp_tasks(spec: dict[str, Any]) -> dict[str, set[str]]:
    """``{task: tasks whose outputs it reads}`` of a compiled pipeline, for every task that runs a container.

    Inputs are followed through loops, conditions and ``dsl.OneOf`` / ``dsl.Collected`` (a group's
    output resolves to the tasks inside it that produce it), so an edge is a real data dependency;
    ordering-only ``.after()`` edges are left out.
    """
    components = spec["components"]
    tasks: dict[str, set[str]] = {}

    def produced_by(dag: dict, task: str, key: str, kind: str) -> set[str]:
        inner = components[dag["tasks"][task]["componentRef"]["name"]].get("dag")
        if inner is None:
            return {task}
        outputs = inner.get("outputs", {})
        if kind == "artifact":
            selectors = outputs["artifacts"][key]["artifactSelectors"]
            pairs = [(s["producerSubtask"], s["outputArtifactKey"]) for s in selectors]
        else:
            selector = outputs["parameters"][key]
            if "valueFromOneof" in selector:
                pairs = [(s["producerSubtask"], s["outputParameterKey"])
                         for s in selector["valueFromOneof"]["parameterSelectors"]]  # fmt: skip
            else:
                pairs = [(selector["valueFromParameter"]["producerSubtask"],
                          selector["valueFromParameter"]["outputParameterKey"])]  # fmt: skip
        return set().union(*(produced_by(inner, sub, out, kind) for sub, out in pairs))

    def walk(dag: dict, scope: dict[str, set[str]]) -> None:
        for name, task in dag["tasks"].items():
            sources = {}
            for field, kind in (("artifacts", "artifact"), ("parameters", "parameter")):
                for input_name, given in task.get("inputs", {}).get(field, {}).items():
                    if "taskOutputArtifact" in given:
                        ref = given["taskOutputArtifact"]
                        sources[input_name] = produced_by(dag, ref["producerTask"], ref["outputArtifactKey"], kind)
                    elif "taskOutputParameter" in given:
                        ref = given["taskOutputParameter"]
                        sources[input_name] = produced_by(dag, ref["producerTask"], ref["outputParameterKey"], kind)
                    else:
                        channel = given.get("componentInputArtifact") or given.get("componentInputParameter")
                        sources[input_name] = scope.get(channel, set())
            inner = components[task["componentRef"]["name"]].get("dag")
            if inner is None:
                tasks[name] = set().union(*sources.values())
            else:
                walk(inner, sources)

    walk(spec["root"]["dag"], {})
    return tasks


def kfp_task_specs(spec: dict[str, Any]) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """``{task: (its spec, the conditions it runs under)}`` for every task, groups included, at any depth."""
    found: dict[str, tuple[dict[str, Any], list[str]]] = {}

    def walk(dag: dict, conditions: list[str]) -> None:
        for name, task in dag["tasks"].items():
            condition = task.get("triggerPolicy", {}).get("condition")
            inside = [*conditions, condition] if condition else conditions
            found[name] = (task, inside)
            inner = spec["components"][task["componentRef"]["name"]].get("dag")
            if inner is not None:
                walk(inner, inside)

    walk(spec["root"]["dag"], [])
    return found


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
