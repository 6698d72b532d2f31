"""Fast scorers: IEL scorers exported to ONNX, run with ONNX Runtime (TensorRT, CUDA, CPU) or TensorRT.

* :mod:`dldc.export.towers` — the image and text towers of each scorer family as plain
  ``torch.nn.Module`` s, and the preprocessing recorded beside them;
* :mod:`dldc.export.onnx_export` — torch → ONNX (the pinned exporter), fp16 and int8 conversion;
* :mod:`dldc.export.runtime` — the ``onnx:DIR`` scorer backend (ONNX Runtime execution providers);
* :mod:`dldc.export.tensorrt` — TensorRT engine builds with a persistent cache (GPU nodes);
* :mod:`dldc.export.parity` — the parity gate every export passes before it can be used;
* :mod:`dldc.export.exporter` — ``dldc export-scorer``: export, convert, gate, write ``export.json``;
* :mod:`dldc.export.registry` — exported scorers in MLflow (artifacts, metrics, model alias).
"""
