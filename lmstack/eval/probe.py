"""A linear probe: how much of a property a frozen representation exposes to a linear classifier.

The relation probe (the ELMo experiment, Peters et al. 2018, in small): sentences from the world
that each state one fact are labelled with the fact's relation (birthplace, occupation, capital, ...).
A logistic-regression probe is fitted on mean-pooled token features and tested on sentences
written with HELD-OUT templates, so it must recognise the relation in wording it never saw; static
token embeddings are compared with contextual ones.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 *, steps: int = 300, lr: float = 0.05, weight_decay: float = 1e-3, seed: int = 0) -> float:
    """Fit a multinomial logistic regression on standardised features; return test accuracy."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(xtr.shape[1], n_classes, generator=gen) * 0.01).requires_grad_()
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = F.cross_entropy(xtr @ weight + bias, train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((xte @ weight + bias).argmax(-1) == test_y).float().mean())


def relation_sentences(world, lang: str = "en", heldout_templates: int = 2):
    """(train_sentences, train_labels, test_sentences, test_labels, relation_names): every fact of
    ``world`` rendered with every statement template of its relation; the last ``heldout_templates``
    templates of each relation are the test set."""
    from lmstack.data import world_text as T

    names = sorted({f.type for f in world.facts})
    train_s, train_y, test_s, test_y = [], [], [], []
    for fact in world.facts:
        templates = T.STATEMENTS[lang][fact.type]
        if len(templates) <= heldout_templates:
            raise ValueError(f"relation {fact.type!r} has {len(templates)} templates; cannot hold out {heldout_templates}")
        fields = world.fact_fields(fact, lang)
        for i, template in enumerate(templates):
            held = i >= len(templates) - heldout_templates
            (test_s if held else train_s).append(template.format(**fields))
            (test_y if held else train_y).append(names.index(fact.type))
    return train_s, torch.tensor(train_y), test_s, torch.tensor(test_y), names


@torch.no_grad()
def pooled_features(features: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tokenizer, sentences: list[str],
                    batch_size: int = 64, device: str = "cpu") -> torch.Tensor:
    """Mean over each sentence's tokens of ``features(ids [B, T], mask [B, T]) -> [B, T, F]`` (right padding)."""
    out = []
    for start in range(0, len(sentences), batch_size):
        rows = [list(tokenizer.encode(s)) or [0] for s in sentences[start:start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        ids, mask = ids.to(device), mask.to(device)
        h = features(ids, mask).float()
        w = mask[..., None].to(h.dtype)
        out.append(((h * w).sum(1) / w.sum(1)).cpu())
    return torch.cat(out)


def elmo_relation_probe(model, tokenizer, world, lang: str = "en", heldout_templates: int = 2,
                        device: str = "cpu") -> dict:
    """Probe accuracy of a BiLSTMLM's features: ``static`` (layer 0, the token embeddings),
    ``contextual`` (the top forward and backward LSTM states) and ``elmo`` (both side by side; a
    linear probe over them covers every ELMo scalar mix of the two layers)."""
    train_s, train_y, test_s, test_y, names = relation_sentences(world, lang, heldout_templates)
    model.eval()
    result = {"relations": names, "n_train": len(train_s), "n_test": len(test_s),
              "chance": float(torch.bincount(test_y).max()) / len(test_y)}
    kinds = {"static": lambda ids, mask: model.static_embeddings(ids),
             "contextual": lambda ids, mask: model.contextual_embeddings(ids, mask),
             "elmo": lambda ids, mask: torch.cat([model.static_embeddings(ids),
                                                  model.contextual_embeddings(ids, mask)], dim=-1)}
    for kind, fn in kinds.items():
        xtr = pooled_features(fn, tokenizer, train_s, device=device)
        xte = pooled_features(fn, tokenizer, test_s, device=device)
        result[kind] = linear_probe(xtr, train_y, xte, test_y)
    return result
