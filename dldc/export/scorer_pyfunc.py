"""The MLflow pyfunc model of an exported IEL scorer: image–caption cosines from the ONNX towers.

MLflow "models from code": :func:`dldc.export.registry.log_export` logs this file as the model's
code, with the export folder as the artifact ``export`` and the ``dldc`` package as code
(``code_paths``), so the model loads wherever the export's runtime (onnxruntime, torch, the
tokenizer's package) is installed. Nothing runs at import time beyond defining the model.

``predict(frame)``: a DataFrame with ``image`` (encoded image bytes: PNG, JPEG), ``caption`` and,
for an exported in-domain (cross-fitted) scorer, ``image_id`` (which fold model scores the pair:
the one that never saw that image; unknown ids are hashed to a fold, as the source scorer
does). Returns a one-column DataFrame ``cosine``: the cosine of the L2-normalised image and
caption embeddings, the IEL engine's raw score (``100·max(cos, 0)`` is its CLIPScore).
"""

from __future__ import annotations

import io
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class ExportedScorerModel(PythonModel):
    """An ``onnx:DIR`` scorer (:func:`dldc.iel.onnx_scorer.load_onnx`) behind pyfunc's ``predict``."""

    def load_context(self, context: Any) -> None:
        from dldc.iel.onnx_scorer import load_onnx

        self.scorer = load_onnx(context.artifacts["export"], device="auto")

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would run it to check them
        import pandas as pd
        import torch
        from PIL import Image

        frame = pd.DataFrame(model_input)
        ids = frame["image_id"].fillna("").astype(str) if "image_id" in frame else pd.Series([""] * len(frame))
        cosines = [float("nan")] * len(frame)
        # One batch per fold model (a plain export has one model).
        groups: dict[Any, list[int]] = {}
        for row, image_id in enumerate(ids):
            model = (
                self.scorer.fold_model(self.scorer.fold_of(image_id))
                if hasattr(self.scorer, "fold_of")
                else self.scorer
            )
            groups.setdefault(model, []).append(row)
        for model, rows in groups.items():
            images = [Image.open(io.BytesIO(frame["image"].iloc[r])).convert("RGB") for r in rows]
            pixels = torch.stack([model.preprocess(image) for image in images])
            similarity = (
                model.encode_images(pixels) * model.encode_texts([frame["caption"].iloc[r] for r in rows])
            ).sum(-1)
            for row, value in zip(rows, similarity.tolist()):
                cosines[row] = value
        return pd.DataFrame({"cosine": cosines})


mlflow.models.set_model(ExportedScorerModel())
