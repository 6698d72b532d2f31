"""Peer check: `dldc score` against Data-Juicer's `image_text_similarity_filter`, side by side, in one run.

    python benchmarks/peer_datajuicer.py [--pairs 300] [--threads 2] [--dj-python build/peer-dj-venv/bin/python]

Both score the same RSICD pairs (the first ``--pairs`` of the real subset, 5 captions per image)
with the same model: a Hugging Face ``CLIPModel`` with ViT-B/32's configuration, randomly
initialised (seed 0), built from its config and saved once (tokenizer: CLIP's BPE rebuilt offline
from open_clip's file; image processor: CLIP's defaults, 224 px). Both load it from that folder,
on CPU, with the same number of torch threads; model loading is outside both timings.

* dldc: :func:`dldc.iel.engine.score_manifest` with the ``hf:DIR`` scorer (this virtualenv), into
  a fresh output folder (an empty embedding store); then the same with ``onnx:DIR``, its ONNX fp32
  export (``dldc export-scorer``, gated on 2,048 pairs of the RSICD subset; kept in ``--work`` by
  digest), dldc's fastest CPU path that passes its gate for a random-weight model (int8 does not);
* Data-Juicer 1.6.1: ``ImageTextSimilarityFilter(hf_clip=DIR).run(dataset)`` on a ``NestedDataset``
  of one sample per pair (``<__dj__image> caption <|__dj__eoc|>``), in its own virtualenv (create it
  with ``python -m venv build/peer-dj-venv`` and ``pip install py-data-juicer==1.6.1``; see
  benchmarks/README.md). It runs in a child process; its score (``logits_per_text / 100``) is a
  positive multiple of the cosine, so rankings compare directly.

Reports pairs/s of each, their ratio, and the Spearman correlation of the two score columns
(ranks, not values). The speed-up splits into less work and faster work: dldc's forward FLOPs
are counted under torch's ``FlopCounterMode`` in an untimed second run (each of the 60 images is
encoded once for its 5 captions, texts in padded batches); Data-Juicer's are recomputed here as its
op does the work (one image and one unpadded text per pair: torch's counter sees nothing inside the
op), and ``work_ratio`` × ``gflop_per_s_ratio`` = the speed-up.
When the Data-Juicer interpreter is missing or fails, the result says so
with its error and the dldc side is still measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cached_step, provenance, rsicd_subset_manifest, write_result  # noqa: E402

DJ_SCRIPT = r"""
import json, sys, time
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
import data_juicer
from data_juicer.core.data import NestedDataset
from data_juicer.ops.filter.image_text_similarity_filter import ImageTextSimilarityFilter
from data_juicer.utils.constant import Fields, StatsKeys

def dataset(pairs):
    return NestedDataset.from_list(
        [{"text": f"<__dj__image> {caption} <|__dj__eoc|>", "images": [image]} for image, caption in pairs]
    )

