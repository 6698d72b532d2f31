"""ONNX Runtime execution providers for exported scorers: TensorRT, then CUDA, then CPU.

:func:`choose_providers` picks the providers (and says why), :func:`make_session` opens one graph
with them, and :func:`ort_trt_options` gives ONNX Runtime's ``TensorrtExecutionProvider`` its
dynamic-batch optimisation profiles and an engine + timing cache on disk, keyed by GPU model and
TensorRT version (an engine is only valid on the GPU model and TensorRT version that built it):
``<root>/<gpu model>-trt<version>/`` with ``root`` = ``$DLDC_TRT_CACHE`` or ``~/.cache/dldc/tensorrt``.
Building engines with the TensorRT API directly belongs to the export package, which writes
exports (this package only runs them).

int8 graphs (dynamic quantization) run on the CPU provider: TensorRT only runs QDQ int8 graphs
built with calibration, and CUDA has no kernels for the dynamic-quantization ops.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = PREFERENCE[:2]
# Set to skip the TensorRT provider (e.g. when engine builds take too long for a quick run).
DISABLE_TENSORRT_ENV = "DLDC_DISABLE_TENSORRT"
CACHE_ENV = "DLDC_TRT_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "dldc" / "tensorrt"
WORKSPACE_BYTES = 4 << 30


def choose_providers(
    device: str, precision: str, available: list[str] | None = None, profiles: dict[str, Any] | None = None
) -> tuple[list[Any], str]:
    """The execution providers to ask ONNX Runtime for, best first, and why.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: the graph's precision (int8 graphs run on the CPU provider).
        available: ``onnxruntime.get_available_providers()`` (tests pass their own).
        profiles: TensorRT optimisation-profile shapes (:func:`ort_trt_options`).

    Returns:
        ``(providers, note)``: the list for ``InferenceSession(providers=...)`` and a sentence
        explaining the choice.

    Raises:
        ValueError: ``cuda`` asked for but this onnxruntime has no GPU provider.

    Example:
        >>> choose_providers("auto", "fp32", available=["CPUExecutionProvider"])[0]
        ['CPUExecutionProvider']
    """
    import onnxruntime as ort

    available = list(ort.get_available_providers() if available is None else available)
    gpu = [p for p in GPU_PROVIDERS if p in available]
    if device == "cpu":
        return ["CPUExecutionProvider"], "CPU provider: device=cpu was asked for"
    if precision == "int8":
        if device.startswith("cuda"):
            log.warning("int8 (dynamic quantization) graphs run on the CPU provider only; ignoring device=%s", device)
        return ["CPUExecutionProvider"], (
            "CPU provider: int8 dynamic-quantization graphs have no TensorRT/CUDA kernels (export fp16 for GPUs)"
        )
    if device.startswith("cuda") and not gpu:
        raise ValueError(
            f"device={device} asked for, but onnxruntime has only {available}; install onnxruntime-gpu "
            "(`pip install -e '.[gpu]'`) or use device=cpu"
        )
    if not gpu:
        return ["CPUExecutionProvider"], (
            f"CPU provider: this onnxruntime build has no GPU provider (available: {available}; "
            "GPU nodes install onnxruntime-gpu)"
        )
    if device == "auto" and not torch.cuda.is_available():
        return ["CPUExecutionProvider"], "CPU provider: onnxruntime has GPU providers but no CUDA device is visible"
    device_id = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    providers: list[Any] = []
    notes = []
    if "TensorrtExecutionProvider" not in gpu:
        notes.append("no TensorRT provider in this onnxruntime build")
    elif os.environ.get(DISABLE_TENSORRT_ENV):
        notes.append(f"TensorRT provider off ({DISABLE_TENSORRT_ENV} is set)")
    else:
        options = ort_trt_options(precision=precision, profiles=profiles or {}, device_id=device_id)
        providers.append(("TensorrtExecutionProvider", {"device_id": device_id, **options}))
    if "CUDAExecutionProvider" in gpu:
        providers.append(("CUDAExecutionProvider", {"device_id": device_id}))
    providers.append("CPUExecutionProvider")
    return providers, "; ".join(notes)


def make_session(path: Path, providers: list[Any], precision: str, threads: int = 0) -> Any:
    """An ``InferenceSession`` for one graph.

    fp16 graphs on the CPU provider run with ``ORT_ENABLE_EXTENDED`` optimisations: at the default
    ``ORT_ENABLE_ALL``, onnxruntime 1.31's CPU layout transformations crash (segfault) on the fp16
    graphs that the fp16 converter writes; GPU providers are unaffected.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    cpu_only = all((p if isinstance(p, str) else p[0]) == "CPUExecutionProvider" for p in providers)
    if precision == "fp16" and cpu_only:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.log_severity_level = 3  # errors only: the providers' fallbacks are reported by us
    return ort.InferenceSession(str(path), options, providers=providers)


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or ``None``."""
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)


def major_version(version: str | None) -> int:
    """``"11.4.0.106"`` → 11 (0 when unknown)."""
    return int(version.split(".", 1)[0]) if version and version.split(".", 1)[0].isdigit() else 0


def cache_dir(device_id: int = 0, root: str | Path | None = None) -> Path:
    """The engine/timing cache folder for this GPU model and TensorRT version.

    ``<root>/<gpu model>-trt<version>/`` with ``root`` = ``$DLDC_TRT_CACHE`` or ``~/.cache/dldc/tensorrt``.
    """
    gpu = torch.cuda.get_device_name(device_id) if torch.cuda.is_available() else "no-gpu"
    key = re.sub(r"[^A-Za-z0-9.]+", "-", f"{gpu}-trt{tensorrt_version() or 'unknown'}").strip("-")
    base = Path(root or os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    folder = base / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shape_string(profile: dict[str, dict[str, list[int]]], which: str) -> str:
    """ORT's profile syntax: ``{"pixels": {"min": [1, 3, 224, 224]}}`` → ``pixels:1x3x224x224``."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[which])}" for name, shapes in profile.items())


def ort_trt_options(precision: str, profiles: dict[str, dict[str, list[int]]], device_id: int = 0) -> dict[str, Any]:
    """Options for ONNX Runtime's TensorRT provider: engine + timing cache, optimisation profile.

    Args:
        precision: the graph's precision (``fp16`` enables FP16 on TensorRT < 11, where the
            builder flag still exists; TensorRT 11 takes precision from the graph).
        profiles: per input ``{"min": shape, "opt": shape, "max": shape}``.
        device_id: the GPU.

    Returns:
        The provider options (strings and booleans, as ONNX Runtime takes them).
    """
    folder = str(cache_dir(device_id))
    options: dict[str, Any] = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": folder,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": folder,
        "trt_max_workspace_size": WORKSPACE_BYTES,
    }
    if profiles:
        options["trt_profile_min_shapes"] = shape_string(profiles, "min")
        options["trt_profile_opt_shapes"] = shape_string(profiles, "opt")
        options["trt_profile_max_shapes"] = shape_string(profiles, "max")
    if precision == "fp16" and 0 < major_version(tensorrt_version()) < 11:
        options["trt_fp16_enable"] = True
    return options
