"""Spoken sentences of the picture world, for speech-to-text.

Two synthesizers make the audio:

- ``espeak``: the ``espeak-ng`` program (Debian package ``espeak-ng``), real synthetic speech with many
  voices (``en-us+m3``, ``en-gb-x-rp+f2``, ...), speeds and pitches;
- ``tones``: a built-in stand-in that needs nothing installed. It is NOT speech: each letter is a
  two-tone chord (like telephone DTMF keys) with a voice-dependent pitch, speed and timbre. It lets the
  whole STT pipeline (features, conv front end, encoder, CTC) train and be tested anywhere.

Both add background noise at a random signal-to-noise ratio. "Unseen voices" are voices (or tone
voices) that no training utterance uses.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmstack.multimodal.images import COLOURS, COUNT_WORDS, POSITIONS, SHAPE_PLURALS, SHAPES

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESPEAK_TRAIN_VOICES = ("en-us+m1", "en-us+f2", "en+m3", "en-gb-x-rp+f1", "en-us+m4", "en+f3")
ESPEAK_UNSEEN_VOICES = ("en-gb-scotland+m7", "en-us+f4", "en-029+m2")
TONES_TRAIN_VOICES = ("tone-0.85-a", "tone-0.95-b", "tone-1.05-a", "tone-1.15-b", "tone-1.0-c")
TONES_UNSEEN_VOICES = ("tone-0.9-c", "tone-1.1-a", "tone-1.2-c")
ENGINES = ("espeak", "tones")  # experiment.run_stt also takes "auto": espeak where installed


def world_sentences() -> list[str]:
    """Every English caption of the picture world (digits spelled out), in a fixed order."""
    out = []
    for c in COLOURS:
        for s in SHAPES:
            for p in POSITIONS:
                out.append(f"a {c} {s} in the center" if p == "center" else f"a {c} {s} at the {p}")
            for n, (word, _) in COUNT_WORDS.items():
                out.append(f"{word} {c} {s if n == 1 else SHAPE_PLURALS[s]}")
    for d in DIGIT_WORDS:
        for c in COLOURS:
            out.append(f"the digit {d} in {c}")
    for c1 in COLOURS:
        for s1 in SHAPES:
            for c2 in COLOURS:
                for s2 in SHAPES:
                    if c1 != c2 and s1 != s2:
                        out.append(f"a {c1} {s1} to the left of a {c2} {s2}")
    return out


def split_sentences(sentences: list[str], held_out: float = 0.15, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) sentences; held-out sentences are never spoken in training."""
    order = np.random.default_rng(seed).permutation(len(sentences))
    n_test = max(1, int(round(held_out * len(sentences))))
    test = sorted(sentences[i] for i in order[:n_test])
    train = sorted(sentences[i] for i in order[n_test:])
    return train, test


@dataclass
class SpeechExample:
    text: str
    wave: np.ndarray  # float32 [samples] in [-1, 1]
    sample_rate: int
    voice: str


