"""T2I cleaning benchmark: LoRA on noisy vs. truth-cleaned SynthRS, and our loop's training throughput.

    python benchmarks/t2i_cleaning.py [--work /tmp/t2i-bench] [--base data/base/model] [--scorer data/scorer]

Demo profile, same seeds for every arm:

* **data** — SynthRS with the demo settings (400 images, 64 px, 30% caption noise, seed 0),
  ingested. Arm ``noisy`` trains on all its train pairs; arm ``clean`` on the same pairs minus
  the noisy ones by SynthRS's ground truth (``truth/noise_labels.jsonl``: a benchmark may read
  it, a cleaning stage never does). Both fine-tunes use the demo ``finetune`` settings
  (same steps, batch and seed: the same compute), from the demo base (``dldc build-base``).
* **generation** — ``dldc generate`` of the test split's prompts for ``base``, ``noisy`` and
  ``clean`` into one folder (same seeds).
* **scene accuracy** (training side) — share of generated images that the in-domain scene
  classifier (:mod:`dldc.t2i.scene_check`) puts in the scene of the prompt's image, over all
  test prompts and over the prompts that are clean by the ground truth.
* **metrics** — :func:`evaluate_arms` (clearly marked below) calls ``dldc.evaluate`` when it
  is installed: FD / KD in the in-domain scorer's feature space and the in-domain CLIP score,
  with bootstrap intervals, (b) vs. (a). Target: ``clean`` beats ``noisy`` on both, by more
  than the interval.
* **throughput** — images/s of :func:`dldc.t2i.finetune.finetune`'s loop vs. a plain
  diffusers + peft loop on the same model and batch (``plain_lora_loop``: what
  ``train_text_to_image_lora.py`` does each step: decode + transform images, VAE-encode,
  text-encode, UNet), both for ``--throughput-steps`` steps in this process.

``--work`` keeps the data (reused when the digest of its settings matches its ``cache.json``), the
adapters (reused by dldc when their fingerprint matches) and the generated images (kept while an
arm's settings and adapter hold). A reused adapter's loss and images/s are those of the run that
trained it, and say so (``reused_from``: fingerprint, date); ``timings`` gives each stage's seconds
in this run, or where it was reused from, never the time of reading a cache.

Writes ``benchmarks/results/t2i_cleaning.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cached_synthrs_ingest, provenance, reuse_note, write_result  # noqa: E402

from dldc.config import BaseConfig, FinetuneConfig, GenerateConfig, IngestConfig, SynthConfig  # noqa: E402
from dldc.data.manifest import dataset_root, image_id_for, read_manifest, write_manifest  # noqa: E402

FINETUNE_STEPS = 300  # LoRA steps per arm (pinned: the demo dvc repro uses fewer)
ARMS = ("noisy", "clean")


# --------------------------------------------------------------------------- data


def make_data(work: Path) -> tuple[Path, Path, dict[str, dict[str, Any]]]:
    """SynthRS (demo settings) → manifest of all pairs (noisy) and without the truly noisy ones (clean).

    SynthRS and its ingest are reused from ``work`` when the digest of their settings matches
    (:func:`_common.cached_step`); the steps come back as the third value.
    """

    synth = SynthConfig()
    root = work / "synthrs"
    noisy = work / "noisy" / "manifest.parquet"
    settings = {"n_images": synth.n_images, "size": synth.size, "noise_rate": synth.noise_rate, "seed": synth.seed}
    ingest_cfg = IngestConfig(root=str(root), out=str(noisy.parent), workers=1)
    steps = cached_synthrs_ingest(root, settings, ingest_cfg)
    frame, meta = read_manifest(noisy)
    truth = truth_labels(dataset_root(noisy, meta))
    frame = frame.merge(truth, on="pair_id", how="left", validate="one_to_one")
    if frame["noisy"].isna().any():
        raise RuntimeError("some manifest pairs have no ground-truth row")
    clean_rows = frame[~frame["noisy"].astype(bool)].drop(columns=["noisy", "kind"])
    clean = work / "clean" / "manifest.parquet"
    root_abs = str(dataset_root(noisy, meta))
    write_manifest(clean, clean_rows.to_dict("records"), type(meta)(**{**meta.__dict__, "root": root_abs}))
    return noisy, clean, steps


def truth_labels(root: Path) -> pd.DataFrame:
    """``pair_id, noisy, kind`` from SynthRS's ground truth (caption k of an image = its k-th truth row)."""
    labels = pd.DataFrame(map(json.loads, (root / "truth" / "noise_labels.jsonl").open()))
    labels["k"] = labels.groupby("filename").cumcount()
    labels["pair_id"] = labels["filename"].map(lambda f: image_id_for(f"images/{f}")) + ":" + labels["k"].astype(str)
    return labels[["pair_id", "noisy", "kind"]]


