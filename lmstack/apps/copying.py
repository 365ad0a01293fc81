"""Copy warm-up: teach a small model to copy from its context before RAG and tool-use SFT.

Why: the default run's pretrained model cannot copy at all. On a random token string shown twice, its loss on
the second showing is as high as on the first (about 15 nats): it learned the small world by heart and never
needed an induction head (Olsson et al. 2022, "In-context learning and induction heads"). RAG answers, tool
arguments and final answers are all copies (a name from the question, a year from a passage, a number from an
observation), so SFT alone left it guessing (the answer tokens of the training traces stayed at 4-7 nats).
A few hundred steps on "random string, then the same string again" (loss on the repeat only) make the
induction mechanism appear; the RAG / agent SFT that follows then uses it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass
class CopyConfig:
    # 0 (default): no warm-up. Measured on the default run (r2s3 apps notes): 800 steps plus copy batches in SFT
    # (sft_batch_size) take the arithmetic agent from 0 to 0.3-0.75 but cost closed-book QA, so it stays opt-in.
    steps: int = 0
    batch_size: int = 32
    length: int = 24        # tokens per string (each example: BOS, string, string again)
    lr: float = 1e-3
    seed: int = 0
    # share of strings drawn from a small alphabet (digits, space, a few letters) instead of the whole vocabulary:
    # in "52650" the token after a "5" is ambiguous, so only a head that matches a longer prefix can copy it,
    # which is what numbers and names in tool calls and final answers need
    small_alphabet_share: float = 0.5
    # copy batches mixed into every apps SFT step (weighted loss added to the SFT loss), so fine-tuning keeps
    # the mechanism the warm-up built; 0 = off. 8 fresh pages at weight 0.2 (with 600 apps steps), measured on the
    # default run (r2s4 mix notes, n = 60 each, one run): arithmetic agent 0.10 -> 0.47, multi-hop 0 -> 0.15,
    # cannot-find 0.67 -> 0.85, closed-book 0.60 -> 0.67, RAG 0.20 -> 0.15 (within its SE of ~0.07)
    sft_batch_size: int = 8
    sft_weight: float = 0.2
    # share of batches that are fresh natural-text "copy pages" (invented names, places and codes stated and
    # then repeated, the world's COPY_PARAGRAPHS) instead of random strings: never seen before, so they cannot
    # be memorised the way the pretraining's fixed copy pages are, and closer to the text of RAG answers
    pages_share: float = 1.0
    page_tokens: int = 128


def copy_batch(n: int, length: int, low: int, high: int, bos_id: int, gen: torch.Generator,
               max_gap: int = 16, alphabet: torch.Tensor | None = None,
               alphabet_share: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """([n, 1 + 2 * length + max_gap] ids, same-shape bool mask of the repeated tokens): BOS, a random string of
    ``length // 2 .. length`` ids in [low, high), ``0 .. max_gap`` random filler ids, the same string again, then
    filler. Lengths and gaps vary per row so the repeat sits at no fixed offset: a head that attends a constant
    distance back cannot solve it, only one that looks up the earlier occurrence of the current token can.
    With ``alphabet`` (a 1-d tensor of ids), a share ``alphabet_share`` of the rows draws its string from it."""
    if high - low < 2:
        raise ValueError(f"copy warm-up needs at least 2 ordinary token ids, got the range [{low}, {high})")
    width = 1 + 2 * length + max_gap
    x = torch.randint(low, high, (n, width), generator=gen)
    x[:, 0] = bos_id
    if alphabet is not None and alphabet_share > 0:
        small = torch.rand(n, generator=gen) < alphabet_share
        picks = alphabet[torch.randint(0, len(alphabet), (n, width), generator=gen)]
        x[small, 1:] = picks[small, 1:]
    repeat = torch.zeros((n, width), dtype=torch.bool)
    sizes = torch.randint(max(1, length // 2), length + 1, (n,), generator=gen).tolist()
    gaps = torch.randint(0, max_gap + 1, (n,), generator=gen).tolist()
    for i, (size, gap) in enumerate(zip(sizes, gaps)):
        start = 1 + size + gap
        x[i, start:start + size] = x[i, 1:1 + size]
        repeat[i, start:start + size] = True
    return x, repeat


def ordinary_id_range(tokenizer) -> tuple[int, int]:
    """Token ids that are not special tokens (specials sit at one end of lmstack's vocabularies)."""
    specials = sorted(getattr(tokenizer, "special_tokens", {}).values())
    size = tokenizer.vocab_size
    if specials and specials[0] >= size - len(specials):
        return 0, specials[0]
    return (specials[-1] + 1 if specials else 0), size


def small_alphabet(tokenizer) -> torch.Tensor:
    """Ids of the single-character tokens for digits, space and a few letters (the ones the tokenizer has)."""
    ids = []
    for ch in "0123456789 abcdeiklmnorst":
        enc = tokenizer.encode(ch)
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(enc[0])
    if len(ids) < 2:
        raise ValueError("copy warm-up: the tokenizer has fewer than 2 single-character tokens among digits/letters")
    return torch.tensor(ids)


@torch.no_grad()
def repeat_loss(model, tokenizer, length: int = 24, n: int = 16, seed: int = 1234, digits: bool = False) -> float:
    """Mean loss (nats) on the second showing of random strings: ~ln(vocab) or worse without copying, ~0 with.
    ``digits``: strings of the small alphabet (``small_alphabet``), where copying needs a longer-prefix match."""
    low, high = ordinary_id_range(tokenizer)
    alphabet = small_alphabet(tokenizer) if digits else None
    x, repeat = copy_batch(n, length, low, high, tokenizer.bos_id, torch.Generator().manual_seed(seed),
                           alphabet=alphabet, alphabet_share=1.0 if digits else 0.0)
    x = x.to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    logp = torch.log_softmax(model(x[:, :-1]).logits.float(), -1)
    model.train(was_training)
    nll = -logp.gather(-1, x[:, 1:, None])[..., 0]
    # the first token of each repeat cannot be predicted (the gap is random): score the rest
    scored = repeat[:, 1:] & repeat[:, :-1]
    return float(nll[scored.to(nll.device)].mean())


def copy_page_texts(n: int, rng) -> list[str]:
    """``n`` fresh pages of 2-3 world copy paragraphs with newly invented names, places and codes."""
    from lmstack.data import world_text as T
    from lmstack.data.world.documents import copy_paragraph_fields

    pages = []
    for _ in range(n):
        paragraphs = []
        for _ in range(rng.randint(2, 3)):
            fields = copy_paragraph_fields(rng)
            paragraphs.append(rng.choice(T.COPY_PARAGRAPHS).format(**fields))
        pages.append("\n\n".join(paragraphs))
    return pages


def copy_page_batch(tokenizer, n: int, width: int, rng) -> tuple[torch.Tensor, torch.Tensor]:
    """([n, width] ids, targets with -100 on padding) of fresh copy pages, language-model loss on every token."""
    x = torch.full((n, width), tokenizer.pad_id, dtype=torch.long)
    targets = torch.full((n, width - 1), -100, dtype=torch.long)
    for i, text in enumerate(copy_page_texts(n, rng)):
        ids = ([tokenizer.bos_id] + tokenizer.encode(text))[:width]
        x[i, :len(ids)] = torch.tensor(ids)
        targets[i, :len(ids) - 1] = torch.tensor(ids[1:])
    return x, targets


class CopyLoss:
    """Draws copy batches and returns the model's loss on the predictable part of each repeat; used by the
    warm-up and, mixed into every step, by the apps SFT (``CopyConfig.sft_batch_size``)."""

    def __init__(self, model, tokenizer, cfg: CopyConfig, batch_size: int, seed_offset: int = 0):
        self.model, self.cfg, self.batch_size = model, cfg, batch_size
        self.low, self.high = ordinary_id_range(tokenizer)
        self.bos_id = tokenizer.bos_id
        self.alphabet = small_alphabet(tokenizer) if cfg.small_alphabet_share > 0 else None
        self.gen = torch.Generator().manual_seed(cfg.seed + seed_offset)
        self.rng = random.Random(cfg.seed + seed_offset)
        self.tokenizer = tokenizer

    def __call__(self) -> torch.Tensor:
        device = next(self.model.parameters()).device
        if self.cfg.pages_share > 0 and self.rng.random() < self.cfg.pages_share:
            x, targets = copy_page_batch(self.tokenizer, self.batch_size, self.cfg.page_tokens, self.rng)
            return self.model(x[:, :-1].to(device), targets=targets.to(device)).loss
        x, repeat = copy_batch(self.batch_size, self.cfg.length, self.low, self.high, self.bos_id, self.gen,
                               alphabet=self.alphabet, alphabet_share=self.cfg.small_alphabet_share)
        targets = x[:, 1:].clone()
        targets[~(repeat[:, 1:] & repeat[:, :-1])] = -100  # score the predictable part of the repeat only
        return self.model(x[:, :-1].to(device), targets=targets.to(device)).loss


def copy_warmup(model, tokenizer, cfg: CopyConfig, progress: bool = True) -> list[float]:
    """Train ``model`` in place to continue a repeated random string (loss on the repeat only)."""
    from tqdm import tqdm

    copy_loss = CopyLoss(model, tokenizer, cfg, cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    model.train()
    history = []
    for step in tqdm(range(cfg.steps), desc="copy warm-up", disable=not progress):
        loss = copy_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:  # linear warm-up over the first 10% of steps, then constant
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.steps // 10))
        opt.step()
        history.append(float(loss.detach()))
    model.eval()
    return history


@torch.no_grad()
def page_copy_loss(model, tokenizer, n: int = 24, seed: int = 4321) -> dict[str, float]:
    """In-distribution copying: loss (nats per token) on a code's digits where a fresh copy page first states
    it and where it repeats it ("... the ticket code 31384. ... read it out: 31384.")."""
    from lmstack.data import world_text as T
    from lmstack.data.world.documents import invented_word

    rng = random.Random(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    first = repeat = 0.0
    for _ in range(n):
        code = str(rng.randint(10000, 99999))
        words = [invented_word(rng) for _ in range(3)]
        text = T.COPY_PARAGRAPHS[0].format(x=f"{words[0]} {words[1]}", y="", p=words[2], c=code, d="")
        ids = [tokenizer.bos_id] + tokenizer.encode(text)
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]], device=device)).logits.float(), -1)[0]
        nll = -logp.gather(-1, torch.tensor(ids[1:], device=device)[:, None])[:, 0]
        spans = []
        for pos in (text.index(code), text.rindex(code)):
            start, end = len(tokenizer.encode(text[:pos])), len(tokenizer.encode(text[:pos + len(code)]))
            spans.append(float(nll[start:end].mean()))  # nll[j] scores ids[j + 1], the text's token j
        first, repeat = first + spans[0], repeat + spans[1]
    model.train(was_training)
    return {"first": first / n, "repeat": repeat / n}
