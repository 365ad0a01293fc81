"""Which pretraining makes the better dense retriever: a masked LM (BERT-style, bidirectional) or the decoder
(causal LM)? Both are pretrained from scratch with equal compute (same width, depth, steps, batch and tokens),
then fine-tuned as bi-encoders with the same DPR-style budget (``train_dense``) and scored on the same held-out
paraphrased questions. A randomly initialised decoder fine-tuned the same way is the floor.

DPR (Karpukhin et al. 2020) starts from BERT; the question here is whether that choice matters at our size.
Used by ``benchmarks/rag.py --compare-init``.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from lmstack.apps.dense import DenseConfig, DenseEncoder, train_dense


@dataclass
class InitCompareConfig:
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    seq_len: int = 128             # pretraining window (and the models' max_seq_len)
    pretrain_steps: int = 600
    pretrain_batch: int = 16
    pretrain_lr: float = 2e-3      # the decoder's (pre-norm) peak LR
    # BERT's post-norm encoder collapses at the decoder's LR: at 2e-3 every input got the same pooled vector
    # (pairwise cosine 1.000, MLM loss stuck at the unigram level) and the retriever trained on it stayed at
    # chance. Post-LN needs a smaller LR and warm-up (Xiong et al. 2020, "On Layer Normalization in the
    # Transformer Architecture"); 5e-4 trains (measured: benchmarks/rag.py --compare-init).
    mlm_pretrain_lr: float = 5e-4
    dense: DenseConfig = field(default_factory=lambda: DenseConfig(steps=200, batch_size=32, lr=5e-4))
    seed: int = 0


def model_configs(vocab_size: int, cfg: InitCompareConfig) -> dict:
    """The decoder and the masked LM at the same width and depth."""
    from lmstack.model import ModelConfig

    shape = dict(vocab_size=vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                 max_seq_len=cfg.seq_len)
    return {"decoder": ModelConfig.preset("llama-style", n_kv_heads=cfg.n_heads, **shape),
            "mlm": ModelConfig.preset("bert-style", **shape)}


def pretrain(model, tokens: torch.Tensor, cfg: InitCompareConfig, progress: bool = False) -> list[float]:
    """Language-model pretraining on random windows of ``tokens`` (1-D): next-token loss for the decoder;
    the masked LM masks its own inputs when handed ``targets`` and scores the masked tokens."""
    from tqdm import tqdm

    if len(tokens) <= cfg.seq_len + 1:
        raise ValueError(f"pretraining needs more than {cfg.seq_len + 1} tokens, got {len(tokens)}")
    gen = torch.Generator().manual_seed(cfg.seed)
    peak_lr = cfg.mlm_pretrain_lr if model.config.family == "mlm" else cfg.pretrain_lr
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=0.0)
    model.train()
    history = []
    for step in tqdm(range(cfg.pretrain_steps), desc="pretrain", disable=not progress, leave=False):
        starts = torch.randint(0, len(tokens) - cfg.seq_len - 1, (cfg.pretrain_batch,), generator=gen)
        window = torch.stack([tokens[s:s + cfg.seq_len + 1] for s in starts.tolist()])
        loss = model(window[:, :-1], targets=window[:, 1:]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:  # linear warm-up over the first 10% of steps
            group["lr"] = peak_lr * min(1.0, (step + 1) / max(1, cfg.pretrain_steps // 10))
        opt.step()
        history.append(float(loss.detach()))
    model.eval()
    return history


@torch.no_grad()
def mean_pairwise_cosine(encoder, texts: Sequence[str]) -> float:
    """Mean cosine between the pooled vectors of distinct texts. Near 1.0 means the encoder has collapsed
    (every input maps to one direction): contrastive fine-tuning then has no gradient to start from."""
    if len(texts) < 2:
        raise ValueError("mean_pairwise_cosine needs at least 2 texts")
    e = torch.from_numpy(encoder(list(texts)))
    sims = e @ e.T
    n = len(texts)
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def token_stream(texts: Sequence[str], tokenizer) -> torch.Tensor:
    ids: list[int] = []
    for t in texts:
        ids += list(tokenizer.encode(t)) + [tokenizer.eos_id]
    return torch.tensor(ids, dtype=torch.long)


def compare_inits(texts: Sequence[str], tokenizer, pairs: Sequence[tuple[str, str]], passages: Sequence[dict],
                  eval_sets: dict[str, list], cfg: InitCompareConfig | None = None, extra_inits: dict | None = None,
                  progress: bool = False) -> list[dict]:
    """One row per initialisation: {"init", "params", "pretrain_loss", "cosine_before", "dense_loss",
    "<set> recall@1/@5"}; ``cosine_before`` is the mean pairwise cosine of passage vectors before fine-tuning
    (near 1.0: a collapsed encoder).

    ``texts``: pretraining text; ``pairs``: (question, passage) fine-tuning pairs; ``passages``: the corpus
    ({"id", "text"}); ``eval_sets``: name -> questions with "question", "entity", "lang" (gold = the entity's
    passage). ``extra_inits``: name -> an already trained model to fine-tune the same way (e.g. a run's own
    pretrained decoder, which had far more compute than the pair trained here)."""
    from lmstack.apps.evaluate import retrieval_recall
    from lmstack.apps.store import DocumentStore
    from lmstack.model import build_model

    cfg = cfg or InitCompareConfig()
    tokens = token_stream(texts, tokenizer)
    inits: dict[str, Callable] = {}
    for name, mcfg in model_configs(tokenizer.vocab_size, cfg).items():
        inits[name] = lambda mcfg=mcfg: build_model(mcfg)
    rows = []
    for name in ("random decoder", "decoder", "mlm", *(extra_inits or {})):
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        pre_loss = None
        if extra_inits and name in extra_inits:
            model = extra_inits[name]
        else:
            model = inits["decoder" if name == "random decoder" else name]()
            if name != "random decoder":
                hist = pretrain(model, tokens, cfg, progress)
                pre_loss = sum(hist[-10:]) / len(hist[-10:])
        encoder = DenseEncoder(model, tokenizer, dataclasses.replace(cfg.dense, pooling="mean"))
        spread_texts = [p["text"] for p in passages[:32]]
        cosine_before = mean_pairwise_cosine(encoder, spread_texts) if len(spread_texts) > 1 else None
        dense_hist = train_dense(encoder, pairs, encoder.cfg, progress=progress)
        store = DocumentStore(encoder=encoder)
        store.add_documents(passages)
        row = {"init": name, "family": model.config.family, "params": sum(p.numel() for p in model.parameters()),
               "pretrain_loss": pre_loss, "cosine_before": cosine_before, "dense_loss": sum(dense_hist[-10:]) / len(dense_hist[-10:])}
        for set_name, questions in eval_sets.items():
            r = retrieval_recall(lambda q, k: store.search(q, k, mode="dense"), questions)
            row[f"{set_name} recall@1"], row[f"{set_name} recall@5"] = r["recall@1"], r["recall@5"]
        rows.append(row)
    return rows


def world_retrieval_task(kg, facts_eval: Sequence[dict] = ()) -> tuple[list, list, dict]:
    """The apps stage's retrieval task: (pairs, passages, eval_sets). Fine-tuning pairs are the TRAIN phrasings
    about every entity but the held-out (``sft_only``) people; ``heldout_people`` asks about those in the EVAL
    phrasings; ``world_paraphrases`` are the world's own held-out facts_eval phrasings (when given)."""
    from lmstack.apps.evaluate import facts_eval_questions
    from lmstack.apps.worldqa import entity_passages, fact_questions

    held = {p for p in kg.entities_of_type("person") if kg.meta.get(p, {}).get("group") == "sft_only"}
    passages = entity_passages(kg)
    text = {(p["entity"], p["lang"]): p["text"] for p in passages}
    pairs = [(q["question"], text[(q["entity"], q["lang"])]) for q in fact_questions(kg, "train")
             if q["entity"] not in held]
    eval_sets = {"heldout_people": [q for q in fact_questions(kg, "eval") if q["entity"] in held]}
    if facts_eval:
        eval_sets["world_paraphrases"] = facts_eval_questions(facts_eval)
    return pairs, passages, eval_sets
