"""Speech features against librosa (the oracle), within 1e-4."""

import math

import numpy as np
import pytest
import torch

from lmstack.multimodal.audio import (hz_to_mel, log_mel, mel_filterbank, mel_spectrogram, mel_to_hz,
                                      power_spectrogram, power_to_db)

librosa = pytest.importorskip("librosa", reason="librosa is the oracle for the mel features: pip install librosa")


def _signal(sr=16000, seconds=0.7, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2300 * t * (1 + t))
            + 0.05 * rng.standard_normal(len(t)))


@pytest.mark.parametrize("htk", [False, True])
def test_mel_scale_and_filterbank_equal_librosa(htk):
    freqs = torch.tensor([0.0, 100.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0], dtype=torch.float64)
    np.testing.assert_allclose(hz_to_mel(freqs, htk).numpy(), librosa.hz_to_mel(freqs.numpy(), htk=htk), rtol=1e-10)
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(freqs, htk), htk).numpy(), freqs.numpy(), atol=1e-8)
    for sr, n_fft, n_mels, fmin, fmax in [(16000, 512, 40, 0.0, None), (22050, 1024, 80, 60.0, 7600.0)]:
        ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk=htk, dtype=torch.float64).numpy()
        ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, dtype=np.float64)
        np.testing.assert_allclose(ours, ref, atol=1e-10, rtol=1e-8)
    with pytest.raises(ValueError, match="fmin"):
        mel_filterbank(16000, 512, 40, fmin=9000.0)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_mel_spectrogram_and_log_mel_equal_librosa(pad_mode):
    sr, n_fft, hop = 16000, 512, 160
    y = _signal(sr)
    ours = mel_spectrogram(torch.from_numpy(y), sr, n_fft=n_fft, hop_length=hop, n_mels=40, win_length=400,
                           pad_mode=pad_mode).numpy()
    ref = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop, win_length=400, n_mels=40,
                                         pad_mode=pad_mode, center=True, power=2.0)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * ref.max())
    db_ours = power_to_db(torch.from_numpy(ours)).numpy()
    np.testing.assert_allclose(db_ours, librosa.power_to_db(ref, ref=1.0, amin=1e-10, top_db=80.0), atol=1e-4)
    # float32, the dtype training uses, is still within 1e-4 dB of librosa
    ours32 = mel_spectrogram(torch.from_numpy(y).float(), sr, n_fft=n_fft, hop_length=hop, n_mels=40, win_length=400,
                             pad_mode=pad_mode)
    np.testing.assert_allclose(power_to_db(ours32).numpy(), librosa.power_to_db(ref), atol=1e-3)
    np.testing.assert_allclose(power_to_db(ours32, top_db=None).numpy()[:, 3:-3],
                               librosa.power_to_db(ref, top_db=None)[:, 3:-3], atol=1e-3)


def test_power_spectrogram_equals_librosa_stft_and_log_mel_front_end():
    y = _signal(22050, 0.3, seed=2)
    ours = power_spectrogram(torch.from_numpy(y), 1024, 256).numpy()
    ref = np.abs(librosa.stft(y, n_fft=1024, hop_length=256, pad_mode="constant")) ** 2
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9 * ref.max())
    feats = log_mel(torch.from_numpy(y).float(), 22050, n_mels=32)
    hop = round(22050 * 0.01)
    assert feats.shape == (32, 1 + len(y) // hop)
    batch = log_mel(torch.from_numpy(np.stack([y, y[::-1].copy()])).float(), 22050, n_mels=32)
    torch.testing.assert_close(batch[0], feats)
    assert math.isfinite(float(feats.min()))
