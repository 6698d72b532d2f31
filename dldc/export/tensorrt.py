"""TensorRT for exported towers: provider options for ONNX Runtime and a native engine builder.

Two ways to run an export on TensorRT, both with dynamic-batch optimisation profiles and a
persistent engine + timing cache keyed by GPU model and TensorRT version (an engine is only
valid on the GPU model and TensorRT version that built it):

* ONNX Runtime's ``TensorrtExecutionProvider`` — what ``onnx:DIR`` prefers on GPU nodes;
  :func:`dldc.iel.onnx_providers.ort_trt_options` gives it its cache folders and profiles (the
  scorer side: :mod:`dldc.iel` runs exports, this package writes them).
* the TensorRT Python API directly — :func:`build_engine` + :class:`TensorRTTower` (used by the
  GPU benchmark and GPU tests to measure TensorRT without ONNX Runtime in between).

TensorRT versions: written for the TensorRT 10 and 11 Python APIs (``build_serialized_network``,
named I/O tensors, ``execute_async_v3``). TensorRT 11 removed the FP16 builder flag (and weakly
typed networks): precision comes from the ONNX graph, so an fp16 engine is built from the fp16
export. On TensorRT 10 the network is created *strongly typed* when the flag exists (same
semantics: the graph's types rule), else weakly typed with ``BuilderFlag.FP16`` for fp16 graphs;
TF32 is cleared for fp32 builds so fp32 engines keep fp32 parity.

``tensorrt`` is imported lazily: it exists only on GPU nodes (the ``gpu`` extra). Status: the
code paths are implemented and covered by ``pytest -m gpu`` (``scripts/gpu_check.sh``); they have
not yet been measured on a GPU machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from dldc.iel.onnx_providers import WORKSPACE_BYTES, cache_dir, major_version
from dldc.io import atomic_path

log = logging.getLogger(__name__)


def require_tensorrt() -> Any:
    """Import ``tensorrt`` or explain how to get it.

    Raises:
        ImportError: TensorRT's Python package is not installed.
    """
    try:
        import tensorrt
    except ImportError as err:
        raise ImportError(
            "TensorRT is not installed: GPU nodes install it with the gpu extra (`pip install -e '.[gpu]'`, "
            "tensorrt 11). On CPU-only machines use the ONNX Runtime CPU provider (onnx:DIR does by itself)."
        ) from err
    return tensorrt


def build_engine(
    onnx_path: str | Path,
    profiles: dict[str, dict[str, list[int]]],
    precision: str = "fp32",
    device_id: int = 0,
    cache_root: str | Path | None = None,
) -> Path:
    """Build (or reuse) a serialized TensorRT engine for one exported graph.

    Args:
        onnx_path: an ``.onnx`` file of an export folder.
        profiles: per input ``{"min", "opt", "max"}`` shapes (one optimisation profile).
        precision: the graph's precision (``fp32`` or ``fp16``; int8 exports are CPU-only).
        device_id: the GPU to build for.
        cache_root: overrides ``$DLDC_TRT_CACHE``.

    Returns:
        The engine file, ``<cache>/<gpu>-trt<version>/<graph sha256[:16]>-<profile hash>.engine``;
        an existing one is reused (the timing cache beside it speeds up rebuilds of similar graphs).

    Raises:
        ImportError: TensorRT is not installed.
        RuntimeError: the ONNX parser or the builder failed (with TensorRT's messages).
    """
    trt = require_tensorrt()
    onnx_path = Path(onnx_path)
    folder = cache_dir(device_id, cache_root)
    graph_digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
    profile_digest = hashlib.sha256(json.dumps([profiles, precision], sort_keys=True).encode()).hexdigest()[:8]
    engine_path = folder / f"{graph_digest}-{profile_digest}.engine"
    if engine_path.is_file():
        return engine_path

    major = major_version(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    creation = trt.NetworkDefinitionCreationFlag
    # Strongly typed: the ONNX graph's tensor types decide precision (the only mode in TensorRT 11).
    strongly_typed = hasattr(creation, "STRONGLY_TYPED") and (major >= 11 or precision == "fp16")
    flags = 1 << int(creation.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if not strongly_typed:
        if precision == "fp16" and hasattr(trt.BuilderFlag, "FP16"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
    timing_file = folder / "timing.cache"
    timing = config.create_timing_cache(timing_file.read_bytes() if timing_file.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)

    profile = builder.create_optimization_profile()
    for name, shapes in profiles.items():
        profile.set_shape(name, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
    config.add_optimization_profile(profile)

    log.info("building a TensorRT %s engine for %s (TensorRT %s)", precision, onnx_path.name, trt.__version__)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path} (see the TensorRT log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    with atomic_path(timing_file) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return engine_path


class TensorRTTower:
    """Run one serialized engine on CUDA tensors (TensorRT 10/11 named-tensor API).

    Args:
        engine_path: from :func:`build_engine`.
        device_id: the GPU.

    Example (GPU nodes)::

        tower = TensorRTTower(build_engine("export/image.onnx", profiles["image"]))
        features = tower({"pixels": pixels.cuda()})
    """

    def __init__(self, engine_path: str | Path, device_id: int = 0):
        import torch

        trt = require_tensorrt()
        self._torch = torch
        self.device = torch.device("cuda", device_id)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {engine_path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.stream = torch.cuda.Stream(self.device)

    def __call__(self, inputs: dict[str, Any]) -> Any:
        """Named CUDA tensors in → the first output (a CUDA fp32 tensor)."""
        torch = self._torch
        keep = []
        for name in self.inputs:
            tensor = inputs[name].to(self.device).contiguous()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = _torch_dtype(self.engine.get_tensor_dtype(name))
            out = torch.empty(shape, dtype=dtype, device=self.device)
            outputs.append(out)
            self.context.set_tensor_address(name, out.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return outputs[0].float()


def _torch_dtype(trt_dtype: Any) -> Any:
    import torch

    trt = require_tensorrt()
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[trt_dtype]