# ---------------------------------------------------------------------------------------------- espeak-ng
def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize_espeak(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Run espeak-ng and return (float32 wave, sample rate)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed; install it with `apt-get install -y espeak-ng` "
                           "or use the built-in tone synthesizer (engine='tones')")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.wav"
        proc = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 or not path.exists():
            raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.strip() or proc.returncode}")
        return read_wav(path.read_bytes())


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV bytes -> (float32 mono wave, sample rate)."""
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"expected 16-bit PCM WAV, got {8 * w.getsampwidth()}-bit")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(1)
    return pcm, rate


# ---------------------------------------------------------------------------------------------- tones
TONE_ALPHABET = "abcdefghijklmnopqrstuvwxyz'"
_LOW = (300.0, 370.0, 455.0, 560.0, 690.0, 850.0)
_HIGH = (1100.0, 1330.0, 1610.0, 1950.0, 2360.0)
_TIMBRES = {"a": (1.0, 0.0), "b": (1.0, 0.35), "c": (0.7, 0.6)}  # (fundamental, 2nd-harmonic) weights
TONE_RATE = 16000


def parse_tone_voice(voice: str) -> tuple[float, str]:
    try:
        kind, pitch, timbre = voice.split("-")
        if kind != "tone" or timbre not in _TIMBRES:
            raise ValueError
        return float(pitch), timbre
    except ValueError:
        raise ValueError(f"tone voice {voice!r} must look like 'tone-<pitch factor>-<timbre in "
                         f"{''.join(_TIMBRES)}>', e.g. 'tone-1.05-a'") from None


def synthesize_tones(text: str, voice: str, speed: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Each letter a chord of two tones (scaled by the voice's pitch) lasting about ``speed`` seconds, with
    jittered durations and soft edges; a space is a short pause."""
    pitch, timbre = parse_tone_voice(voice)
    w1, w2 = _TIMBRES[timbre]
    pieces = [np.zeros(int(0.08 * TONE_RATE), np.float32)]
    for ch in text:
        dur = speed * rng.uniform(0.75, 1.25)
        n = int(dur * TONE_RATE)
        if ch == " ":
            pieces.append(np.zeros(int(0.6 * n), np.float32))
            continue
        k = TONE_ALPHABET.find(ch)
        if k < 0:
            raise ValueError(f"the tone synthesizer cannot say {ch!r} (in {text!r}); it knows {TONE_ALPHABET!r} and space")
        t = np.arange(n) / TONE_RATE
        sig = np.zeros(n)
        for f in (_LOW[k % len(_LOW)], _HIGH[k // len(_LOW)]):
            f = f * pitch * rng.uniform(0.98, 1.02)
            sig += w1 * np.sin(2 * np.pi * f * t) + w2 * np.sin(4 * np.pi * f * t)
        ramp = min(n // 4, int(0.008 * TONE_RATE))
        env = np.ones(n)
        env[:ramp] = np.linspace(0, 1, ramp)
        env[n - ramp:] = np.linspace(1, 0, ramp)
        pieces.append((0.25 * rng.uniform(0.6, 1.0) * sig * env).astype(np.float32))
        # a brief gap between letters, so a doubled letter ("ll") is two chords, not one long one
        pieces.append(np.zeros(int(0.015 * TONE_RATE), np.float32))
    pieces.append(np.zeros(int(0.08 * TONE_RATE), np.float32))
    return np.concatenate(pieces), TONE_RATE


# ---------------------------------------------------------------------------------------------- datasets
def add_noise(wave_: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    power = float(np.mean(wave_ ** 2)) + 1e-12
    noise = rng.standard_normal(len(wave_)) * np.sqrt(power / 10 ** (snr_db / 10))
    return np.clip(wave_ + noise, -1, 1).astype(np.float32)


def make_speech_dataset(sentences: list[str], voices: tuple[str, ...], n: int, seed: int = 0,
                        engine: str = "tones", snr_db: tuple[float, float] = (10.0, 30.0)) -> list[SpeechExample]:
    """``n`` utterances: random sentence, random voice, random speed/pitch, random noise level."""
    if engine not in ENGINES:
        raise ValueError(f"speech engine {engine!r} is not one of {ENGINES}")
    if not sentences or not voices:
        raise ValueError("make_speech_dataset needs at least one sentence and one voice")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        text = sentences[int(rng.integers(len(sentences)))]
        voice = voices[int(rng.integers(len(voices)))]
        if engine == "espeak":
            audio, rate = synthesize_espeak(text, voice, int(rng.integers(130, 190)), int(rng.integers(30, 71)))
        else:
            audio, rate = synthesize_tones(text, voice, float(rng.uniform(0.045, 0.07)), rng)
        out.append(SpeechExample(text, add_noise(audio, float(rng.uniform(*snr_db)), rng), rate, voice))
    return out


def default_voices(engine: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training voices, unseen voices) of an engine."""
    if engine == "espeak":
        return ESPEAK_TRAIN_VOICES, ESPEAK_UNSEEN_VOICES
    if engine == "tones":
        return TONES_TRAIN_VOICES, TONES_UNSEEN_VOICES
    raise ValueError(f"speech engine {engine!r} is not one of {ENGINES}")
