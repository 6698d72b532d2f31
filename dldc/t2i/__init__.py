"""Text-to-image: the demo base model, LoRA fine-tuning and generation for the test prompts.

* :mod:`dldc.t2i.base` — ``dldc build-base``: a tiny Stable Diffusion trained from scratch on a
  SynthRS pretraining split (the demo cannot download SD), saved with ``save_pretrained``.
* :mod:`dldc.t2i.finetune` — ``dldc finetune``: LoRA (diffusers + peft) on any SD base, resumable.
* :mod:`dldc.t2i.generate` — ``dldc generate``: images for the test prompts per arm, same seeds;
  its module docstring holds the output contract that ``dldc evaluate`` reads.
* :mod:`dldc.t2i.models` (loading a base like a hub id, tiny components), :mod:`dldc.t2i.tokenizer`
  (the real CLIP tokenizer from open_clip's BPE file), :mod:`dldc.t2i.data` (manifest pairs and
  cached latents), :mod:`dldc.t2i.checkpoints`, :mod:`dldc.t2i.scene_check`, :mod:`dldc.t2i.grid`.

CPU note: with more busy threads than cores, OpenMP's default spin-waiting makes torch many
times slower (measured 4-12 s instead of 0.8 s of CPU per training step on the 2-core demo
machine); ``OMP_WAIT_POLICY=PASSIVE`` in the environment avoids it.
"""
