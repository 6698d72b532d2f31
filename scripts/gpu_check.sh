#!/usr/bin/env bash
# GPU checks of the fast scorers (ONNX Runtime CUDA/TensorRT, native TensorRT): `pytest -m gpu`, then the
# GPU part of benchmarks/scorer_backends.py. Budget: under 10 minutes on one H100/H200.
#
#   bash scripts/gpu_check.sh            # with the GPU packages already installed (pip install -e '.[gpu]')
#   INSTALL=1 bash scripts/gpu_check.sh  # first swap onnxruntime for onnxruntime-gpu and add TensorRT (needs PyPI)
#
# Writes benchmarks/results/scorer_backends_gpu.json and prints the figures. Exit status: the tests'.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export DLDC_TRT_CACHE="${DLDC_TRT_CACHE:-$PWD/.cache/tensorrt}"

if [ "${INSTALL:-0}" = 1 ]; then
    # onnxruntime and onnxruntime-gpu install the same module: only one of them may be present.
    "$PY" -m pip uninstall -y onnxruntime >/dev/null 2>&1
    "$PY" -m pip install -q "onnxruntime-gpu==1.31.1" "tensorrt==11.4.0.106" || echo "gpu_check: GPU packages not installed"
fi

"$PY" - <<'PYEOF'
import importlib, torch
print("torch", torch.__version__, "| CUDA:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
try:
    import onnxruntime as ort
    print("onnxruntime", ort.__version__, ort.get_available_providers())
except ImportError as err:
    print("onnxruntime missing:", err)
try:
    print("tensorrt", importlib.import_module("tensorrt").__version__)
except ImportError:
    print("tensorrt: not installed (TensorRT tests and benchmark rows will be skipped / report an error)")
PYEOF

timeout 300 "$PY" -m pytest -m gpu tests/test_export_gpu.py -q -p no:cacheprovider -rs
status=$?

# GPU benchmark only (the CPU part is measured on CPU machines); ViT-B-32 and ViT-L-14, random weights.
timeout 270 "$PY" benchmarks/scorer_backends.py --skip-cpu --gpu-images 300 --gpu-archs ViT-B-32,ViT-L-14 \
    --result-name scorer_backends_gpu || echo "gpu_check: benchmark failed or ran out of time (status $?)"
exit $status
