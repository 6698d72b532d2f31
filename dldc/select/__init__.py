"""Per-scene cleaning-ratio selection: the dual loop's decision and the cleaned dataset (``dldc select``).

* :mod:`dldc.select.ranking` — rank pairs within their scene by fused score; cut the lowest ratio.
* :mod:`dldc.select.objective` — the ``proxy`` objective (with bootstrap intervals), the trials'
  objective (``loop_curves``), argbest with fallbacks.
* :mod:`dldc.select.design` — the Plackett–Burman screening design, the effect regression and the
  precision-weighted combination with the proxy.
* :mod:`dldc.select.plan` — which trials a mode runs (``calibrate``, ``attribute``, ``loop``) and
  the judge set.
* :mod:`dldc.select.trial` — one trial (``dldc select-trial``): clean → LoRA → generate → evaluate.
* :mod:`dldc.select.decide` — from a plan's trials to each scene's r*, interval, evidence and flags.
* :mod:`dldc.select.selection` — the stage: selection.json, cleaned manifests, dropped pairs, plots.
"""
