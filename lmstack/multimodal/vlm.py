"""Image-to-text, LLaVA style (Liu et al. 2023): ViT patch features -> projector -> the lmstack decoder LM.

The user turn holds an ``<|image|>`` placeholder that the chat template expands into one slot per
image patch; the projected patch features replace the token embeddings at those slots
(``Transformer(inputs_embeds=...)``), and the LM continues as usual. Training runs in stages:

0. text: the LM learns the chat format and the world's words from text-only conversations
   (standing in for the pretrained chat LLM that LLaVA starts from);
1. alignment: only the projector trains, on captions (vision encoder and LM frozen);
2. visual instruction tuning: projector and LM train on visual questions (plus some captions).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from lmstack.model import ModelConfig, Transformer
from lmstack.multimodal.common import chrf, fit
from lmstack.multimodal.images import ImageExample, images_to_tensor
from lmstack.multimodal.text import IMAGE, encode_image_chat
from lmstack.multimodal.vit import VisionTransformer

CAPTION_PROMPTS = {"en": "describe the image.", "zh": "描述这张图片。"}
PROJECTORS = ("linear", "mlp", "qformer")


class QueryResampler(nn.Module):
    """A one-layer, Q-Former-like bridge (BLIP-2, Li et al. 2023): ``n_queries`` learned query vectors
    cross-attend to all ViT tokens, pass an MLP, and are mapped to the LM width. The LM then reads a
    fixed number of image tokens, however many patches the image has."""

    def __init__(self, d_img: int, d_lm: int, n_queries: int = 8, n_heads: int = 4):
        super().__init__()
        if n_queries < 1:
            raise ValueError(f"n_queries must be >= 1, got {n_queries}")
        self.queries = nn.Parameter(torch.randn(1, n_queries, d_img) * 0.02)
        self.norm_q, self.norm_kv = nn.LayerNorm(d_img), nn.LayerNorm(d_img)
        self.cross_attn = nn.MultiheadAttention(d_img, n_heads, batch_first=True)
        self.ffn = nn.Sequential(nn.LayerNorm(d_img), nn.Linear(d_img, 4 * d_img), nn.GELU(),
                                 nn.Linear(4 * d_img, d_img))
        self.out = nn.Linear(d_img, d_lm)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        q = self.queries.expand(feats.shape[0], -1, -1)
        kv = self.norm_kv(feats)
        x = q + self.cross_attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        return self.out(x + self.ffn(x))


class VisionLanguageModel(nn.Module):
    def __init__(self, vision: VisionTransformer, lm: Transformer, image_token: int, projector: str = "mlp",
                 n_queries: int = 8):
        super().__init__()
        if projector not in PROJECTORS:
            raise ValueError(f"projector {projector!r} is not one of {PROJECTORS}")
        self.vision, self.lm, self.image_token, self.projector_type = vision, lm, image_token, projector
        d_img, d_lm = vision.config.d_model, lm.config.d_model
        if projector == "linear":
            self.projector = nn.Linear(d_img, d_lm)
        elif projector == "mlp":  # LLaVA-1.5: two linear layers with a GELU between
            self.projector = nn.Sequential(nn.Linear(d_img, d_lm), nn.GELU(), nn.Linear(d_lm, d_lm))
        else:
            self.projector = QueryResampler(d_img, d_lm, n_queries, vision.config.n_heads)
        self.n_queries = n_queries

    @property
    def n_image_tokens(self) -> int:
        if self.projector_type == "qformer":
            return self.n_queries
        return self.vision.config.n_patches + 1

    def input_embeddings(self, ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Token embeddings with row i's image slots replaced by its projected patch features."""
        x = self.lm.embed(ids)
        slots = ids == self.image_token
        per_row = slots.sum(1)
        if bool(((per_row != 0) & (per_row != self.n_image_tokens)).any()):
            raise ValueError(f"each row needs exactly {self.n_image_tokens} image slots (one per patch) or none; "
                             f"got {per_row.tolist()}; build prompts with encode_image_chat")
        # Every ViT output token, the class token included: LLaVA keeps patch tokens only, but a tiny
        # LM learns far faster with the CLIP-trained summary token in front of them. (The qformer
        # projector turns them into n_queries tokens.)
        feats = self.projector(self.vision(images))
        has_image = per_row > 0
        return x.masked_scatter(slots[..., None], feats[has_image].to(x.dtype))

    def forward(self, ids, images, targets=None, attention_mask=None):
        return self.lm(ids, inputs_embeds=self.input_embeddings(ids, images), targets=targets,
                       attention_mask=attention_mask)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], images: torch.Tensor, max_new_tokens: int,
                 stop_id: int, pad_id: int) -> list[list[int]]:
        """Greedy decoding of a batch of left-padded prompts with the lmstack KV cache."""
        b, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((b, width), pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        cache = self.lm.new_kv_cache(b, width + max_new_tokens)
        out = self.lm(ids, inputs_embeds=self.input_embeddings(ids, images), attention_mask=mask, kv_cache=cache)
        done = torch.zeros(b, dtype=torch.bool)
        result: list[list[int]] = [[] for _ in range(b)]
        for _ in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)
            for i in range(b):
                if not done[i]:
                    if int(nxt[i]) == stop_id:
                        done[i] = True
                    else:
                        result[i].append(int(nxt[i]))
            if bool(done.all()):
                break
            out = self.lm(nxt[:, None], kv_cache=cache)
        return result


