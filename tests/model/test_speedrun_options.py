"""Speedrun model options against hand-written references: ReLU^2 MLP, QK-norm, logit soft-capping,
value embeddings, U-net skips; and document-masked packing against running each document alone."""

import pytest
import torch
import torch.nn.functional as F

from lmstack.model import ModelConfig, Transformer, count_params, document_ids

BOS = 0


def small(**kw) -> ModelConfig:
    base = dict(vocab_size=50, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, ffn_hidden=24)
    base.update(kw)
    return ModelConfig.preset("llama-style", **base)


def rms(x, weight, eps):
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def reference_forward(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """The speedrun model written out by hand (no RoPE: position_type='none')."""
    cfg, (b, t) = model.config, ids.shape
    eps, hd, nh, nkv = cfg.norm_eps, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    x = model.embed.weight[ids]
    n, skips = cfg.n_layers, []
    for i, blk in enumerate(model.layers):
        if cfg.unet_skips and i < n // 2:
            skips.append(x)
        elif cfg.unet_skips and i >= n - n // 2:
            x = x + model.skip_weights[n - 1 - i] * skips.pop()
        a = blk.attn
        h = rms(x, blk.attn_norm.weight, eps)
        q = (h @ a.q_proj.weight.T).view(b, t, nh, hd)
        k = (h @ a.k_proj.weight.T).view(b, t, nkv, hd)
        v = h @ a.v_proj.weight.T
        if i < cfg.value_embed_layers:
            v = v + model.value_embeds[i].weight[ids]
        v = v.view(b, t, nkv, hd)
        if cfg.qk_norm:
            q, k = rms(q, a.q_norm.weight, eps), rms(k, a.k_norm.weight, eps)
        k, v = k.repeat_interleave(nh // nkv, dim=2), v.repeat_interleave(nh // nkv, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / hd ** 0.5
        scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        y = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, t, nh * hd)
        x = x + y @ a.o_proj.weight.T
        h = rms(x, blk.ffn_norm.weight, eps)
        x = x + (torch.relu(h @ blk.ffn.up_proj.weight.T) ** 2) @ blk.ffn.down_proj.weight.T
    logits = rms(x, model.norm.weight, eps) @ model.lm_head.weight.T
    if cfg.logit_softcap:
        logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
    return logits


@pytest.mark.parametrize("opts", [dict(), dict(qk_norm=True), dict(logit_softcap=3.0),
                                  dict(value_embed_layers=2), dict(unet_skips=True, n_layers=5),
                                  dict(qk_norm=True, logit_softcap=3.0, value_embed_layers=1, unet_skips=True,
                                       n_layers=4, tie_embeddings=False)])
def test_speedrun_options_match_hand_written_reference(opts):
    torch.manual_seed(0)
    cfg = small(ffn_type="relu2", position_type="none", **opts)
    model = Transformer(cfg).double()
    with torch.no_grad():  # move the zero/one-initialised extras away from their neutral values
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, cfg.vocab_size, (2, 11))
    torch.testing.assert_close(model(ids).logits, reference_forward(model, ids), rtol=1e-10, atol=1e-10)
    assert model.num_params() == count_params(cfg)


def test_neutral_initialisation_equals_the_plain_model():
    """Value embeddings start at zero and skip weights at one only add the encoder inputs; with the
    value tables zeroed, a model with them computes what the same weights without them compute."""
    torch.manual_seed(0)
    plain = Transformer(small())
    extra = Transformer(small(value_embed_layers=2))
    missing, unexpected = extra.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("value_embeds.") for k in missing)
    ids = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(extra(ids).logits, plain(ids).logits)


def test_document_ids_start_at_each_bos():
    ids = torch.tensor([[5, 0, 3, 4, 0, 0, 7]])
    assert document_ids(ids, BOS).tolist() == [[0, 1, 1, 1, 2, 3, 3]]


def pack(docs: list[list[int]]) -> torch.Tensor:
    return torch.tensor([sum(docs, [])])


@pytest.mark.parametrize("opts", [dict(), dict(position_type="learned"), dict(position_type="alibi"),
                                  dict(attention_pattern=["sliding"], sliding_window=3),
                                  dict(value_embed_layers=1, unet_skips=True, qk_norm=True)])
def test_doc_masked_packing_equals_each_document_alone(opts):
    torch.manual_seed(0)
    model = Transformer(small(**opts)).double().eval()
    g = torch.Generator().manual_seed(3)
    docs = [[BOS] + torch.randint(1, 50, (n - 1,), generator=g).tolist() for n in (5, 7, 1, 6)]
    docs[0] = docs[0][1:]  # a row may start mid-document (before its first BOS)
    packed = pack(docs)
    out = model(packed, doc_ids=document_ids(packed, BOS)).logits[0]
    start = 0
    for doc in docs:
        alone = model(torch.tensor([doc])).logits[0]
        torch.testing.assert_close(out[start:start + len(doc)], alone, rtol=1e-10, atol=1e-10)
        start += len(doc)
    # without the document mask the later documents see the earlier ones
    leaky = model(packed).logits[0]
    assert not torch.allclose(leaky[len(docs[0]):], out[len(docs[0]):])


def test_doc_masked_loss_and_gradients_equal_separate_documents():
    torch.manual_seed(0)
    model = Transformer(small()).double()
    docs = [[BOS, 3, 4, 5], [BOS, 9, 8], [BOS, 7, 7, 7, 2]]
    packed = pack(docs)
    targets = torch.cat([packed[:, 1:], torch.full((1, 1), -100)], dim=1)
    packed_loss = model(packed, targets=targets, doc_ids=document_ids(packed, BOS), fused_loss=True).loss
    # the same targets, summed over documents run alone (each doc's last target is the next doc's BOS)
    total, start = 0.0, 0
    for doc in docs:
        t = targets[:, start:start + len(doc)]
        total = total + model(torch.tensor([doc]), targets=t, fused_loss=True).loss * (t != -100).sum()
        start += len(doc)
    separate = total / (targets != -100).sum()
    torch.testing.assert_close(packed_loss, separate)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(packed_loss, params), torch.autograd.grad(separate, params)):
        torch.testing.assert_close(a, b)


def test_doc_ids_errors_are_actionable():
    model = Transformer(small())
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="doc_ids shape"):
        model(ids, doc_ids=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot be combined with kv_cache"):
        model(ids, doc_ids=torch.zeros(1, 4, dtype=torch.long), kv_cache=model.new_kv_cache(1, 8))
    with pytest.raises(ValueError, match="value_embed_layers"):
        small(value_embed_layers=3)


def test_speedrun_options_decode_with_kv_cache():
    """Value embeddings and U-net skips are per-token, so cached decoding gives the full forward's logits."""
    torch.manual_seed(0)
    model = Transformer(small(value_embed_layers=2, unet_skips=True, n_layers=3)).double().eval()
    with torch.no_grad():
        for p in model.value_embeds.parameters():
            p.normal_(0, 0.1)
    ids = torch.randint(0, 50, (1, 8))
    full = model(ids).logits
    cache = model.new_kv_cache(1, 8)
    steps = [model(ids[:, :5], kv_cache=cache).logits] + [model(ids[:, i:i + 1], kv_cache=cache).logits
                                                          for i in range(5, 8)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-10, atol=1e-10)