op = ImageTextSimilarityFilter(hf_clip=args["model"], min_score=-1.0, max_score=1.0, num_proc=1)
op.run(dataset(args["pairs"][:2]))  # loads the model and warms up, outside the timing
data = dataset(args["pairs"])
started = time.perf_counter()
out = op.run(data)
seconds = time.perf_counter() - started
scores = [stats[StatsKeys.image_text_similarity][0] for stats in out[Fields.stats]]
print(json.dumps({"seconds": seconds, "scores": scores, "kept": len(out), "version": data_juicer.__version__,
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
"""


def build_hf_clip(out: Path) -> dict[str, Any]:
    """A random-init CLIP ViT-B/32 (transformers' default ``CLIPConfig``) with its processor, saved to ``out``."""
    import open_clip
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    simple = open_clip.SimpleTokenizer()
    vocab = dict(simple.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = [pair for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda item: item[1])]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    config = CLIPConfig()  # ViT-B/32: patch 32, 224 px, widths 768 / 512, projection 512
    config.text_config.update({"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407})
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(out)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def export_onnx(model: Path, calibration: Path, out: Path) -> dict[str, Any]:
    """``dldc export-scorer`` of the HF model to ONNX fp32, gated on 2,048 RSICD pairs (the gate
    cannot pass on fewer than ~1,530: see ``ExportConfig.calibration_pairs``)."""
    from dldc.config import ExportConfig
    from dldc.export.exporter import export_scorer

    cfg = ExportConfig(scorer=f"hf:{model}", out=str(out), precision="fp32", calibration_manifest=str(calibration),
                       calibration_pairs=2048, device="cpu")  # fmt: skip
    meta = export_scorer(cfg, progress=False).meta
    return {"parity": meta["parity"]["figures"]}


def run_dldc(manifest: Path, spec: str, out: Path, threads: int) -> tuple[float, list[float], int | None]:
    """Seconds, scores (manifest order) and the FLOPs of the same work, counted in an untimed second
    run (torch only: ONNX Runtime's work is invisible to torch's counter, ``None``)."""
    import pandas as pd
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dldc.config import ScoreConfig
    from dldc.iel.engine import score_manifest
    from dldc.iel.factory import create_scorer

    torch.set_num_threads(threads)
    scorer = create_scorer(spec, device="cpu")
    scorer.encode_texts(["warm up"])
    cfg = ScoreConfig(manifest=str(manifest), out=str(out / "timed"), scorers=[spec], device="cpu")
    started = time.perf_counter()
    result = score_manifest(cfg, [scorer], progress=False)
    seconds = time.perf_counter() - started
    frame = pd.read_parquet(manifest)[["pair_id"]].merge(result.frame, on="pair_id")
    if spec.startswith("onnx:"):
        return seconds, frame[scorer.name].tolist(), None
    counter = FlopCounterMode(display=False)
    with counter:  # a fresh output folder: an empty embedding store, the same encodes
        score_manifest(cfg.model_copy(update={"out": str(out / "counted")}), [scorer], progress=False)
    return seconds, frame[scorer.name].tolist(), counter.get_total_flops()


def per_pair_gflops(model_dir: Path, pairs: list[tuple[str, str]]) -> float:
    """The forward work of scoring each pair on its own, as Data-Juicer's op does (one image, one
    unpadded text per call), counted under ``FlopCounterMode`` in this process. Torch's counter
    sees nothing inside Data-Juicer's op (it counted 0), so the work is recomputed here."""
    import torch
    from PIL import Image
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        pixels = processor(images=[Image.open(pairs[0][0]).convert("RGB")], return_tensors="pt")["pixel_values"]
        model.get_image_features(pixel_values=pixels)  # every image is resized to the same 224 px
    image = counter.get_total_flops()
    with torch.inference_mode(), counter:
        for _, caption in pairs:
            model.get_text_features(**processor(text=[caption], return_tensors="pt", truncation=True))
    return (len(pairs) * image + counter.get_total_flops()) / 1e9


def run_datajuicer(python: Path, model: Path, pairs: list[tuple[str, str]], threads: int) -> dict[str, Any]:
    if not python.is_file():
        return {"error": f"{python} not found: create the Data-Juicer virtualenv (benchmarks/README.md)"}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    payload = json.dumps({"model": str(model), "pairs": pairs, "threads": threads})
    done = subprocess.run(
        [str(python), "-c", DJ_SCRIPT, payload], capture_output=True, text=True, env=env, cwd=tempfile.gettempdir()
    )
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr[-2000:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--dj-python", type=Path, default=Path("build/peer-dj-venv/bin/python"))
    parser.add_argument("--work", type=Path, default=Path("build/peer-dj"))
    args = parser.parse_args()
    import pandas as pd
    from scipy.stats import spearmanr

    from dldc.data.manifest import dataset_root, read_manifest, write_manifest

    work = args.work.resolve()
    model = work / "hf-clip-vit-b32-random"
    step = cached_step(model, {"step": "hf-clip", "config": "CLIPConfig() ViT-B/32", "seed": 0}, build_hf_clip)
    full = rsicd_subset_manifest(work, -(-args.pairs // 5))
    frame, meta = read_manifest(full)
    frame = frame.head(args.pairs)
    manifest = work / f"rsicd-{args.pairs}-pairs" / "manifest.parquet"
    write_manifest(manifest, frame, meta)
    root = dataset_root(full, meta)
    pairs = [(str(root / image), caption) for image, caption in zip(frame["image"], frame["caption"])]

    onnx = work / "onnx-fp32"
    calibration = work / "rsicd-full" / "manifest.parquet"  # all 9,300 pairs of the subset
    onnx_step = cached_step(
        onnx, {"step": "export-onnx-fp32", "model": step["digest"], "calibration_pairs": 2048},
        lambda out: export_onnx(model, calibration, out / "export"), [calibration],
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        dldc_seconds, dldc_scores, dldc_flops = run_dldc(manifest, f"hf:{model}", Path(tmp) / "hf", args.threads)
        onnx_seconds, onnx_scores, _ = run_dldc(manifest, f"onnx:{onnx / 'export'}", Path(tmp) / "onnx", args.threads)
    dj = run_datajuicer(args.dj_python.absolute(), model, pairs, args.threads)
    figures: dict[str, Any] = {
        "pairs": len(pairs),
        "images": int(frame["image"].nunique()),
        "threads": args.threads,
        "model": {"kind": "transformers CLIPModel, ViT-B/32 config, random init (seed 0)", **step["result"]},
        "model_build": provenance(step),
        "dldc": {
            "seconds": round(dldc_seconds, 2),
            "pairs_per_s": round(len(pairs) / dldc_seconds, 2),
            "gflops": round(dldc_flops / 1e9, 1),
            "gflop_per_s": round(dldc_flops / 1e9 / dldc_seconds, 1),
        },
        "dldc_onnx_fp32": {
            "seconds": round(onnx_seconds, 2),
            "pairs_per_s": round(len(pairs) / onnx_seconds, 2),
            "spearman_vs_hf": round(float(spearmanr(onnx_scores, dldc_scores).statistic), 6),
            "export": {**onnx_step["result"], **provenance(onnx_step)},
        },
    }
    if "error" in dj:
        figures["datajuicer"] = {"error": dj["error"]}
    else:
        dj_gflops = per_pair_gflops(model, pairs)
        figures["datajuicer"] = {
            "version": dj["version"],
            "torch": dj["torch"],
            "threads": dj["threads"],
            "seconds": round(dj["seconds"], 2),
            "pairs_per_s": round(len(pairs) / dj["seconds"], 2),
            "kept": dj["kept"],
            "gflops_per_pair_work": round(dj_gflops, 1),
            "gflop_per_s": round(dj_gflops / dj["seconds"], 1),
        }
        figures["speedup_dldc_vs_datajuicer"] = round(dj["seconds"] / dldc_seconds, 2)
        figures["speedup_dldc_onnx_fp32_vs_datajuicer"] = round(dj["seconds"] / onnx_seconds, 2)
        figures["spearman_onnx_fp32"] = round(float(spearmanr(onnx_scores, dj["scores"]).statistic), 6)
        # The speed-up = less work (each image encoded once, for its five captions) × faster work
        # (batches instead of one pair per call).
        figures["work_ratio_datajuicer_vs_dldc"] = round(dj_gflops * 1e9 / dldc_flops, 2)
        figures["gflop_per_s_ratio_dldc_vs_datajuicer"] = round(
            (dldc_flops / 1e9 / dldc_seconds) / (dj_gflops / dj["seconds"]), 2
        )
        figures["spearman"] = round(float(spearmanr(dldc_scores, dj["scores"]).statistic), 6)
        figures["scores_head"] = pd.DataFrame({"dldc": dldc_scores[:5], "datajuicer": dj["scores"][:5]}).to_dict(
            "list"
        )
    figures["targets"] = {"speedup": ">= 5", "spearman": ">= 0.999"}
    write_result("peer_datajuicer", figures)


if __name__ == "__main__":
    main()
