"""A LoRA adapter as a loadable MLflow model: which base it needs, and the model folder that carries both.

Which base (:func:`adapter_base`)
    ``promote.base`` when set, else the base the adapter's ``finetune.json`` names (with its
    ``config.revision``), else the evaluation's base. A pipeline folder that exists here is
    *bundled*: shipped inside the model, so the model loads on a machine that never saw that
    folder (tag ``bundled:<folder name>``). Anything else must be a hub id, kept as a pinned
    reference (tag ``<id>@<revision>``). A pod-local path that does not exist here is an error,
    never a tag.

The model folder (:func:`save_adapter_model`)
    * hub base: the ``mlflow.diffusers`` flavor (MLflow logs LoRA adapters with the base as a
      reference); its ``base_model_revision`` is the revision the adapter was trained on, not
      the hub's newest commit that MLflow looks up when it saves.
    * bundled base: a pyfunc model from code (:mod:`dldc.registry.lora_pyfunc`) with the base
      and the adapter as its artifacts.

    Both take a list of prompts (or a one-column DataFrame of them) and return one PNG
    (``bytes``) per prompt, with the params of :func:`generation_signature`. Saving runs nothing:
    the signature is given (MLflow would otherwise infer it by predicting on the input example)
    and so are the pip requirements (MLflow would otherwise load the model to see what it imports).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PYFUNC_CODE = Path(__file__).with_name("lora_pyfunc.py")
BUNDLED_PREFIX = "bundled:"
INPUT_EXAMPLE_PROMPTS = ["an aerial image of a river between farmland"]


@dataclass(frozen=True)
class BaseReference:
    """The base model an adapter applies to.

    Attributes:
        location: the hub id, or the folder to bundle.
        revision: the hub revision (``None``: not pinned by the adapter; always ``None`` when bundled).
        bundled: whether the base folder ships inside the registered model.
    """

    location: str
    revision: str | None
    bundled: bool

    @property
    def tag(self) -> str:
        """What the ``base_model`` version tag says: ``bundled:<name>``, ``<id>@<revision>`` or ``<id>``."""
        if self.bundled:
            return f"{BUNDLED_PREFIX}{Path(self.location).resolve().name}"
        return f"{self.location}@{self.revision}" if self.revision else self.location


def _is_pipeline_folder(location: str) -> bool:
    return (Path(location) / "model_index.json").is_file()


def _looks_like_hub_id(location: str) -> bool:
    # "org/name" or "name"; anything with more parts, absolute or explicitly relative is a path.
    return (
        bool(location)
        and not Path(location).is_absolute()
        and not location.startswith(".")
        and location.count("/") <= 1
    )


def recorded_base(folder: str | Path) -> tuple[str | None, str | None]:
    """``(base, revision)`` as the adapter folder's ``finetune.json`` records them (``None`` when absent)."""
    path = Path(folder) / "finetune.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    config = report.get("config") if isinstance(report.get("config"), dict) else {}
    base = report.get("base") or config.get("base")
    revision = report.get("revision") or config.get("revision")  # the resolved revision, where recorded
    return (base if isinstance(base, str) else None), (revision if isinstance(revision, str) else None)


def parse_base(text: str) -> tuple[str, str | None]:
    """``"id@revision"`` → ``(id, revision)``; a folder or a bare id → ``(text, None)``.

    Example:
        >>> parse_base("stable-diffusion-v1-5/stable-diffusion-v1-5@451f4fe")
        ('stable-diffusion-v1-5/stable-diffusion-v1-5', '451f4fe')
        >>> parse_base("data/base/model")
        ('data/base/model', None)
    """
    location, _, revision = text.partition("@")
    if revision and _looks_like_hub_id(location) and not Path(text).exists():
        return location, revision
    return text, None


