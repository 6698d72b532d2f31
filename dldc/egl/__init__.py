"""EGL, the external generation loop: layout descriptions that replace low-scoring captions.

Captioners (:mod:`dldc.egl.base`) write candidate *layout descriptions* for an image — what is
where — from a vision-language model (:mod:`dldc.egl.hf_vlm`), from a segmentation mask
(:mod:`dldc.egl.mask2text`) or from the captions of the nearest images of the same scene
(:mod:`dldc.egl.retrieval`). Prompts and output cleaning live in :mod:`dldc.egl.prompts`;
:mod:`dldc.egl.factory` builds a captioner from a one-line spec, and :mod:`dldc.egl.loop` runs
the closed loop with the IEL: regenerate for low-scoring pairs, score, keep the best, repeat.
"""
