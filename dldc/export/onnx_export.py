"""torch → ONNX for scorer towers, then fp16 / int8 conversion.

The exporter: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter,
onnxscript translation), pinned after trying both on every scorer family (torch 2.14):

* the legacy TorchScript exporter (``dynamo=False``) *bakes the traced sequence length* into
  the reshapes of ``nn.MultiheadAttention`` (open_clip's text tower): a graph traced at 10 tokens
  fails at run time on 16. It could only export a fixed 77-token text tower, ~4x the work of the
  trimmed one the torch scorer runs. Traced under ``no_grad`` it also hits MHA's fused fast path
  (``aten::_native_multi_head_attention``), which has no ONNX symbolic. It is deprecated.
* the dynamo exporter exports open_clip (image and text, dynamic batch *and* sequence axes),
  Hugging Face CLIP/SigLIP and the in-domain models with outputs equal to torch to ~1e-6. It
  costs a few seconds per tower and the ``onnxscript`` package (pinned in ``pyproject.toml``).

The graph is saved unoptimised (``optimize=False``): ONNX Runtime and TensorRT optimise it when
they load it, and the initializers keep the parameter names, which lets the K fold models of a
cross-fitted scorer share one traced graph (:func:`swap_weights`).

fp16 (GPU): :func:`onnxruntime.transformers.float16.convert_float_to_float16` with
``keep_io_types=True``, so callers feed and read fp32. int8 (CPU): dynamic quantization
(:func:`onnxruntime.quantization.quantize_dynamic`), activations quantized on the fly, by default
only ``MatMul``/``Gemm`` with *u8* weights and per-channel scales (``export`` config defaults).
Measured on ViT-B-32 (random weights) / 240 RSICD pairs, 1 thread, AVX2 CPU without VNNI
(``benchmarks/scorer_backends.py``): u8 per-channel 1.6x torch fp32 at Spearman 0.9986;
u8 per-tensor 1.35x / 0.9976; s8 weights (ONNX Runtime's default) 2.0x / 0.984 (the u8×s8
``vpmaddubsw`` path saturates); s8 7-bit (``reduce_range``) 2.0x / 0.9953; Conv quantized too
1.5x / 0.9975. All of them flip 4 of 240 kept/dropped decisions on that random model (its pair
scores lie in a narrow band), which the flip-rate gate refuses; the trained in-domain scorer's
int8 export passes every gate (0 flips of 1024). The graph is constant-folded before quantizing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

from dldc.export.towers import Tower

log = logging.getLogger(__name__)

EXPORTER = "torch.onnx.export(dynamo=True)"
DEFAULT_OPSET = 18  # the dynamo exporter's native opset
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_INT8_OPS = ("MatMul", "Gemm")
# Protobuf caps a file at 2 GiB: larger graphs keep their weights in a `<name>.data` file beside them.
EXTERNAL_DATA_BYTES = 1_500_000_000


def export_tower(tower: Tower, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export one tower to ONNX with its dynamic axes.

    Args:
        tower: from :func:`dldc.export.towers.towers_of`.
        path: the ``.onnx`` file to write.
        opset: ONNX opset (>= 18 for the dynamo exporter).

    Returns:
        The written path. Weights of graphs over ~1.5 GB go to ``<path>.data`` beside it.

    Raises:
        RuntimeError: the exporter failed (the message carries its error).
    """
    import onnxscript  # noqa: F401  -- fail here, with the package name, rather than deep in torch.onnx

    path = Path(path)
    dims: dict[str, torch.export.Dim] = {}
    dynamic_shapes = {
        name: {
            axis: dims.setdefault(dim_name, torch.export.Dim(dim_name, min=low, max=high))
            for axis, (dim_name, low, high) in tower.dynamic.get(name, {}).items()
        }
        for name in tower.input_names
    }
    params = sum(p.numel() * p.element_size() for p in tower.module.parameters())
    # The exporter prints its progress and warns about things that do not apply to eval towers.
    with (
        torch.no_grad(),
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        _reused_torchlib_registry(),
    ):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                tower.module,
                tower.example,
                input_names=list(tower.input_names),
                output_names=["features"],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                optimize=False,
                verbose=False,
            )
        except Exception as err:  # the exporter raises many types; all mean "this module did not export"
            raise RuntimeError(f"torch.onnx (dynamo) could not export {type(tower.module).__name__}: {err}") from err
    program.save(str(path), external_data=params > EXTERNAL_DATA_BYTES)
    return path


_REGISTRIES: dict[int, object] = {}


@contextlib.contextmanager
def _reused_torchlib_registry():
    """Build torch.onnx's aten → ONNX function registry once per process instead of once per export.

    Building it takes seconds (~20% of exporting a small tower) and the exporter does not change it
    when no custom translation table is given. This touches a private torch API, so any surprise
    (renamed module, other signature) falls back to torch's own behaviour.
    """
    try:
        from torch.onnx._internal.exporter import _registration

        original = _registration.ONNXRegistry.__dict__["from_torchlib"]
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def cached(cls, opset_version=18):
        if opset_version not in _REGISTRIES:
            _REGISTRIES[opset_version] = original.__func__(cls, opset_version)
        return _REGISTRIES[opset_version]

    _registration.ONNXRegistry.from_torchlib = classmethod(cached)
    try:
        yield
    finally:
        _registration.ONNXRegistry.from_torchlib = original


