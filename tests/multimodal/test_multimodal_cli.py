"""`lmstack multimodal` end to end at the tiny size: every part trains, scores, saves and reloads."""

import io
import json
import sys
import wave

import numpy as np
import pytest

from lmstack.cli import main as lmstack_main
from lmstack.multimodal.experiment import get_size, load_clip, load_stt, load_vlm
from lmstack.multimodal.speech import espeak_available


def test_multimodal_all_tiny(tmp_path, capsys, monkeypatch):
    out = tmp_path / "mm"
    assert lmstack_main(["multimodal", "all", "--size", "tiny", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "## clip" in printed and "## stt" in printed and "report:" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"zeroshot_digit_en", "i2t_R@1_en", "t2i_R@5_zh", "train_seconds"} <= set(metrics["clip"])
    assert {"stage1_caption_chrf_en", "stage2_vqa_acc_zh", "stage2_caption_exact_en"} <= set(metrics["vlm"])
    assert {"heldout_sentences_unseen_voices_wer", "seen_sentences_cer"} <= set(metrics["stt"])
    assert metrics["stt"]["engine"] == ("espeak" if espeak_available() else "tones")  # --engine auto
    for part in ("clip", "vlm", "stt"):
        assert (out / part / "model.safetensors").exists() and (out / "plots" / f"{part}_loss.png").exists()
        assert 0 <= metrics[part]["train_seconds"] < 120
    assert "## vlm" in (out / "report.md").read_text()
    load_clip(out / "clip")
    load_stt(out / "stt")
    model, tok = load_vlm(out / "vlm")
    assert model.n_image_tokens == 17

    # the BLIP-2-like projector through the CLI, reusing the CLIP checkpoint in the same directory
    assert lmstack_main(["multimodal", "vlm", "--size", "tiny", "--out", str(out), "--projector", "qformer",
                         "--no-progress"]) == 0
    assert load_vlm(out / "vlm")[0].n_image_tokens == 8

    # describe an image file, transcribe a wav file, write sample images
    assert lmstack_main(["multimodal", "images", "--n", "4", "--dir", str(tmp_path / "img")]) == 0
    lines = (tmp_path / "img" / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and "zh" in json.loads(lines[0])["captions"]
    capsys.readouterr()
    assert lmstack_main(["multimodal", "describe", "--out", str(out), "--image", str(tmp_path / "img" / "0000.png"),
                         "--prompt", "what shape is it?"]) == 0
    described = capsys.readouterr().out.strip()
    # `lmstack chat DIR --image FILE` asks the same model, a question per line, with the same answer
    monkeypatch.setattr(sys, "stdin", io.StringIO("what shape is it?\n/quit\n"))
    assert lmstack_main(["chat", str(out), "--image", str(tmp_path / "img" / "0000.png")]) == 0
    assert capsys.readouterr().out.rstrip("\n") == f"assistant> {described}"
    pcm = (np.sin(np.arange(8000) / 3) * 8000).astype("<i2")
    with wave.open(str(tmp_path / "x.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    assert lmstack_main(["multimodal", "transcribe", "--out", str(out), "--wav", str(tmp_path / "x.wav")]) == 0


def test_cli_errors_are_actionable(tmp_path, capsys):
    assert lmstack_main(["multimodal", "describe", "--out", str(tmp_path), "--image", "x.png"]) == 2
    assert "lmstack multimodal vlm --out" in capsys.readouterr().err
    assert lmstack_main(["multimodal", "clip", "--size", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown size" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown size field"):
        get_size("tiny", clip_stepz=3)
    with pytest.raises(SystemExit, match="key=value"):
        lmstack_main(["multimodal", "clip", "--size", "tiny", "--out", str(tmp_path), "--set", "clip_steps"])


def test_experiment_multimodal_runs_the_parts(tmp_path):
    from lmstack.experiments.cli import main
    assert main(["multimodal", "--out", str(tmp_path), "--set", "size=tiny", "--set", "engine=tones"]) == 0
    assert (tmp_path / "report.md").exists() and (tmp_path / "metrics.json").exists()
