"""Speech features and CLIP loss, lmstack next to its peers: log-mel (torch) vs librosa on the same
audio and STFT settings (speed and largest difference), and the CLIP loss vs transformers' CLIPModel.
Accuracy numbers for the multimodal models come from `lmstack multimodal all` (see its report.md).

    .venv/bin/python benchmarks/multimodal_features.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from lmstack.machine import run_benchmark
from lmstack.multimodal.audio import mel_spectrogram, power_to_db
from lmstack.multimodal.clip import clip_loss


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="2 s of audio, 2 repeats")
    args = ap.parse_args()
    try:
        import librosa
        import transformers
    except ImportError as e:
        raise SystemExit(f"this benchmark needs the dev extra (librosa, transformers): {e}")
    sr, seconds = 16000, 2 if args.quick else 60
    repeats = 2 if args.quick else 5
    y = np.random.default_rng(0).standard_normal(sr * seconds).astype(np.float32) * 0.1
    kw = dict(n_fft=512, hop_length=160, win_length=400, n_mels=80)
    ours_t = _best_of(lambda: mel_spectrogram(torch.from_numpy(y), sr, **kw), repeats)
    ref_t = _best_of(lambda: librosa.feature.melspectrogram(y=y, sr=sr, pad_mode="constant", **kw), repeats)
    ours = power_to_db(mel_spectrogram(torch.from_numpy(y.astype(np.float64)), sr, **kw)).numpy()
    ref = librosa.power_to_db(librosa.feature.melspectrogram(y=y.astype(np.float64), sr=sr, pad_mode="constant", **kw))
    db_diff = float(np.abs(ours - ref).max())

    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    hf = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():
        out = hf(input_ids=torch.randint(0, 64, (64, 10)), pixel_values=torch.randn(64, 3, 32, 32), return_loss=True)
        loss_diff = abs(float(clip_loss(out.image_embeds, out.text_embeds, hf.logit_scale)) - float(out.loss))

    print(f"| what | lmstack | peer | |")
    print("|---|---|---|---|")
    print(f"| log-mel of {seconds} s audio (80 mels), seconds | {ours_t:.4f} | {ref_t:.4f} (librosa) | "
          f"max dB diff {db_diff:.2e} |")
    print(f"| CLIP loss, batch 64 | | transformers CLIPModel | abs diff {loss_diff:.2e} |")
    print(f"result: logmel_speed_vs_librosa={ref_t / ours_t:.2f}")
    print(f"result: logmel_max_db_diff={db_diff:.3g}")
    print(f"result: clip_loss_abs_diff={loss_diff:.3g}")
    if not (db_diff < 1e-4 and loss_diff < 1e-5 and math.isfinite(ours_t)):
        raise SystemExit("lmstack disagrees with its peer beyond the tolerance")


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