def swap_weights(graph: str | Path, state: dict[str, torch.Tensor], out: str | Path, prefix: str = "model.") -> int:
    """Write a copy of an exported graph with other weights of the same architecture.

    The K fold models of a cross-fitted scorer differ only in their weights: one traced graph
    serves them all. Initializers are matched by name (``<prefix><state dict key>``); those without
    a match (non-persistent buffers such as the causal mask) are the same for every fold.

    Args:
        graph: an ``.onnx`` file from :func:`export_tower`.
        state: the other model's ``state_dict()``.
        out: the ``.onnx`` file to write.
        prefix: the tower module's attribute name in front of the model's parameter names.

    Returns:
        How many initializers were replaced.

    Raises:
        ValueError: a state tensor's shape or dtype differs from the graph's (another architecture).
    """
    from onnx import numpy_helper

    model = onnx.load(str(graph))
    replaced = 0
    for index, init in enumerate(model.graph.initializer):
        key = init.name.removeprefix(prefix)
        if key not in state:
            continue
        value = state[key].detach().cpu().numpy()
        current = numpy_helper.to_array(init)
        if current.shape != value.shape or current.dtype != value.dtype:
            raise ValueError(
                f"{init.name}: {value.dtype}{value.shape} does not fit the graph's {current.dtype}{current.shape}"
            )
        model.graph.initializer[index].CopyFrom(numpy_helper.from_array(value, init.name))
        replaced += 1
    _save(model, out)
    return replaced


def convert_precision(
    source: str | Path,
    target: str | Path,
    precision: str,
    int8_ops: Sequence[str] = DEFAULT_INT8_OPS,
    int8_per_channel: bool = False,
    int8_reduce_range: bool = False,
    int8_weight_type: str = "quint8",
) -> Path:
    """Convert an fp32 graph to ``fp16`` (fp32 inputs/outputs kept) or ``int8`` (dynamic quantization).

    Args:
        source: the fp32 ``.onnx`` file.
        target: where to write the converted graph (may equal ``source``).
        precision: ``fp32`` (copy), ``fp16`` or ``int8``.
        int8_ops: ONNX op types to quantize for ``int8``.
        int8_per_channel: one weight scale per output channel instead of per tensor.
        int8_reduce_range: 7-bit weights, which avoids the saturation of AVX2's u8×s8 multiply-add
            (``vpmaddubsw``) on CPUs without VNNI (ONNX Runtime's documented remedy).
        int8_weight_type: ``quint8`` (u8 weights: u8×u8 products, no saturation; the default) or
            ``qint8`` (s8 weights, ONNX Runtime's default, which saturates on AVX2 without VNNI).

    Returns:
        ``target``.

    Raises:
        ValueError: unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown export precision {precision!r}; use one of {PRECISIONS}")
    source, target = Path(source), Path(target)
    if precision == "fp32":
        if source != target:
            _save(onnx.load(str(source)), target)
        return target
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "the model is already fp16"-style notes on integer ops
            model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        _save(model, target)
        return target

    import onnxscript
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The graph is saved unoptimised, so most weights reach their MatMul through a Transpose node
    # and the quantizer would leave those MatMuls in fp32 (13 of 73 quantized in ViT-B-32's image
    # tower); folding constants first gives every weight MatMul a constant B (49 of 73).
    folded = target.with_name(f".{target.name}.folded")
    model = onnxscript.optimizer.optimize(onnx.load(str(source)))
    # The quantizer re-runs ONNX shape inference; stale intermediate shapes recorded by the exporter
    # can contradict it (seen on the in-domain ResNet's attention pool), and nothing needs them.
    del model.graph.value_info[:]
    _save(model, folded)
    staging = target.with_name(f".{target.name}.int8")
    # ORT's quantizer logs "consider pre-processing" on the root logger; the graph is already clean.
    logging.getLogger().addFilter(_drop_preprocess_hint)
    try:
        quantize_dynamic(
            str(folded),
            str(staging),
            weight_type=QuantType.QUInt8 if int8_weight_type == "quint8" else QuantType.QInt8,
            per_channel=int8_per_channel,
            reduce_range=int8_reduce_range,
            op_types_to_quantize=list(int8_ops),
            use_external_data_format=source.with_name(source.name + ".data").exists(),
            # Weight MatMuls only: attention's activation x activation products stay fp32 (they are
            # small, and quantizing both operands on every call costs accuracy for no speed).
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        logging.getLogger().removeFilter(_drop_preprocess_hint)
        for path in (folded, folded.with_name(folded.name + ".data")):
            path.unlink(missing_ok=True)
    staging.replace(target)
    return target


def _drop_preprocess_hint(record: logging.LogRecord) -> bool:
    return "pre-processing before quantization" not in record.getMessage()


def _save(model: onnx.ModelProto, path: str | Path) -> None:
    path = Path(path)
    large = model.ByteSize() > EXTERNAL_DATA_BYTES if _fits_protobuf(model) else True
    if large:
        onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
    else:
        onnx.save(model, str(path))


def _fits_protobuf(model: onnx.ModelProto) -> bool:
    try:
        model.ByteSize()
    except Exception:  # protobuf refuses to size messages over 2 GiB
        return False
    return True
