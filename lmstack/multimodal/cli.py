"""``lmstack multimodal``: train and evaluate CLIP, image-to-text and speech-to-text on generated data.

    lmstack multimodal all   [--out DIR] [--size tiny|default] [--engine auto|espeak|tones]
    lmstack multimodal clip | vlm | stt   (same options; vlm trains CLIP first if DIR has none)
    lmstack multimodal describe --out DIR --image FILE [--prompt TEXT]
    lmstack multimodal transcribe --out DIR --wav FILE
    lmstack multimodal images --n 16 --dir DIR   (write sample pictures with their captions)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"lmstack multimodal: --set {item!r} must look like key=value (e.g. clip_steps=100)")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise SystemExit(f"lmstack multimodal: --set {item!r}: size fields are integers") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmstack multimodal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (("all", "CLIP, then image-to-text, then speech-to-text"),
                            ("clip", "train + evaluate CLIP (zero-shot, retrieval recall@1/5)"),
                            ("vlm", "train + evaluate image-to-text (captions exact/chrF, VQA accuracy)"),
                            ("stt", "train + evaluate speech-to-text (WER/CER, held-out sentences and voices)")):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--out", default="runs/multimodal", help="output directory (default: runs/multimodal)")
        s.add_argument("--size", default="default", help="tiny (seconds, for CI) or default (the README numbers)")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--engine", default="auto",
                       help="speech synthesizer: espeak (espeak-ng), tones (built in, not speech) or auto "
                            "(espeak where installed, else tones)")
        s.add_argument("--projector", default="mlp", help="vlm projector: mlp, linear or qformer (BLIP-2-like learned queries)")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=INT",
                       help="override a size field, e.g. --set clip_steps=200 (repeatable)")
        s.add_argument("--no-progress", action="store_true", help="hide progress bars")
    s = sub.add_parser("describe", help="answer a prompt about an image file with a trained vlm")
    s.add_argument("--out", default="runs/multimodal")
    s.add_argument("--image", required=True)
    s.add_argument("--prompt", default="describe the image.")
    s = sub.add_parser("transcribe", help="transcribe a 16-bit WAV file with a trained stt model")
    s.add_argument("--out", default="runs/multimodal")
    s.add_argument("--wav", required=True)
    s = sub.add_parser("images", help="write sample pictures (PNG) and their captions/questions (JSONL)")
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--dir", default="runs/multimodal/samples")
    s.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"lmstack multimodal: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    if args.command in ("all", "clip", "vlm", "stt"):
        from lmstack.multimodal.experiment import PARTS, run_parts

        parts = PARTS if args.command == "all" else (args.command,)
        results = run_parts(args.out, parts, args.size, args.seed, args.engine, args.projector,
                            progress=not args.no_progress, **_parse_overrides(args.overrides))
        for part in parts:
            print(f"## {part}")
            for k, v in results[part].items():
                print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
        print(f"report: {Path(args.out) / 'report.md'}")
        return 0
    if args.command == "describe":
        from lmstack.multimodal.experiment import load_vlm
        from lmstack.multimodal.images import load_image
        from lmstack.multimodal.vlm import describe

        model, tok = load_vlm(Path(args.out) / "vlm")
        image = load_image(args.image, model.vision.config.image_size)
        print(describe(model, tok, image, args.prompt))
        return 0
    if args.command == "transcribe":
        from lmstack.multimodal.experiment import load_stt
        from lmstack.multimodal.speech import SpeechExample, read_wav
        from lmstack.multimodal.stt import transcribe

        wav_path = Path(args.wav)
        if not wav_path.exists():
            raise FileNotFoundError(f"{wav_path}: no such WAV file")
        audio, rate = read_wav(wav_path.read_bytes())
        print(transcribe(load_stt(Path(args.out) / "stt"), [SpeechExample("", audio, rate, "")])[0])
        return 0
    # images
    from lmstack.multimodal.images import make_image_dataset, save_image

    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "captions.jsonl", "w", encoding="utf-8") as f:
        for i, ex in enumerate(make_image_dataset(args.n, seed=args.seed)):
            save_image(ex.image, directory / f"{i:04d}.png")
            f.write(json.dumps({"file": f"{i:04d}.png", "kind": ex.kind, "captions": ex.captions,
                                "questions": ex.questions}, ensure_ascii=False) + "\n")
    print(f"wrote {args.n} images to {directory}")
    return 0


MULTIMODAL_OPTIONS = ("size", "seed", "engine", "projector")


def experiment_main(overrides: list[str], out: Path) -> int:
    """``lmstack experiment multimodal`` is ``lmstack multimodal all`` with the experiments' --set syntax:
    the keys in MULTIMODAL_OPTIONS are its options, anything else is a size field (clip_steps=200)."""
    argv = ["all", "--out", str(out)]
    for text in overrides:
        key, _, value = text.partition("=")
        if not value:
            raise ValueError(f"--set {text!r}: expected KEY=VALUE")
        argv += [f"--{key}", value] if key in MULTIMODAL_OPTIONS else ["--set", text]
    return int(main(argv) or 0)


def image_chat(out_dir: str | Path, image_file: str | Path, max_new_tokens: int = 32, inp=None, out=None) -> int:
    """``lmstack chat OUT_DIR --image FILE``: ask the image-to-text model of ``lmstack multimodal`` about one
    picture, one question per line (each answered on its own: the model was trained on single turns)."""
    import sys

    from lmstack.multimodal.experiment import load_vlm
    from lmstack.multimodal.images import load_image
    from lmstack.multimodal.vlm import describe

    inp, out = inp or sys.stdin, out or sys.stdout
    vlm_dir = Path(out_dir) / "vlm"
    if not vlm_dir.is_dir():
        print(f"lmstack chat: {vlm_dir}: no image-to-text model here; train one with "
              f"`lmstack multimodal vlm --out {out_dir}`", file=sys.stderr)
        return 2
    model, tok = load_vlm(vlm_dir)
    image = load_image(image_file, model.vision.config.image_size)
    print(f"lmstack chat: {vlm_dir} about {image_file}; one question per line, /quit to leave", file=sys.stderr)
    for line in inp:
        question = line.strip()
        if question in ("/quit", "/exit", "/q"):
            break
        if question:
            print(f"assistant> {describe(model, tok, image, question, max_new_tokens)}", file=out, flush=True)
    return 0