def lm_config(vocab_size: int, d_model: int = 128, n_layers: int = 2, n_heads: int = 4, max_seq_len: int = 128,
              **overrides) -> ModelConfig:
    """A tiny Llama-style lmstack decoder for the image-to-text model."""
    return ModelConfig.preset("llama-style", vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
                              n_heads=n_heads, n_kv_heads=max(1, n_heads // 2), max_seq_len=max_seq_len,
                              **overrides)


# ---------------------------------------------------------------------------------------------- data
@dataclass
class Conversation:
    example: int  # index into the examples list
    task: str  # "caption" or "vqa"
    lang: str
    prompt: str
    answer: str


def conversations(examples: list[ImageExample], task: str) -> list[Conversation]:
    out = []
    for i, ex in enumerate(examples):
        if task == "caption":
            out.extend(Conversation(i, task, lang, CAPTION_PROMPTS[lang], ex.captions[lang]) for lang in ("en", "zh"))
        elif task == "vqa":
            out.extend(Conversation(i, task, q["lang"], q["question"], q["answer"]) for q in ex.questions)
        else:
            raise ValueError(f"task {task!r} is not 'caption' or 'vqa'")
    return out


def encode_turn(tok, conv: Conversation, n_image_tokens: int, with_image: bool = True,
                with_answer: bool = True) -> tuple[list[int], list[int]]:
    user = (IMAGE + "\n" if with_image else "") + conv.prompt
    msgs = [{"role": "user", "content": user}]
    if with_answer:
        msgs.append({"role": "assistant", "content": conv.answer})
    return encode_image_chat(tok, msgs, n_image_tokens, add_generation_prompt=not with_answer)


def collate(tok, convs: list[Conversation], n_image_tokens: int, with_image: bool = True):
    """(ids [B, T], targets [B, T]) right-padded; targets are next tokens on the assistant's reply only."""
    rows = [encode_turn(tok, c, n_image_tokens, with_image) for c in convs]
    t = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), t), tok.pad_id, dtype=torch.long)
    targets = torch.full((len(rows), t), -100, dtype=torch.long)
    for i, (r, m) in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        nxt = torch.tensor(r[1:] + [tok.pad_id])
        keep = torch.tensor(m[1:] + [0], dtype=torch.bool)
        targets[i, :len(r)] = torch.where(keep, nxt, torch.full_like(nxt, -100))
    return ids, targets


# ---------------------------------------------------------------------------------------------- training
def train_text_lm(model: VisionLanguageModel, tok, examples, steps: int, batch_size: int = 64, lr: float = 3e-3,
                  seed: int = 0, progress: bool = True) -> dict:
    """Stage 0: the LM alone on the conversations with the image left out."""
    rng = random.Random(seed)
    convs = conversations(examples, "caption") + conversations(examples, "vqa")

    def step_loss(_):
        ids, targets = collate(tok, rng.sample(convs, batch_size), 0, with_image=False)
        return model.lm(ids, targets=targets).loss

    model.lm.train()
    return fit(model.lm.parameters(), step_loss, steps, lr, "vlm stage 0 (text)", progress=progress)


def train_stage(model: VisionLanguageModel, tok, examples, images: torch.Tensor, tasks: dict[str, float],
                trainable: list[nn.Module], steps: int, desc: str, batch_size: int = 64, lr: float = 2e-3,
                seed: int = 0, progress: bool = True) -> dict:
    """Train the ``trainable`` modules (everything else frozen) on a mix of tasks {task: share}."""
    rng = random.Random(seed)
    pools = {task: conversations(examples, task) for task in tasks}
    names, weights = list(tasks), [tasks[k] for k in tasks]
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for m in trainable for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)

    def step_loss(_):
        batch = [rng.choice(pools[rng.choices(names, weights)[0]]) for _ in range(batch_size)]
        ids, targets = collate(tok, batch, model.n_image_tokens)
        return model(ids, images[[c.example for c in batch]], targets=targets).loss

    model.train()
    try:
        return fit(params, step_loss, steps, lr, desc, progress=progress)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_vlm(model: VisionLanguageModel, tok, examples: list[ImageExample], batch_size: int = 64,
                 max_new_tokens: int = 24) -> dict[str, float]:
    """Captioning exact match and chrF, VQA accuracy (exact answer), per language."""
    model.eval()
    images = images_to_tensor([e.image for e in examples])
    metrics: dict[str, float] = {}
    for task in ("caption", "vqa"):
        convs = conversations(examples, task)
        hyps = []
        for i in range(0, len(convs), batch_size):
            chunk = convs[i:i + batch_size]
            prompts = [encode_turn(tok, c, model.n_image_tokens, with_answer=False)[0] for c in chunk]
            out = model.generate(prompts, images[[c.example for c in chunk]], max_new_tokens,
                                 stop_id=tok.end_id, pad_id=tok.pad_id)
            hyps.extend(tok.decode(o).strip() for o in out)
        for lang in ("en", "zh"):
            pairs = [(h, c.answer) for h, c in zip(hyps, convs) if c.lang == lang]
            exact = sum(h == r for h, r in pairs) / len(pairs)
            if task == "caption":
                metrics[f"caption_exact_{lang}"] = exact
                metrics[f"caption_chrf_{lang}"] = sum(chrf(h, r) for h, r in pairs) / len(pairs)
            else:
                metrics[f"vqa_acc_{lang}"] = exact
    return metrics


def describe(model: VisionLanguageModel, tok, image, prompt: str, max_new_tokens: int = 32) -> str:
    """Answer one prompt about one uint8 [H, W, 3] image."""
    conv = Conversation(0, "chat", "", prompt, "")
    ids = encode_turn(tok, conv, model.n_image_tokens, with_answer=False)[0]
    model.eval()
    out = model.generate([ids], images_to_tensor([image]), max_new_tokens, stop_id=tok.end_id, pad_id=tok.pad_id)
    return tok.decode(out[0]).strip()
