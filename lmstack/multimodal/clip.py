"""CLIP (Radford et al. 2021): an image encoder and a text encoder trained so that matching
image/text pairs have the highest cosine similarity in a batch, with the symmetric contrastive loss
and a learnable temperature initialised at 0.07. Evaluated by zero-shot classification (class names
written as text prompts) and by image<->text retrieval recall@k."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lmstack.multimodal.common import fit
from lmstack.multimodal.images import COLOURS, SHAPES, ImageExample, images_to_tensor
from lmstack.multimodal.text import pad_texts
from lmstack.multimodal.vit import EncoderConfig, TextEncoder, VisionTransformer


@dataclass
class CLIPConfig:
    vision: EncoderConfig = field(default_factory=EncoderConfig)
    text: EncoderConfig = field(default_factory=EncoderConfig)
    embed_dim: int = 64
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0  # CLIP clips exp(logit_scale) at 100 so training stays stable

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        d = dict(d)
        return cls(vision=EncoderConfig(**d.pop("vision")), text=EncoderConfig(**d.pop("text")), **d)


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: mean of the image->text and text->image cross-entropies over the batch's
    cosine-similarity matrix scaled by exp(logit_scale); pair i is the positive for row/column i."""
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"image embeddings {tuple(image_embeds.shape)} and text embeddings "
                         f"{tuple(text_embeds.shape)} must have the same [batch, dim] shape")
    img = F.normalize(image_embeds, dim=-1)
    txt = F.normalize(text_embeds, dim=-1)
    logits_per_text = logit_scale.exp() * txt @ img.T
    labels = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_text.T, labels))


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        self.vision = VisionTransformer(cfg.vision)
        self.text = TextEncoder(cfg.text)
        self.image_proj = nn.Linear(cfg.vision.d_model, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(cfg.text.d_model, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.vision(images)[:, 0]), dim=-1)

    def encode_text(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text(ids, valid)), dim=-1)

    def forward(self, images, ids, valid) -> torch.Tensor:
        return clip_loss(self.encode_image(images), self.encode_text(ids, valid), self.logit_scale)

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.logit_scale.clamp_(0.0, math.log(self.config.max_logit_scale))


def training_texts(ex: ImageExample) -> list[str]:
    """The texts a picture is paired with during training: full and short captions, both languages."""
    return [ex.captions["en"], ex.captions["zh"], ex.short_captions["en"], ex.short_captions["zh"]]


def train_clip(model: CLIP, tok, examples: list[ImageExample], steps: int, batch_size: int = 128,
               lr: float = 2e-3, seed: int = 0, progress: bool = True) -> dict:
    rng = random.Random(seed)
    images = images_to_tensor([e.image for e in examples])
    max_len = model.config.text.max_len
    model.train()

    def step_loss(_step: int) -> torch.Tensor:
        idx = rng.sample(range(len(examples)), min(batch_size, len(examples)))
        texts = [rng.choice(training_texts(examples[i])) for i in idx]
        ids, valid = pad_texts(tok, texts, max_len)
        return model(images[idx], ids, valid)

    return fit(model.parameters(), step_loss, steps, lr, "clip", after_step=model.clamp_logit_scale,
               progress=progress)


@torch.no_grad()
def embed_texts(model: CLIP, tok, texts: list[str], batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch):
        ids, valid = pad_texts(tok, texts[i:i + batch], model.config.text.max_len)
        out.append(model.encode_text(ids, valid))
    return torch.cat(out)


@torch.no_grad()
def embed_images(model: CLIP, examples: list[ImageExample], batch: int = 256) -> torch.Tensor:
    images = images_to_tensor([e.image for e in examples])
    return torch.cat([model.encode_image(images[i:i + batch]) for i in range(0, len(images), batch)])


def zero_shot_tasks() -> dict[str, tuple[str, list[str], list[str]]]:
    """name -> (image kind, English prompts, Chinese prompts); label k is prompt k."""
    shape_keys = [(c, s) for c in COLOURS for s in SHAPES]
    return {
        "digit": ("digit", [f"the digit {d}" for d in range(10)], [f"数字{d}" for d in range(10)]),
        "colour+shape": ("shape", [f"a {c} {s}" for c, s in shape_keys],
                         [f"{COLOURS[c][1]}的{SHAPES[s]}" for c, s in shape_keys]),
    }


def zero_shot_label(kind: str, ex: ImageExample) -> int:
    if kind == "digit":
        return ex.labels["digit"]
    return list(COLOURS).index(ex.labels["colour"]) * len(SHAPES) + list(SHAPES).index(ex.labels["shape"])


def retrieval_recall(image_embeds: torch.Tensor, caption_ids: list[int], text_embeds: torch.Tensor,
                     ks=(1, 5)) -> dict[str, float]:
    """Recall@k both ways when several images may share one caption.

    image->text: does the image's own caption rank in the top k of all distinct captions?
    text->image: does any image carrying this caption rank in the top k of all images?"""
    sims = image_embeds @ text_embeds.T  # [n_images, n_captions]
    owner = torch.tensor(caption_ids)
    out = {}
    for k in ks:
        top_t = sims.topk(min(k, sims.shape[1]), dim=1).indices
        out[f"i2t_R@{k}"] = float((top_t == owner[:, None]).any(1).float().mean())
        top_i = sims.T.topk(min(k, sims.shape[0]), dim=1).indices  # [n_captions, k]
        hits = owner[top_i] == torch.arange(sims.shape[1])[:, None]
        out[f"t2i_R@{k}"] = float(hits.any(1).float().mean())
    return out


@torch.no_grad()
def evaluate_clip(model: CLIP, tok, examples: list[ImageExample]) -> dict[str, float]:
    model.eval()
    img = embed_images(model, examples)
    metrics: dict[str, float] = {}
    for name, (kind, prompts_en, prompts_zh) in zero_shot_tasks().items():
        rows = [i for i, e in enumerate(examples) if e.kind == kind]
        if not rows:
            continue
        labels = torch.tensor([zero_shot_label(kind, examples[i]) for i in rows])
        for lang, prompts in (("en", prompts_en), ("zh", prompts_zh)):
            pred = (img[rows] @ embed_texts(model, tok, prompts).T).argmax(1)
            metrics[f"zeroshot_{name}_{lang}"] = float((pred == labels).float().mean())
            metrics[f"zeroshot_{name}_chance"] = 1.0 / len(prompts)
    for lang in ("en", "zh"):
        captions = sorted({e.captions[lang] for e in examples})
        index = {c: i for i, c in enumerate(captions)}
        rec = retrieval_recall(img, [index[e.captions[lang]] for e in examples], embed_texts(model, tok, captions))
        metrics.update({f"{k}_{lang}": v for k, v in rec.items()})
        metrics[f"n_captions_{lang}"] = len(captions)
    metrics["temperature"] = float(1.0 / model.logit_scale.exp())
    return metrics
