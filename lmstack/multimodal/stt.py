"""Speech-to-text: log-mel frames -> two 1-D convolutions (the second with stride 2, halving the frame
rate) -> sinusoidal positions -> bidirectional lmstack Blocks -> a per-frame character classifier
trained with CTC (Graves et al. 2006); greedy CTC decoding collapses repeats and drops blanks."""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmstack.model import Block, PositionalEncoding
from lmstack.model.transformer import make_norm
from lmstack.multimodal.audio import log_mel
from lmstack.multimodal.common import error_rate, fit
from lmstack.multimodal.speech import DIGIT_WORDS, SpeechExample
from lmstack.multimodal.vit import EncoderConfig, encode_blocks

ALPHABET = " abcdefghijklmnopqrstuvwxyz'"  # CTC class k + 1 is ALPHABET[k]; class 0 is the blank
BLANK = 0


def normalize_transcript(text: str) -> str:
    """Lower case, digits spelled out, anything outside the alphabet dropped, spaces collapsed."""
    text = re.sub(r"\d", lambda m: f" {DIGIT_WORDS[int(m.group())]} ", text.lower())
    text = "".join(ch if ch in ALPHABET else " " for ch in text)
    return " ".join(text.split())


def encode_transcript(text: str) -> list[int]:
    return [ALPHABET.index(ch) + 1 for ch in normalize_transcript(text)]


@dataclass
class STTConfig:
    n_mels: int = 40
    d_model: int = 96
    n_layers: int = 3
    n_heads: int = 4
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class SpeechRecognizer(nn.Module):
    def __init__(self, cfg: STTConfig):
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.conv1 = nn.Conv1d(cfg.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.positions = PositionalEncoding(d, 2048)
        enc = EncoderConfig(d_model=d, n_layers=cfg.n_layers, n_heads=cfg.n_heads, dropout=cfg.dropout)
        block_cfg = enc.block_config(2048)
        self.blocks = nn.ModuleList(Block(block_cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(block_cfg, d)
        self.head = nn.Linear(d, len(ALPHABET) + 1)

    @staticmethod
    def output_lengths(frames: torch.Tensor) -> torch.Tensor:
        return (frames - 1) // 2 + 1  # conv2: kernel 3, stride 2, padding 1

    def forward(self, feats: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B, n_mels, T], frames [B] -> (log-probs [B, T', classes], lengths [B])."""
        if feats.dim() != 3 or feats.shape[1] != self.config.n_mels:
            raise ValueError(f"features must be [batch, {self.config.n_mels} mels, frames], got {tuple(feats.shape)}")
        # zero every frame past an utterance's end, before each conv, so a padded batch computes exactly
        # what each utterance alone would (the convs' own zero padding)
        in_range = (torch.arange(feats.shape[2], device=feats.device)[None] < frames[:, None])[:, None]
        x = F.gelu(self.conv1(feats * in_range)) * in_range
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [B, T', D]
        lengths = self.output_lengths(frames)
        x = x + self.positions(torch.arange(x.shape[1], device=x.device)).to(x.dtype)[None]
        valid = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]
        h = self.norm(encode_blocks(self.blocks, x, valid))
        return self.head(h).log_softmax(-1), lengths


def utterance_features(ex: SpeechExample, n_mels: int) -> torch.Tensor:
    """Log-mel [n_mels, frames], normalised per utterance and channel (mean 0, std 1 over time) so loudness
    and the noise floor matter less."""
    feats = log_mel(torch.from_numpy(ex.wave), ex.sample_rate, n_mels=n_mels)
    return (feats - feats.mean(1, keepdim=True)) / (feats.std(1, keepdim=True) + 1e-5)


def pad_features(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    frames = torch.tensor([f.shape[1] for f in feats])
    out = torch.zeros(len(feats), feats[0].shape[0], int(frames.max()))
    for i, f in enumerate(feats):
        out[i, :, :f.shape[1]] = f
    return out, frames


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    best = log_probs.argmax(-1)
    out = []
    for row, n in zip(best.tolist(), lengths.tolist()):
        chars, prev = [], BLANK
        for k in row[:n]:
            if k != prev and k != BLANK:
                chars.append(ALPHABET[k - 1])
            prev = k
        out.append(" ".join("".join(chars).split()))
    return out


def ctc_loss(model: SpeechRecognizer, feats, frames, texts: list[str]) -> torch.Tensor:
    log_probs, lengths = model(feats, frames)
    targets = [torch.tensor(encode_transcript(t)) for t in texts]
    return F.ctc_loss(log_probs.transpose(0, 1), torch.cat(targets), lengths, torch.tensor([len(t) for t in targets]),
                      blank=BLANK, zero_infinity=True)


def spec_augment(feats: torch.Tensor, rng: random.Random, max_freq: int = 6, max_time: int = 12) -> torch.Tensor:
    """One frequency band and two time spans masked to 0 (SpecAugment, Park et al. 2019)."""
    feats = feats.clone()
    f0 = rng.randrange(0, feats.shape[0] - max_freq)
    feats[f0:f0 + rng.randrange(0, max_freq + 1)] = 0
    for _ in range(2):
        t0 = rng.randrange(0, max(1, feats.shape[1] - max_time))
        feats[:, t0:t0 + rng.randrange(0, max_time + 1)] = 0
    return feats


def train_stt(model: SpeechRecognizer, examples: list[SpeechExample], steps: int, batch_size: int = 32,
              lr: float = 2e-3, seed: int = 0, augment: bool = True, progress: bool = True) -> dict:
    rng = random.Random(seed)
    feats = [utterance_features(e, model.config.n_mels) for e in examples]
    model.train()

    def step_loss(_):
        idx = rng.sample(range(len(examples)), min(batch_size, len(examples)))
        batch = [spec_augment(feats[i], rng) if augment else feats[i] for i in idx]
        x, frames = pad_features(batch)
        return ctc_loss(model, x, frames, [examples[i].text for i in idx])

    return fit(model.parameters(), step_loss, steps, lr, "stt", progress=progress)


@torch.no_grad()
def transcribe(model: SpeechRecognizer, examples: list[SpeechExample], batch_size: int = 64) -> list[str]:
    model.eval()
    out = []
    for i in range(0, len(examples), batch_size):
        x, frames = pad_features([utterance_features(e, model.config.n_mels) for e in examples[i:i + batch_size]])
        out.extend(ctc_greedy_decode(*model(x, frames)))
    return out


def evaluate_stt(model: SpeechRecognizer, examples: list[SpeechExample]) -> dict[str, float]:
    hyps = transcribe(model, examples)
    refs = [normalize_transcript(e.text) for e in examples]
    return {"wer": error_rate(refs, hyps, "word"), "cer": error_rate(refs, hyps, "char"),
            "sentence_acc": sum(h == r for h, r in zip(hyps, refs)) / len(refs)}