# --------------------------------------------------------------------------- training and generation


def ensure_base(base: Path, scorer: Path | None) -> dict[str, Any]:
    """The demo base (``dldc build-base`` defaults), built unless ``base`` already holds one.

    Returns ``{"digest", "seconds", "report"}`` for a base built now, or ``{"digest", "reused_from",
    "report"}`` for one that was there (its build report, when it has one, is that build's).
    """
    from dldc.t2i.base import REPORT_FILE, build_base
    from dldc.t2i.finetune import base_digest

    if (base / "model_index.json").is_file():
        record = base / REPORT_FILE
        report = json.loads(record.read_text()) if record.is_file() else {}
        stamp = (record if record.is_file() else base / "model_index.json").stat().st_mtime
        date = datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")
        digest = base_digest(str(base), None)
        return {"digest": digest, "report": report,
                "reused_from": {"digest": digest, "date": date, "seconds": report.get("timings", {}).get("total_s")}}
    cfg = BaseConfig(out=str(base), data=str(base.parent), check_scorer=str(scorer) if scorer else None)
    started = time.perf_counter()
    report = build_base(cfg, progress=True)
    return {"digest": base_digest(str(base), None), "report": report,
            "seconds": round(time.perf_counter() - started, 1)}


def finetune_arms(work: Path, base: Path, manifests: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Fine-tune each arm; dldc keeps an adapter whose fingerprint matches (then ``reused_from``)."""
    from dldc.t2i.finetune import REPORT_FILE, finetune

    reports = {}
    for arm, manifest in manifests.items():
        out = work / "adapters" / arm
        cfg = FinetuneConfig(base=str(base), manifest=str(manifest), out=str(out), steps=FINETUNE_STEPS)
        report, note = reuse_note(lambda: finetune(cfg, progress=True), out / REPORT_FILE, "fingerprint")  # noqa: B023
        reports[arm] = {**report, "provenance": note}
    return reports


def generate_arms(work: Path, base: Path, manifest: Path, images_per_prompt: int) -> tuple[Path, dict[str, Any]]:
    """Generate the test prompts for every arm; returns the folder and the per-arm counts (generated / reused)."""
    from dldc.t2i.generate import generate_images

    arms = {"base": "", **{arm: str(work / "adapters" / arm) for arm in ARMS}}
    cfg = GenerateConfig(
        base=str(base), arms=arms, manifest=str(manifest), out=str(work / "generate"),
        images_per_prompt=images_per_prompt, prompts_per_image=None,  # every caption of each test image
    )
    result = generate_images(cfg, progress=True)
    return result.out, result.report["arms"]


def scene_accuracy(generations: Path, manifest: Path, scorer: Path) -> dict[str, Any]:
    """Per arm: share of images classified as their prompt image's scene (all prompts / truly clean prompts)."""
    from PIL import Image

    from dldc.t2i.scene_check import SceneClassifier, accuracy

    classifier = SceneClassifier.fit(scorer, manifest, ["train"])
    table = pd.read_parquet(generations / "generations.parquet")
    frame, meta = read_manifest(manifest)
    truth = truth_labels(dataset_root(manifest, meta)).set_index("pair_id")
    table["prompt_noisy"] = table["pair_id"].map(truth["noisy"]).astype(bool)
    table["predicted"] = classifier.predict([Image.open(generations / p).convert("RGB") for p in table["path"]])
    result = {}
    for arm, rows in table.groupby("arm"):
        clean_rows = rows[~rows["prompt_noisy"]]
        result[arm] = {
            "all_prompts": accuracy(rows["predicted"].tolist(), rows["scene"].tolist())["accuracy"],
            "clean_prompts": accuracy(clean_rows["predicted"].tolist(), clean_rows["scene"].tolist())["accuracy"],
            "n_all": len(rows),
            "n_clean": len(clean_rows),
        }
    return result


# --------------------------------------------------------------------------- metrics (dldc.evaluate)


def evaluate_arms(generations: Path, manifest: Path, scorer: Path) -> dict[str, Any] | None:
    """>>> METRIC SIDE: FD / KD / CLIP score per arm with ``dldc.evaluate``, when it is installed. <<<

    Returns ``None`` (and says so) when ``dldc.evaluate`` is not available; the evaluation
    engineer owns this function's figures.
    """
    try:
        from dldc.config import EvaluateConfig
        from dldc.evaluate import evaluate_generations
    except ImportError as err:
        print(f"dldc.evaluate not available ({err}); metric side skipped")
        return None
    spec = f"indomain:{scorer}"
    cfg = EvaluateConfig(
        generations=[str(generations)],
        manifest=str(manifest),
        feature_scorers={"indomain": spec},
        clip_scorers={"indomain": spec},
        device="cpu",
    )
    result = evaluate_generations(cfg=cfg, out="")
    figures: dict[str, Any] = {"arms": {}, "clean_vs_noisy": {}}
    metrics = sorted(set(result.table["metric"]))
    for arm in ("base", *ARMS):
        figures["arms"][arm] = {m: result.value(arm, m) for m in metrics}
    for metric in ("FD-indomain", "FD-indomain-intra", "CLIPScore-indomain"):
        if metric in metrics:
            figures["clean_vs_noisy"][metric] = result.compare("clean", "noisy", metric)
    return figures


# --------------------------------------------------------------------------- throughput


def plain_lora_loop(base: Path, manifest: Path, steps: int, batch_size: int, resolution: int, seed: int = 0) -> float:
    """A plain diffusers + peft LoRA loop (as ``train_text_to_image_lora.py``): images/s over ``steps`` steps.

    Each step decodes and transforms its images (DataLoader, no workers: the demo machine has
    two cores), VAE-encodes them, encodes the captions and trains the UNet's LoRA.
    """
    import torch.nn.functional as F
    from peft import LoraConfig
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from dldc.data.images import load_rgb
    from dldc.t2i.models import load_components

    parts = load_components(str(base))
    vae, text_encoder, unet, tokenizer, scheduler = (
        parts[k] for k in ("vae", "text_encoder", "unet", "tokenizer", "scheduler")
    )
    for module in (vae, text_encoder, unet):
        module.requires_grad_(False)
    torch.manual_seed(seed)
    unet.add_adapter(
        LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    frame, meta = read_manifest(manifest)
    frame = frame[frame["split"] == "train"]
    root = dataset_root(manifest, meta)
    transform = transforms.Compose(
        [
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(resolution),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )

    class Pairs(Dataset):
        def __len__(self) -> int:
            return len(frame)

        def __getitem__(self, i: int) -> dict[str, Any]:
            row = frame.iloc[i]
            ids = tokenizer(
                row.caption,
                max_length=tokenizer.model_max_length,
                padding="max_length",
                truncation=True,
                return_tensors="pt",
            ).input_ids[0]
            return {"pixel_values": transform(load_rgb(root / row.image)), "input_ids": ids}

    loader = DataLoader(Pairs(), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    unet.train()
    batches = iter(loader)
    start = time.perf_counter()
    for _ in range(steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        latents = vae.encode(batch["pixel_values"]).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        hidden = text_encoder(batch["input_ids"], return_dict=False)[0]
        prediction = unet(noisy, timesteps, hidden, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return steps * batch_size / (time.perf_counter() - start)


def ours_throughput(work: Path, base: Path, manifest: Path, steps: int) -> dict[str, float]:
    from dldc.t2i.finetune import finetune

    cfg = FinetuneConfig(
        base=str(base),
        manifest=str(manifest),
        out=str(work / "throughput"),
        steps=steps,
        sample_steps=0,
        checkpoint_every=10**6,
        snr_gamma=None,
        text_encoder_lora=False,  # the plain loop's LoRA: UNet attention only
    )
    report = finetune(cfg, progress=False)
    (work / "throughput" / "finetune.json").unlink()
    return {
        "images_per_s": report["throughput"]["images_per_s"],
        "setup_s": report["throughput"]["setup_s"],
        "batch_size": cfg.batch_size,
    }


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/t2i-bench"))
    parser.add_argument("--base", type=Path, default=Path("data/base/model"), help="demo base (built when missing)")
    parser.add_argument("--scorer", type=Path, default=Path("data/scorer"), help="in-domain scorer for the checks")
    parser.add_argument("--throughput-steps", type=int, default=30)
    parser.add_argument("--images-per-prompt", type=int, default=2, help="seeds per test prompt (tighter intervals)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    # Stage times measured in this run; a stage reused from --work reports where it came from instead.
    timings: dict[str, Any] = {}

    noisy, clean, data_steps = make_data(args.work)
    base = ensure_base(args.base, args.scorer if (args.scorer / "indomain.json").is_file() else None)
    timings["data"] = {name: provenance(step) for name, step in data_steps.items()}
    timings["base"] = {k: base[k] for k in ("seconds", "reused_from") if k in base}

    reports = finetune_arms(args.work, args.base, {"noisy": noisy, "clean": clean})
    timings["finetune"] = {arm: reports[arm]["provenance"] for arm in ARMS}
    mark = time.perf_counter()
    generations, counts = generate_arms(args.work, args.base, noisy, args.images_per_prompt)
    # images made now / reused (dldc keeps an arm's images while its settings and adapter hold)
    timings["generate"] = {"images": counts}
    if not any(c["reused"] for c in counts.values()):
        timings["generate"]["seconds"] = round(time.perf_counter() - mark, 1)

    figures: dict[str, Any] = {
        "data": {arm: {"train_pairs": reports[arm]["data"]["pairs"]} for arm in ARMS},
        "finetune": {  # a reused adapter's loss and speed are its own run's: see reused_from
            arm: {
                "final_loss": reports[arm]["final_loss"],
                "steps": reports[arm]["steps"],
                "images_per_s": reports[arm]["throughput"]["images_per_s"],
                "fingerprint": reports[arm]["fingerprint"],
                **reports[arm]["provenance"],
            }
            for arm in ARMS
        },
        "base": {"digest": base["digest"], "scene_check": base["report"].get("scene_check"),
                 **({"reused_from": base["reused_from"]} if "reused_from" in base else {})},
        "generate": {"images_per_prompt": args.images_per_prompt},
    }
    if (args.scorer / "indomain.json").is_file():
        from dldc.io import file_sha256

        record = args.scorer / "indomain.json"
        figures["scorer"] = {"path": str(args.scorer), "indomain_json_sha256": file_sha256(record)}
        figures["scene_accuracy"] = scene_accuracy(generations, noisy, args.scorer)
        figures["metrics"] = evaluate_arms(generations, noisy, args.scorer)
    else:
        print(f"no in-domain scorer at {args.scorer} (run `dldc train-scorer`): scene accuracy and metrics skipped")

    mark = time.perf_counter()
    ours = ours_throughput(args.work, args.base, noisy, args.throughput_steps)
    plain = plain_lora_loop(args.base, noisy, args.throughput_steps, ours["batch_size"], SynthConfig().size)
    timings["throughput"] = {"seconds": round(time.perf_counter() - mark, 1)}
    figures["throughput"] = {
        "ours_images_per_s": ours["images_per_s"],
        "ours_setup_s": ours["setup_s"],
        "plain_diffusers_peft_images_per_s": round(plain, 3),
        "ratio": round(ours["images_per_s"] / plain, 2),
        "steps": args.throughput_steps,
        "batch_size": ours["batch_size"],
    }
    figures["timings"] = timings
    figures["torch_threads"] = torch.get_num_threads()
    write_result("t2i_cleaning", figures)


if __name__ == "__main__":
    main()
