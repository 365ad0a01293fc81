"""What ``lmstack eval`` evaluates: a local lmstack model, or an OpenAI-compatible server.

Both answer three kinds of request:
- ``loglikelihood([(context, continuation)])`` -> (sum log p(continuation | context), whether the
  continuation is the greedy one), tokenised as lm-evaluation-harness does: trailing spaces of the
  context move to the continuation, ``context + continuation`` is encoded as one string and split after
  the context's own tokens, and the sequence starts with <|bos|>;
- ``generate(prompts, until, max_new_tokens, samples)`` -> texts;
- ``rolling_loglikelihood(text)`` -> (sum log p, number of predicted tokens), windowed by the context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

Prompt = Union[str, list[dict]]  # plain text, or a chat conversation


class BackendError(ValueError):
    pass


class LocalBackend:
    def __init__(self, model, tokenizer, batch_size: int = 16, name: str = "model"):
        self.model, self.tokenizer, self.batch_size, self.name = model.eval(), tokenizer, batch_size, name
        self.max_len = int(getattr(model.config, "max_seq_len", 1 << 30))
        self.device = next(model.parameters()).device

    # ------------------------------------------------------------------ log-likelihood
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.tokenizer.encode(context + continuation)
        ctx = self.tokenizer.encode(context)
        return [self.tokenizer.bos_id] + ctx, whole[len(ctx):]

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(c, x) for c, x in requests]
        return self.loglikelihood_tokens(pairs)

    @torch.no_grad()
    def loglikelihood_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Batched forward passes; the longest sequences go first so each batch pads little."""
        out: list[Optional[tuple[float, bool]]] = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            rows = []
            for i in batch:
                ctx, cont = pairs[i]
                if not cont:
                    raise BackendError("loglikelihood: the continuation encodes to no tokens")
                seq = (ctx + cont)[-(self.max_len + 1):]  # keep the continuation, drop the oldest context
                rows.append((seq, len(cont)))
            width = max(len(s) - 1 for s, _ in rows)
            x = torch.zeros((len(rows), width), dtype=torch.long)
            for r, (seq, _) in enumerate(rows):
                x[r, :len(seq) - 1] = torch.tensor(seq[:-1])
            logp = F.log_softmax(self.model(x.to(self.device)).logits.float(), dim=-1)
            for r, (i, (seq, n_cont)) in enumerate(zip(batch, rows)):
                end = len(seq) - 1
                target = torch.tensor(seq[-n_cont:], device=self.device)
                scores = logp[r, end - n_cont:end]
                total = float(scores.gather(1, target[:, None]).sum())
                greedy = bool((scores.argmax(-1) == target).all())
                out[i] = (total, greedy)
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def rolling_loglikelihood(self, text: str) -> tuple[float, int]:
        """Consecutive windows of the context length: each token predicted once (as lmstack.eval.bpb does)."""
        ids = [self.tokenizer.bos_id] + self.tokenizer.encode(text)
        pairs = [(ids[s:s + 1], ids[s + 1:s + self.max_len + 1]) for s in range(0, len(ids) - 1, self.max_len)]
        scores = self.loglikelihood_tokens(pairs)
        return sum(s for s, _ in scores), len(ids) - 1

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[Prompt], until: Sequence[str], max_new_tokens: int,
                 samples: int = 1, temperature: float = 0.0, seed: int = 0) -> list[list[str]]:
        """``samples`` completions per prompt: greedy when temperature is 0, else seeded sampling."""
        from lmstack.generate import GenerationConfig, generate

        ids = []
        for p in prompts:
            if isinstance(p, str):
                ids.append([self.tokenizer.bos_id] + self.tokenizer.encode(p))
            else:
                ids.append(list(self.tokenizer.encode_chat(p, add_generation_prompt=True)[0]))
        ids = [row[-(self.max_len - max_new_tokens):] for row in ids]  # keep the end of over-long prompts
        flat, cfgs = [], []
        for i, row in enumerate(ids):
            for k in range(samples):
                flat.append(row)
                strategy = "greedy" if temperature == 0 else "sample"
                cfgs.append(GenerationConfig(max_new_tokens=max_new_tokens, strategy=strategy, stop=list(until),
                                             temperature=temperature or 1.0, seed=seed * 100003 + i * 101 + k))
        gens = generate(self.model, self.tokenizer, flat, cfgs, batch_size=self.batch_size * max(1, samples))
        texts = [g.text for g in gens]
        return [texts[i * samples:(i + 1) * samples] for i in range(len(ids))]