def adapter_base(folder: str | Path, configured: str | None = None, evaluated: str | None = None) -> BaseReference:
    """The base of an adapter (see the module docstring for the order).

    Args:
        folder: the adapter folder.
        configured: ``promote.base`` (``id@revision``, an id or a folder), or ``None``.
        evaluated: the base the evaluation generated with (its arm's ``model``), or ``None``.

    Raises:
        FileNotFoundError: no candidate is a pipeline folder here or a hub id.
    """
    from dldc.t2i.models import resolve_base

    recorded, recorded_revision = recorded_base(folder)
    candidates = []
    if configured:
        named = resolve_base(configured)  # a folder standing for a hub id (`dldc build-base --from`)
        candidates.append(named if named[0] != configured else parse_base(configured))
    if recorded:
        candidates.append((recorded, recorded_revision))
    if evaluated:
        candidates.append(parse_base(evaluated))
    for location, _ in candidates:
        if _is_pipeline_folder(location):
            return BaseReference(str(location), None, bundled=True)
    for location, revision in candidates:
        if _looks_like_hub_id(location) and not Path(location).exists():
            return BaseReference(location, revision, bundled=False)
    raise FileNotFoundError(
        f"cannot tell which base adapter {folder} needs: {[c[0] for c in candidates] or 'none recorded'} is neither "
        "a pipeline folder on this machine nor a hub id. Give the stage the base folder, or set promote.base "
        "(a hub id, `id@revision`, or a save_pretrained folder)"
    )


def generation_signature(bundled: bool) -> Any:
    """Prompts in, PNG bytes out; the generation settings as params (``seed`` only where the model honours it)."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import ColSpec

    params = [
        ParamSpec(name="num_inference_steps", dtype=DataType.integer, default=30),
        ParamSpec(name="guidance_scale", dtype=DataType.double, default=7.5),
        # 0: the base's native size (bundled); mlflow.diffusers' own default is 512 px.
        ParamSpec(name="height", dtype=DataType.integer, default=0 if bundled else 512),
        ParamSpec(name="width", dtype=DataType.integer, default=0 if bundled else 512),
        ParamSpec(name="negative_prompt", dtype=DataType.string, default=""),
    ]
    if bundled:
        params.append(ParamSpec(name="seed", dtype=DataType.integer, default=0))
    return ModelSignature(
        # One unnamed string column: predict(["a river", ...]) passes schema enforcement as is (a named
        # column would need a DataFrame), and a one-column DataFrame still does.
        inputs=Schema([ColSpec(type=DataType.string)]),
        outputs=Schema([ColSpec(type=DataType.binary, name="image")]),
        params=ParamSchema(params),
    )


def _pip_requirements() -> list[str]:
    import mlflow
    import PIL

    return [
        *mlflow.diffusers.get_default_pip_requirements(),
        f"pillow=={PIL.__version__}",
        f"mlflow=={mlflow.__version__}",
    ]


def save_adapter_model(adapter: str | Path, base: BaseReference, out: str | Path, metadata: dict[str, Any]) -> None:
    """Write the MLflow model folder of an adapter (see the module docstring); runs no model.

    Args:
        adapter: a folder holding only the adapter's files (weights and their JSON).
        base: :func:`adapter_base`'s answer.
        out: the model folder to create (must not exist).
        metadata: recorded in the ``MLmodel`` file (digest, base tag).
    """
    import mlflow
    from mlflow.models import Model

    example = list(INPUT_EXAMPLE_PROMPTS)
    signature = generation_signature(base.bundled)
    if base.bundled:
        mlflow.pyfunc.save_model(
            path=str(out),
            python_model=str(PYFUNC_CODE),
            artifacts={"base": str(base.location), "adapter": str(adapter)},
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(),
            metadata=metadata,
        )
        return
    mlflow.diffusers.save_model(
        adapter_path=str(adapter),
        path=str(out),
        base_model=base.location,
        signature=signature,
        input_example=example,
        pip_requirements=_pip_requirements(),
        metadata=metadata,
    )
    if base.revision:
        # The revision the adapter was trained on, not the newest commit MLflow just looked up.
        model_file = Path(out) / "MLmodel"
        model = Model.load(str(model_file))
        model.flavors["diffusers"]["base_model_revision"] = base.revision
        model.save(str(model_file))


def stage_adapter(files: list[Path], folder: str | Path) -> Path:
    """Copy an adapter's registered files into ``folder`` (created): only those, no checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, folder / path.name)
    return folder
