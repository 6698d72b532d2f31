"""The MLflow pyfunc model of a LoRA adapter whose Stable Diffusion base ships inside the model.

MLflow "models from code": :mod:`dldc.registry.adapter_model` logs this file as the model's code,
and MLflow executes it when the model is loaded. So it imports nothing from ``dldc`` (a registered
model loads wherever diffusers, torch and Pillow are installed) and it does no work at import time.

Artifacts (``context.artifacts``):

* ``base``: the base pipeline's ``save_pretrained`` folder (``dldc build-base``'s output);
* ``adapter``: the adapter folder (``pytorch_lora_weights.safetensors`` and its JSON files).

``predict(prompts, params)``: one image per prompt, each a PNG as ``bytes`` (the type
``mlflow.diffusers``' own pyfunc returns for hub bases, so a caller handles both alike). Prompts
may be a list of strings, a string, or a DataFrame with a ``prompt`` column. Params:
``num_inference_steps``, ``guidance_scale``, ``height``, ``width`` (0: the base's native size),
``negative_prompt`` and ``seed``: prompt ``i`` draws its noise on the CPU from ``seed + i``, so a
seed gives the same images on every device and for every adapter of the same base.
"""

from __future__ import annotations

import io
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


def _prompts(model_input: Any) -> list[str]:
    # pyfunc's schema enforcement hands a list of strings over as a one-column DataFrame.
    if hasattr(model_input, "columns"):
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        model_input = model_input[column].tolist()
    if isinstance(model_input, str):
        model_input = [model_input]
    prompts = [item for value in model_input for item in (value if isinstance(value, list) else [value])]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"predict needs one or more prompt strings, got {model_input!r}")
    return prompts


class BundledBaseLoraModel(PythonModel):
    """A Stable Diffusion pipeline from the bundled base with the LoRA adapter loaded."""

    def load_context(self, context: Any) -> None:
        import torch
        from diffusers import StableDiffusionPipeline

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        pipe = StableDiffusionPipeline.from_pretrained(
            context.artifacts["base"],
            dtype=torch.float32,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.load_lora_weights(context.artifacts["adapter"])
        pipe.set_progress_bar_config(disable=True)
        self.pipeline = pipe.to(self.device)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would run it to check them
        import torch

        prompts = _prompts(model_input)
        params = dict(params or {})
        seed = int(params.pop("seed", 0))
        # 0 px and an empty negative prompt mean "the pipeline's own default" (a schema needs a default value).
        unset = {"height": 0, "width": 0, "negative_prompt": ""}
        kwargs = {
            key: value for key, value in params.items() if value is not None and unset.get(key, object()) != value
        }
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))]
        with torch.no_grad():
            images = self.pipeline(prompt=prompts, generator=generators, output_type="pil", **kwargs).images
        encoded = []
        for image in images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            encoded.append(buffer.getvalue())
        return encoded


mlflow.models.set_model(BundledBaseLoraModel())