class ServerBackend:
    """An OpenAI-compatible server (``lmstack serve`` or another): /v1/completions and /v1/chat/completions."""

    def __init__(self, url: str, model: str = "lmstack", timeout: float = 300.0, client=None):
        import httpx

        self.url, self.model_name, self.name = url.rstrip("/"), model, url
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.client = client or httpx.Client(timeout=timeout)

    def _post(self, path: str, body: dict) -> dict:
        r = self.client.post(self.url + path, json={"model": self.model_name, **body})
        if r.status_code != 200:
            raise BackendError(f"{self.url}{path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """Needs the prompt's own token log-probs (``echo`` with ``logprobs`` and max_tokens 0)."""
        out = []
        for context, continuation in requests:
            unsupported = (f"{self.url}: this server does not return log-probabilities of prompt tokens (echo + "
                           "logprobs with max_tokens 0), so log-likelihood tasks (multiple_choice, answer_logprob, "
                           "perplexity) cannot run against it; evaluate the checkpoint directly "
                           "(lmstack eval --tasks ... RUN_DIR) or use generate tasks")
            try:
                reply = self._post("/completions", {"prompt": context + continuation, "max_tokens": 0, "echo": True,
                                                    "logprobs": 1})
            except BackendError as e:
                raise BackendError(f"{unsupported} (the request failed: {e})") from None
            lp = (reply.get("choices") or [{}])[0].get("logprobs") or {}
            offsets, values = lp.get("text_offset") or [], lp.get("token_logprobs") or []
            if not values or len(values) != len(offsets) or not offsets or offsets[0] != 0:
                raise BackendError(unsupported)
            first = next(i for i, o in enumerate(offsets) if o >= len(context))
            tops = lp.get("top_logprobs") or [None] * len(values)
            total = sum(float(v) for v in values[first:])
            greedy = all(t is None or max(t.values()) <= v + 1e-6 for t, v in zip(tops[first:], values[first:]))
            out.append((total, greedy))
        return out

    def rolling_loglikelihood(self, text: str) -> tuple[float, int]:
        raise BackendError(f"{self.url}: perplexity tasks need every token's log-probability; evaluate the "
                           "checkpoint directly (lmstack eval --tasks ... RUN_DIR)")

    def generate(self, prompts: Sequence[Prompt], until: Sequence[str], max_new_tokens: int,
                 samples: int = 1, temperature: float = 0.0, seed: int = 0) -> list[list[str]]:
        out = []
        for i, p in enumerate(prompts):
            body = {"max_tokens": max_new_tokens, "stop": list(until)[:4] or None, "n": samples,
                    "temperature": temperature, "seed": seed * 100003 + i}
            if isinstance(p, str):
                reply = self._post("/completions", {"prompt": p, **body})
                out.append([c["text"] for c in reply["choices"]])
            else:
                reply = self._post("/chat/completions", {"messages": p, **body})
                out.append([c["message"]["content"] or "" for c in reply["choices"]])
        return out


def load_backend(target: str, checkpoint: Optional[str] = None, tokenizer: Optional[str] = None,
                 batch_size: int = 16, device: str = "cpu"):
    """A run directory, an lmstack checkpoint directory, an HF-format directory (``lmstack hf export``;
    needs ``tokenizer``, an lmstack tokenizer.json) or an http(s) server URL."""
    if target.startswith(("http://", "https://")):
        return ServerBackend(target)
    from lmstack.model import load_pretrained
    from lmstack.tokenizer import Tokenizer

    path = Path(target)
    hf_config = path / "config.json"
    if hf_config.exists() and (path / "model.safetensors").exists() and '"model_type"' in hf_config.read_text():
        from lmstack.model.hf import import_hf

        if not tokenizer:
            raise BackendError(f"{path}: an HF-format directory; pass --tokenizer with the lmstack tokenizer.json it "
                               "was exported with (lmstack reads its own tokenizer format, not HF tokenizer.json)")
        return LocalBackend(import_hf(path, device=device), Tokenizer.load(tokenizer), batch_size, str(path))
    from lmstack.generate.cli import resolve_checkpoint

    ckpt, tok_path = resolve_checkpoint(path, checkpoint)
    model = load_pretrained(ckpt, device=device)
    return LocalBackend(model, Tokenizer.load(tokenizer or tok_path), batch_size, str(ckpt))
