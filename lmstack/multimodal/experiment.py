"""The multimodal experiment: CLIP, image-to-text and speech-to-text, each trained and scored on data
lmstack generates itself, at a named size ("tiny" for CI, "default" for the README numbers).

Everything lands in one output directory: ``tokenizer.json``, ``clip/``, ``vlm/``, ``stt/`` (each
model.safetensors + config.json), ``metrics.json``, ``plots/*.png`` and ``report.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lmstack.model import Transformer
from lmstack.multimodal.clip import CLIP, CLIPConfig, evaluate_clip, train_clip
from lmstack.multimodal.common import load_checkpoint, save_checkpoint
from lmstack.multimodal.images import images_to_tensor, make_image_dataset
from lmstack.multimodal.speech import (default_voices, espeak_available, make_speech_dataset, split_sentences,
                                       world_sentences)
from lmstack.multimodal.stt import STTConfig, SpeechRecognizer, evaluate_stt, train_stt
from lmstack.multimodal.text import build_tokenizer, image_token_id, world_texts
from lmstack.multimodal.vit import EncoderConfig
from lmstack.multimodal.vlm import VisionLanguageModel, evaluate_vlm, lm_config, train_stage, train_text_lm
from lmstack.runs import atomic_write_json, atomic_write_text, read_json
from lmstack.tokenizer import Tokenizer

PARTS = ("clip", "vlm", "stt")


@dataclass
class Size:
    n_train_images: int = 4000
    n_test_images: int = 400
    image_size: int = 32
    patch_size: int = 4
    encoder_width: int = 64
    encoder_layers: int = 2
    clip_steps: int = 800
    clip_batch: int = 128
    lm_width: int = 128
    lm_layers: int = 2
    text_steps: int = 300
    align_steps: int = 300
    vqa_steps: int = 700
    vlm_batch: int = 48
    n_train_utterances: int = 1200
    n_test_utterances: int = 150
    stt_width: int = 96
    stt_layers: int = 3
    stt_steps: int = 1200
    stt_batch: int = 24


SIZES = {
    "default": Size(),
    "tiny": Size(n_train_images=160, n_test_images=32, patch_size=8, encoder_width=32, encoder_layers=1,
                 clip_steps=15, clip_batch=32, lm_width=48, lm_layers=1, text_steps=10, align_steps=10,
                 vqa_steps=10, vlm_batch=16, n_train_utterances=24, n_test_utterances=8, stt_width=32,
                 stt_layers=1, stt_steps=10, stt_batch=8),
}


def get_size(name: str, **overrides) -> Size:
    if name not in SIZES:
        raise ValueError(f"unknown size {name!r}; choose one of {sorted(SIZES)}")
    bad = [k for k in overrides if not hasattr(SIZES[name], k)]
    if bad:
        raise ValueError(f"unknown size field {bad[0]!r}; fields: {', '.join(Size.__dataclass_fields__)}")
    return replace(SIZES[name], **overrides)


def _image_data(size: Size, seed: int):
    train = make_image_dataset(size.n_train_images, seed=seed, size=size.image_size)
    test = make_image_dataset(size.n_test_images, seed=seed + 1000, size=size.image_size)
    return train, test


def _tokenizer(out: Path, train) -> Tokenizer:
    path = out / "tokenizer.json"
    if path.exists():
        return Tokenizer.load(path)
    tok = build_tokenizer(world_texts(train))
    tok.save(path)
    return tok


def _encoder(size: Size, **kw) -> EncoderConfig:
    return EncoderConfig(d_model=size.encoder_width, n_layers=size.encoder_layers, n_heads=4,
                         image_size=size.image_size, patch_size=size.patch_size, **kw)


def _read_meta(directory: Path, part: str) -> dict:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no trained {part} model here (config.json missing); train one with "
                                f"`lmstack multimodal {part} --out {Path(directory).parent}`")
    return read_json(path)


def load_clip(directory: Path) -> CLIP:
    meta = _read_meta(directory, "clip")
    model = CLIP(CLIPConfig.from_dict(meta["config"]))
    load_checkpoint(model, directory)
    return model.eval()


def run_clip(out: Path, size: Size, seed: int = 0, progress: bool = True) -> dict:
    train, test = _image_data(size, seed)
    tok = _tokenizer(out, train)
    torch.manual_seed(seed)
    cfg = CLIPConfig(vision=_encoder(size), text=_encoder(size, vocab_size=tok.vocab_size), embed_dim=size.encoder_width)
    model = CLIP(cfg)
    log = train_clip(model, tok, train, size.clip_steps, size.clip_batch, seed=seed, progress=progress)
    metrics = evaluate_clip(model, tok, test)
    metrics["train_seconds"] = log["seconds"]
    save_checkpoint(model, out / "clip", {"format": "lmstack-clip", "config": cfg.to_dict(), "metrics": metrics})
    _plot(out, "clip", {"clip": log["losses"]})
    return metrics


def load_vlm(directory: Path) -> tuple[VisionLanguageModel, Tokenizer]:
    directory = Path(directory)
    meta = _read_meta(directory, "vlm")
    tok = Tokenizer.load(directory / "tokenizer.json")
    from lmstack.model import ModelConfig
    from lmstack.multimodal.vit import VisionTransformer

    model = VisionLanguageModel(VisionTransformer(EncoderConfig(**meta["vision"])),
                                Transformer(ModelConfig.from_dict(meta["lm"])), image_token_id(tok), meta["projector"],
                                meta.get("n_queries", 8))
    load_checkpoint(model, directory)
    return model.eval(), tok


def run_vlm(out: Path, size: Size, seed: int = 0, projector: str = "mlp", progress: bool = True) -> dict:
    """Stages 0-2 on top of the CLIP vision encoder in ``out/clip`` (trained first if missing)."""
    if not (out / "clip" / "config.json").exists():
        run_clip(out, size, seed, progress)
    train, test = _image_data(size, seed)
    tok = _tokenizer(out, train)
    clip = load_clip(out / "clip")
    torch.manual_seed(seed)
    lm = Transformer(lm_config(tok.vocab_size, d_model=size.lm_width, n_layers=size.lm_layers,
                               max_seq_len=clip.vision.config.n_patches + 64))
    model = VisionLanguageModel(clip.vision, lm, image_token_id(tok), projector)
    images = images_to_tensor([e.image for e in train])
    b = size.vlm_batch
    logs = {"stage 0 text": train_text_lm(model, tok, train, size.text_steps, b, seed=seed, progress=progress)}
    logs["stage 1 align"] = train_stage(model, tok, train, images, {"caption": 1.0}, [model.projector],
                                        size.align_steps, "vlm stage 1 (align)", b, lr=3e-3, seed=seed,
                                        progress=progress)
    after_align = evaluate_vlm(model, tok, test)
    logs["stage 2 vqa"] = train_stage(model, tok, train, images, {"caption": 0.3, "vqa": 0.7},
                                      [model.projector, model.lm], size.vqa_steps, "vlm stage 2 (vqa)", b,
                                      lr=2e-3, seed=seed + 1, progress=progress)
    metrics = {f"stage1_{k}": v for k, v in after_align.items()}
    metrics.update({f"stage2_{k}": v for k, v in evaluate_vlm(model, tok, test).items()})
    metrics["train_seconds"] = sum(log["seconds"] for log in logs.values())
    save_checkpoint(model, out / "vlm", {"format": "lmstack-vlm", "vision": clip.vision.config.to_dict(),
                                        "lm": lm.config.to_dict(), "projector": projector, "n_queries": model.n_queries,
                                        "metrics": metrics})
    tok.save(out / "vlm" / "tokenizer.json")
    _plot(out, "vlm", {k: v["losses"] for k, v in logs.items()})
    return metrics


def load_stt(directory: Path) -> SpeechRecognizer:
    meta = _read_meta(directory, "stt")
    model = SpeechRecognizer(STTConfig(**meta["config"]))
    load_checkpoint(model, directory)
    return model.eval()


def run_stt(out: Path, size: Size, seed: int = 0, engine: str = "auto", progress: bool = True) -> dict:
    """engine "auto" is espeak-ng where it is installed, else the built-in tone alphabet."""
    if engine == "auto":
        engine = "espeak" if espeak_available() else "tones"
    train_sents, test_sents = split_sentences(world_sentences(), seed=seed)
    voices, unseen = default_voices(engine)
    train = make_speech_dataset(train_sents, voices, size.n_train_utterances, seed, engine)
    n = size.n_test_utterances
    tests = {"seen_sentences": make_speech_dataset(train_sents, voices, n, seed + 1, engine),
             "heldout_sentences": make_speech_dataset(test_sents, voices, n, seed + 2, engine),
             "heldout_sentences_unseen_voices": make_speech_dataset(test_sents, unseen, n, seed + 3, engine)}
    torch.manual_seed(seed)
    cfg = STTConfig(d_model=size.stt_width, n_layers=size.stt_layers)
    model = SpeechRecognizer(cfg)
    log = train_stt(model, train, size.stt_steps, size.stt_batch, seed=seed, progress=progress)
    metrics: dict = {"engine": engine}
    for name, data in tests.items():
        metrics.update({f"{name}_{k}": v for k, v in evaluate_stt(model, data).items()})
    metrics["train_seconds"] = log["seconds"]
    save_checkpoint(model, out / "stt", {"format": "lmstack-stt", "config": cfg.to_dict(), "engine": engine,
                                        "metrics": metrics})
    _plot(out, "stt", {"ctc": log["losses"]})
    return metrics


def _plot(out: Path, name: str, curves: dict[str, list[float]]) -> None:
    from lmstack.report import pyplot

    plt = pyplot()
    (out / "plots").mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    start = 0
    for label, losses in curves.items():
        ax.plot(range(start, start + len(losses)), losses, label=label)
        start += len(losses)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "plots" / f"{name}_loss.png", dpi=100)
    plt.close(fig)


def render_report(out: Path, results: dict[str, dict]) -> Path:
    from lmstack.report import environment, metrics_table

    lines = ["# lmstack multimodal", ""]
    for part, metrics in results.items():
        lines += [f"## {part}", "", metrics_table(metrics)]
        if (out / "plots" / f"{part}_loss.png").exists():
            lines += [f"![{part} loss](plots/{part}_loss.png)", ""]
    lines += ["## environment", "", metrics_table(environment())]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def run_parts(out: str | Path, parts=PARTS, size: str = "default", seed: int = 0, engine: str = "auto",
              projector: str = "mlp", progress: bool = True, **size_overrides) -> dict[str, dict]:
    """Run the named parts in order into ``out`` and write metrics.json and report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sz = get_size(size, **size_overrides)
    path = out / "metrics.json"
    results = read_json(path) if path.exists() else {}
    for part in parts:
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}; choose from {PARTS}")
        t0 = time.perf_counter()
        if part == "clip":
            results["clip"] = run_clip(out, sz, seed, progress)
        elif part == "vlm":
            results["vlm"] = run_vlm(out, sz, seed, projector, progress)
        else:
            results["stt"] = run_stt(out, sz, seed, engine, progress)
        results[part]["wall_seconds"] = time.perf_counter() - t0
        results[part]["size"] = size
        atomic_write_json(path, results)
    render_report(out, results)
    return results
