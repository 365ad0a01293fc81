"""Speech features in torch: short-time Fourier transform -> power spectrogram -> mel filterbank ->
log-mel. The mel scale and the filterbank follow Slaney's Auditory Toolbox (the librosa default) or
HTK (``htk=True``); the tests check both against librosa."""

from __future__ import annotations

import math

import torch


def hz_to_mel(freq: torch.Tensor, htk: bool = False) -> torch.Tensor:
    if htk:  # HTK: 2595 log10(1 + f / 700)
        return 2595.0 * torch.log10(1.0 + freq / 700.0)
    # Slaney: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above (27 mels per factor 6.4)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    linear = freq / f_sp
    log = min_log_mel + torch.log(torch.clamp(freq, min=min_log_hz) / min_log_hz) / logstep
    return torch.where(freq >= min_log_hz, log, linear)


def mel_to_hz(mel: torch.Tensor, htk: bool = False) -> torch.Tensor:
    if htk:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(mel >= min_log_mel, min_log_hz * torch.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None,
                   htk: bool = False, norm: str | None = "slaney", dtype=torch.float32) -> torch.Tensor:
    """[n_mels, n_fft // 2 + 1] triangular filters, evenly spaced on the mel scale.

    norm="slaney" divides each triangle by its width in Hz, so every filter has the same area."""
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"mel filterbank needs 0 <= fmin < fmax <= sample_rate/2; got fmin={fmin}, fmax={fmax}, "
                         f"sample_rate={sample_rate}")
    if norm not in (None, "slaney"):
        raise ValueError(f"norm={norm!r}: use 'slaney' or None")
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = hz_to_mel(torch.tensor(float(fmin), dtype=torch.float64), htk), hz_to_mel(torch.tensor(float(fmax), dtype=torch.float64), htk)
    edges = mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64), htk)
    widths = edges[1:] - edges[:-1]
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    if norm == "slaney":
        weights = weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.to(dtype)


def power_spectrogram(wave: torch.Tensor, n_fft: int = 400, hop_length: int = 160, win_length: int | None = None,
                      center: bool = True, pad_mode: str = "constant", power: float = 2.0) -> torch.Tensor:
    """[..., samples] -> |STFT|^power [..., n_fft // 2 + 1, frames] with a periodic Hann window."""
    win_length = win_length or n_fft
    window = torch.hann_window(win_length, periodic=True, dtype=wave.dtype, device=wave.device)
    shape = wave.shape
    spec = torch.stft(wave.reshape(-1, shape[-1]), n_fft, hop_length=hop_length, win_length=win_length,
                      window=window, center=center, pad_mode=pad_mode, return_complex=True)
    spec = spec.abs() ** power
    return spec.reshape(*shape[:-1], *spec.shape[-2:])


def mel_spectrogram(wave: torch.Tensor, sample_rate: int, n_fft: int = 400, hop_length: int = 160,
                    n_mels: int = 40, fmin: float = 0.0, fmax: float | None = None, htk: bool = False,
                    norm: str | None = "slaney", **stft_kwargs) -> torch.Tensor:
    """[..., samples] -> [..., n_mels, frames] mel-weighted power."""
    spec = power_spectrogram(wave, n_fft, hop_length, **stft_kwargs)
    fb = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm, dtype=spec.dtype).to(spec.device)
    return torch.matmul(fb, spec)


def power_to_db(spec: torch.Tensor, ref: float = 1.0, amin: float = 1e-10, top_db: float | None = 80.0) -> torch.Tensor:
    """10 log10(max(S, amin) / ref), floored at (max - top_db) over the whole input (librosa's rule)."""
    db = 10.0 * torch.log10(torch.clamp(spec, min=amin)) - 10.0 * math.log10(max(amin, ref))
    if top_db is not None:
        db = torch.maximum(db, db.max() - top_db)
    return db


def log_mel(wave: torch.Tensor, sample_rate: int, n_mels: int = 40, window_ms: float = 25.0, hop_ms: float = 10.0,
            floor: float = 1e-6) -> torch.Tensor:
    """The STT front end: [..., samples] -> natural-log mel energies [..., n_mels, frames], 25 ms Hann
    windows every 10 ms, FFT size the next power of two."""
    win = int(round(sample_rate * window_ms / 1000))
    hop = int(round(sample_rate * hop_ms / 1000))
    n_fft = 1 << (win - 1).bit_length()
    mel = mel_spectrogram(wave, sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, win_length=win)
    return torch.log(mel + floor)
