"""Writing fast scorers: IEL scorers exported to ONNX, gated, converted and registered.

Exports are *run* by the ``onnx:DIR`` backend of :func:`dldc.iel.factory.create_scorer`
(:mod:`dldc.iel.onnx_scorer`, ONNX Runtime with the TensorRT, CUDA or CPU provider): this
package imports :mod:`dldc.iel`, never the reverse.

* :mod:`dldc.export.towers` — the image and text towers of each scorer family as plain
  ``torch.nn.Module`` s, and the preprocessing recorded beside them;
* :mod:`dldc.export.onnx_export` — torch → ONNX (the pinned exporter), fp16 and int8 conversion;
* :mod:`dldc.export.tensorrt` — TensorRT engine builds with a persistent cache (GPU nodes);
* :mod:`dldc.export.parity` — the parity gate every export passes before it can be used;
* :mod:`dldc.export.exporter` — ``dldc export-scorer``: export, convert, gate, write ``export.json``;
* :mod:`dldc.export.registry` — exported scorers in MLflow (artifacts, metrics, model alias).
"""
