"""Per-scene cleaning-ratio selection: the dual loop's decision and the cleaned dataset (``dldc select``).

* :mod:`dldc.select.ranking` — rank pairs within their scene by fused score; cut the lowest ratio.
* :mod:`dldc.select.objective` — the ``proxy`` and ``loop`` objectives, argbest with fallbacks.
* :mod:`dldc.select.trial` — one loop trial (``dldc select-trial``): clean → LoRA → generate → evaluate.
* :mod:`dldc.select.selection` — the stage: selection.json, cleaned manifests, dropped pairs, plots.
"""
