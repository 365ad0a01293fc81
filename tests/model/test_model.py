"""lmstack.model: every config combination, causality, GQA, RoPE, masks, MoE, KV cache, save/load."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lmstack.config import ConfigError
from lmstack.model import (PRESETS, ModelConfig, PositionalEncoding, Transformer, alibi_slopes,
                           count_params, load_pretrained, save_pretrained)
from lmstack.model import flops_per_token, matmul_params
from lmstack.model.io import CheckpointError
from lmstack.model.positions import apply_rotary, rope_inverse_frequencies





def tiny(**overrides) -> ModelConfig:
    base = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32,
                ffn_hidden=48, sliding_window=4, n_global_tokens=2)
    base.update(overrides)
    return ModelConfig(**base)


def build(cfg: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg)
    # default init has tiny output projections; bigger weights make differences visible
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def tokens(b: int, t: int, vocab: int = 61, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t), generator=g)


# ---------------------------------------------------------------------------- combinations
FFNS = ["relu", "gelu", "gelu_tanh", "swiglu", "relu2"]
NORMS = ["layernorm", "rmsnorm"]
POSITIONS = ["learned", "sinusoidal", "rope", "alibi", "none"]
KV_HEADS = [4, 2, 1]  # MHA, GQA, MQA
PATTERNS = [["full"], ["sliding"], ["local_global", "full"]]
ALL_COMBOS = list(itertools.product(FFNS, NORMS, POSITIONS, KV_HEADS, range(len(PATTERNS))))


def test_every_config_combination_forward_backward():
    """Full product of the main axes (450 models); boolean/MoE/scaling options rotate through them."""
    x = tokens(2, 12)
    scalings = ["none", "linear", "ntk", "yarn"]
    for i, (ffn, norm, pos, kv, pat) in enumerate(ALL_COMBOS):
        cfg = tiny(ffn_type=ffn, norm_type=norm, position_type=pos, n_kv_heads=kv,
                   attention_pattern=PATTERNS[pat], n_layers=2, d_model=16, ffn_hidden=24,
                   qk_norm=i % 2 == 0, tie_embeddings=i % 3 != 0, bias=i % 4 == 1, norm_bias=i % 5 == 2,
                   logit_softcap=30.0 if i % 7 == 3 else 0.0, dropout=0.1 if i % 11 == 5 else 0.0,
                   n_experts=4 if i % 6 == 4 else 0, moe_top_k=2, moe_shared_expert=i % 12 == 4,
                   moe_capacity_factor=1.0 if i % 24 == 4 else 0.0,
                   rope_scaling=scalings[i % 4], rope_scaling_factor=2.0)
        torch.manual_seed(i)
        model = Transformer(cfg).train()
        assert model.num_params() == count_params(cfg), cfg
        out = model(x, targets=x)
        assert out.logits.shape == (2, 12, cfg.vocab_size)
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss), cfg
        (out.loss + out.aux_loss).backward()
        for name, p in model.named_parameters():
            if ".experts." in name:
                continue  # an expert that received no token this batch has no gradient
            assert p.grad is not None and torch.isfinite(p.grad).all(), (name, cfg)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_and_report_parameter_count(preset):
    cfg = ModelConfig.preset(preset, vocab_size=128, n_layers=2)
    model = Transformer(cfg)
    assert model.num_params() == cfg.num_params() > 0
    full = ModelConfig.preset(preset)
    assert 6_000_000 < full.num_params() < 10_000_000  # the documented "~7M at vocab 4096" sizes


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="ffn_type"):
        ModelConfig(ffn_type="swish")
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(n_heads=8, n_kv_heads=3)
    with pytest.raises(ConfigError, match="unknown key 'n_layer'"):
        ModelConfig.from_dict({"n_layer": 3})
    with pytest.raises(ConfigError, match="attention_pattern"):
        ModelConfig.from_dict({"attention_pattern": ["full", "dense"]})
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("gpt5")


# ---------------------------------------------------------------------------- causality
@pytest.mark.parametrize("overrides", [
    dict(), dict(position_type="alibi"), dict(position_type="learned", ffn_type="gelu", norm_type="layernorm"),
    dict(attention_pattern=["sliding"]), dict(attention_pattern=["local_global"]),
    dict(n_experts=4, moe_top_k=2, moe_shared_expert=True), dict(position_type="sinusoidal", qk_norm=True),
])
def test_future_tokens_never_change_earlier_logits(overrides):
    model = build(tiny(**overrides))
    x = tokens(2, 16)
    base = model(x).logits
    for j in (3, 9, 15):
        y = x.clone()
        y[:, j] = (y[:, j] + 7) % 61
        out = model(y).logits
        torch.testing.assert_close(out[:, :j], base[:, :j], atol=1e-5, rtol=0)
        assert (out[:, j] - base[:, j]).abs().max() > 1e-4  # and the changed position does react


# ---------------------------------------------------------------------------- attention vs a naive reference
def naive_forward(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    """Textbook re-implementation (explicit softmax, per-head loops) of a rope/alibi model's forward."""
    cfg = model.config
    t = x.shape[1]
    h = model.embed(x)
    pos = torch.arange(t)
    for blk in model.layers:
        a = blk.attn
        z = blk.attn_norm(h)
        q = a.q_proj(z).view(-1, t, cfg.n_heads, cfg.head_dim)
        k = a.k_proj(z).view(-1, t, cfg.n_kv_heads, cfg.head_dim)
        v = a.v_proj(z).view(-1, t, cfg.n_kv_heads, cfg.head_dim)
        heads = []
        for head in range(cfg.n_heads):
            kv = head // (cfg.n_heads // cfg.n_kv_heads)
            qh, kh, vh = q[:, :, head], k[:, :, kv], v[:, :, kv]
            if cfg.position_type == "rope":
                inv, _ = rope_inverse_frequencies(cfg.head_dim, cfg.rope_theta)
                ang = pos[:, None].float() * inv[None]
                c, s = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
                rot = lambda u: torch.cat([-u[..., cfg.head_dim // 2:], u[..., :cfg.head_dim // 2]], -1)  # noqa: E731
                qh, kh = qh * c + rot(qh) * s, kh * c + rot(kh) * s
            scores = qh @ kh.transpose(-1, -2) / math.sqrt(cfg.head_dim)
            dist = pos[:, None] - pos[None, :]
            if cfg.position_type == "alibi":
                scores = scores - alibi_slopes(cfg.n_heads)[head] * dist.clamp(min=0)
            allowed = dist >= 0
            if blk.attention_type == "sliding":
                allowed &= dist < cfg.sliding_window
            scores = scores.masked_fill(~allowed, float("-inf"))
            heads.append(scores.softmax(-1) @ vh)
        h = h + a.o_proj(torch.cat(heads, -1))
        h = h + blk.ffn(blk.ffn_norm(h))
    return model.lm_head(model.norm(h))


@pytest.mark.parametrize("overrides", [
    dict(n_kv_heads=4), dict(n_kv_heads=2), dict(n_kv_heads=1), dict(position_type="alibi", n_kv_heads=2),
    dict(attention_pattern=["sliding", "full"], n_kv_heads=2),
])
def test_attention_matches_naive_reference(overrides):
    model = build(tiny(**overrides))
    x = tokens(2, 13)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, naive_forward(model, x), atol=2e-5, rtol=1e-5)


def test_gqa_with_replicated_kv_heads_equals_mha():
    """A GQA model equals the MHA model whose k/v heads are its kv heads repeated per group,
    and a GQA config with n_kv_heads = n_heads *is* plain MHA (same forward)."""
    gqa = build(tiny(n_kv_heads=2))
    mha = Transformer(tiny(n_kv_heads=4)).eval()
    state = gqa.state_dict()
    for i in range(2):
        for name in ("k_proj", "v_proj"):
            w = state[f"layers.{i}.attn.{name}.weight"].view(2, 8, 32)  # [kv_heads, head_dim, d]
            state[f"layers.{i}.attn.{name}.weight"] = w.repeat_interleave(2, dim=0).reshape(32, 32)
    mha.load_state_dict(state)
    x = tokens(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(mha(x).logits, gqa(x).logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- positions
def test_sinusoidal_values_bounded_and_shift_is_a_fixed_linear_map():
    pe = PositionalEncoding(64, max_len=600)
    assert pe.pe.min() >= -1.0 and pe.pe.max() <= 1.0 and pe.pe.shape == (600, 64)
    # Fit M_k by least squares on one set of positions and check it on disjoint, later positions:
    # a single linear map works for every pos. (d=16 and a long span keep the fit well conditioned.)
    pe16 = PositionalEncoding(16, max_len=30000)
    table = pe16.pe.double()
    fit_pos, check_pos = torch.arange(0, 12000, 7), torch.arange(15000, 29000, 11)
    for k in (1, 5, 37):
        fitted = torch.linalg.lstsq(table[fit_pos], table[fit_pos + k]).solution.T
        torch.testing.assert_close(table[check_pos] @ fitted.T, table[check_pos + k], atol=1e-6, rtol=0)
        # the closed form from the angle-addition formulas is that same map
        torch.testing.assert_close(fitted, pe16.shift_matrix(k), atol=1e-7, rtol=0)
        closed = pe.shift_matrix(k)
        torch.testing.assert_close(pe.pe[:500].double() @ closed.T, pe.pe[k:500 + k].double(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("scaling", ["none", "linear", "ntk", "yarn"])
def test_rope_scores_depend_only_on_relative_position(scaling):
    inv, scale = rope_inverse_frequencies(16, 10000.0, scaling, 4.0, 32)
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)

    def score(m: int, n: int) -> float:
        def rot(vec, p):
            ang = p * inv
            c, s = torch.cat([ang.cos()] * 2) * scale, torch.cat([ang.sin()] * 2) * scale
            return apply_rotary(vec, c, s)
        return float(rot(q, m) @ rot(k, n))

    for m, n in [(5, 2), (40, 3), (100, 100)]:
        for shift in (1, 17, 999):
            assert math.isclose(score(m, n), score(m + shift, n + shift), rel_tol=1e-4, abs_tol=1e-4)
    assert abs(score(5, 2) - score(9, 2)) > 1e-3


def test_rope_model_is_invariant_to_a_global_position_shift():
    model = build(tiny(attention_pattern=["full"]))
    x = tokens(2, 10)
    pos = torch.arange(10)[None].expand(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(model(x, position_ids=pos + 50).logits, model(x).logits, atol=1e-4, rtol=1e-4)


def test_context_extension_scalings_behave_as_defined():
    inv0, _ = rope_inverse_frequencies(32, 10000.0)
    inv_pi, _ = rope_inverse_frequencies(32, 10000.0, "linear", 4.0)
    torch.testing.assert_close(inv_pi, inv0 / 4)
    inv_ntk, _ = rope_inverse_frequencies(32, 10000.0, "ntk", 4.0)
    assert math.isclose(inv_ntk[0].item(), 1.0) and math.isclose(inv_ntk[-1].item(), inv0[-1].item() / 4, rel_tol=1e-4)
    # YaRN with a 4096 context: pairs 0..5 turn >= 32 times (kept), pairs 12..15 < once (interpolated)
    inv_yarn, scale = rope_inverse_frequencies(32, 10000.0, "yarn", 4.0, 4096)
    assert torch.allclose(inv_yarn[:6], inv0[:6]) and torch.allclose(inv_yarn[12:], inv0[12:] / 4)
    assert ((inv_yarn[6:12] < inv0[6:12]) & (inv_yarn[6:12] > inv0[6:12] / 4)).all()
    assert math.isclose(scale, 0.1 * math.log(4) + 1)
    model = build(tiny())
    x = tokens(1, 20)
    before = model(x).logits
    model.set_rope_scaling("linear", 2.0)
    assert model.config.rope_scaling == "linear"
    assert (model(x).logits - before).abs().max() > 1e-3


# ---------------------------------------------------------------------------- masks
def test_sliding_window_mask_shape():
    model = Transformer(tiny(attention_pattern=["sliding"], sliding_window=3))
    masks, _ = model._attention_masks(8, 0, None, "cpu")
    m = masks["sliding"][0, 0]
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    assert torch.equal(m, (j <= i) & (i - j < 3))
    lg = Transformer(tiny(attention_pattern=["local_global"], sliding_window=3, n_global_tokens=2))
    m = lg._attention_masks(8, 0, None, "cpu")[0]["local_global"][0, 0]
    assert torch.equal(m, (j <= i) & ((i - j < 3) | (j < 2)))


def test_sliding_window_limits_receptive_field():
    model = build(tiny(attention_pattern=["sliding"], sliding_window=4, n_layers=1))
    x = tokens(1, 16)
    y = x.clone()
    y[0, 0] = (y[0, 0] + 1) % 61
    diff = (model(x).logits - model(y).logits).abs().amax(-1)[0]
    assert (diff[:4] > 1e-4).all() and (diff[4:] < 1e-6).all()
    glob = build(tiny(attention_pattern=["local_global"], sliding_window=4, n_global_tokens=1, n_layers=1))
    diff = (glob(x).logits - glob(y).logits).abs().amax(-1)[0]
    assert (diff > 1e-4).all()  # token 0 is global: every position sees it


def test_left_padding_mask_matches_unpadded_forward():
    for overrides in (dict(), dict(position_type="alibi"), dict(attention_pattern=["local_global"]),
                      dict(position_type="learned")):
        model = build(tiny(**overrides))
        x = tokens(1, 9)
        padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], dim=1)
        mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 9)], dim=1).long()
        with torch.no_grad():
            out = model(padded, attention_mask=mask).logits[:, 3:]
            torch.testing.assert_close(out, model(x).logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- MoE
def test_moe_routing_matches_manual_computation_and_aux_loss_formula():
    cfg = tiny(n_experts=4, moe_top_k=2, moe_shared_expert=True, n_layers=1)
    model = build(cfg)
    moe = model.layers[0].ffn
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out, aux = moe(x)
        flat = x.reshape(-1, 32)
        logits = moe.router(flat)
        probs = logits.softmax(-1)
        expected = moe.shared_expert(flat)
        counts = torch.zeros(4)
        for n in range(flat.shape[0]):
            top = probs[n].topk(2)
            w = top.values / top.values.sum()
            for g, e in zip(w, top.indices):
                expected[n] += g * moe.experts[e](flat[n])
                counts[e] += 1
        torch.testing.assert_close(out.reshape(-1, 32), expected, atol=1e-5, rtol=1e-5)
        balance = 4 * ((counts / (10 * 2)) * probs.mean(0)).sum()
        z = torch.logsumexp(logits, -1).square().mean()
        torch.testing.assert_close(aux, cfg.moe_aux_loss_coef * balance + cfg.moe_z_loss_coef * z)


def test_moe_aux_loss_pushes_load_off_an_overloaded_expert():
    cfg = tiny(n_experts=4, moe_top_k=1, n_layers=1, moe_aux_loss_coef=1.0, moe_z_loss_coef=0.0)
    torch.manual_seed(0)
    moe = Transformer(cfg).layers[0].ffn
    x = torch.randn(256, 32) + 0.5
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 0.2  # every token prefers expert 0
    _, aux = moe(x)
    assert moe.last_load.tolist() == [1.0, 0.0, 0.0, 0.0]
    prob0 = moe.router(x).softmax(-1)[:, 0].mean().item()
    aux.backward()
    with torch.no_grad():
        moe.router.weight -= 0.05 * moe.router.weight.grad  # one small gradient step on the aux loss
    _, aux_after = moe(x)
    assert moe.router(x).softmax(-1)[:, 0].mean().item() < prob0 - 0.01
    assert aux_after.item() < aux.item()


def test_moe_capacity_drops_overflow_only_in_training():
    cfg = tiny(n_experts=4, moe_top_k=1, n_layers=1, moe_capacity_factor=1.0)
    model = build(cfg)
    moe = model.layers[0].ffn
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0  # tokens with x[0] > 0 all go to expert 0
    x = torch.randn(1, 64, 32).abs()
    moe.train()
    out_train, _ = moe(x)
    assert moe.last_dropped_fraction == pytest.approx(1 - 16 / 64)  # capacity = 64 * 1 / 4
    dropped_rows = (out_train[0].abs().sum(-1) == 0).sum().item()
    assert dropped_rows == 48
    moe.eval()
    out_eval, _ = moe(x)
    assert moe.last_dropped_fraction == 0 and (out_eval[0].abs().sum(-1) > 0).all()


# ---------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize("overrides", [
    dict(), dict(n_kv_heads=1), dict(position_type="alibi"), dict(position_type="learned", norm_type="layernorm"),
    dict(position_type="sinusoidal"), dict(attention_pattern=["sliding", "local_global"]),
    dict(n_experts=4, moe_top_k=2), dict(qk_norm=True, logit_softcap=5.0), dict(rope_scaling="yarn", rope_scaling_factor=2.0),
])
def test_kv_cache_matches_full_forward(overrides):
    model = build(tiny(**overrides))
    x = tokens(2, 14)
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_kv_cache(2, 20)
        steps = [model(x[:, :5], kv_cache=cache).logits]  # prefill
        steps.append(model(x[:, 5:8], kv_cache=cache).logits)  # a multi-token chunk
        for i in range(8, 14):
            steps.append(model(x[:, i:i + 1], kv_cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 14


@pytest.mark.parametrize("overrides", [dict(), dict(position_type="alibi"), dict(attention_pattern=["local_global"]),
                                       dict(position_type="learned")])
def test_kv_cache_with_left_padding_matches_each_unpadded_sequence(overrides):
    model = build(tiny(**overrides))
    a, b = tokens(1, 10, seed=2), tokens(1, 6, seed=3)
    prompt = torch.stack([a[0, :6], torch.cat([torch.zeros(3, dtype=torch.long), b[0, :3]])])
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        cache = model.new_kv_cache(2, 16)
        got = [model(prompt, attention_mask=mask, kv_cache=cache).logits]
        for i in range(3):  # decode 3 more tokens per row; later steps pass no mask or an HF-style full one
            step = torch.stack([a[0, 6 + i], b[0, 3 + i]])[:, None]
            full_mask = torch.cat([mask, torch.ones(2, i + 1, dtype=mask.dtype)], dim=1) if i == 1 else None
            got.append(model(step, kv_cache=cache, attention_mask=full_mask).logits)
        got = torch.cat(got, dim=1)
        torch.testing.assert_close(got[0], model(a[:, :9]).logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1, 3:], model(b).logits[0], atol=1e-5, rtol=1e-5)


def test_kv_cache_reorder_crop_and_overflow():
    model = build(tiny())
    x = tokens(2, 8)
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_kv_cache(2, 8)
        model(x[:, :6], kv_cache=cache)
        cache.crop(4)  # forget 2 tokens, recompute them
        tail = model(x[:, 4:6], kv_cache=cache).logits
        torch.testing.assert_close(tail, full[:, 4:6], atol=1e-5, rtol=1e-5)
        cache.reorder(torch.tensor([1, 0]))
        swapped = model(x.flip(0)[:, 6:7], kv_cache=cache).logits
        torch.testing.assert_close(swapped, full.flip(0)[:, 6:7], atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="KV cache full"):
            model(x[:, :2], kv_cache=cache)


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("preset", ["llama-style", "gpt2-style", "moe"])
def test_overfits_one_batch(preset):
    torch.manual_seed(0)
    cfg = ModelConfig.preset(preset, vocab_size=64, d_model=64, n_layers=2, n_heads=4, max_seq_len=32,
                             **({"n_kv_heads": 2, "moe_expert_hidden": 64} if preset != "gpt2-style" else {}))
    model = Transformer(cfg).train()
    x = torch.randint(0, 64, (4, 33))
    inp, tgt = x[:, :-1], x[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(80):
        out = model(inp, targets=tgt)
        first = first if first is not None else out.loss.item()
        opt.zero_grad()
        (out.loss + out.aux_loss).backward()
        opt.step()
    assert first > 3.5 and out.loss.item() < 0.1, (first, out.loss.item())


def test_loss_ignores_minus_100_and_softcap_bounds_logits():
    model = build(tiny(logit_softcap=2.0))
    x = tokens(2, 8)
    tgt = x.clone()
    tgt[:, :4] = -100
    out = model(x, targets=tgt)
    ref = F.cross_entropy(out.logits[:, 4:].reshape(-1, 61), x[:, 4:].reshape(-1))
    torch.testing.assert_close(out.loss, ref)
    assert out.logits.abs().max() <= 2.0
    none = model(x, targets=torch.full_like(x, -100))
    assert none.loss.item() == 0.0 and none.loss.requires_grad


@pytest.mark.parametrize("overrides", [dict(), dict(qk_norm=True), dict(position_type="alibi"),
                                       dict(n_experts=4, moe_top_k=2), dict(attention_pattern=["sliding"])])
def test_bf16_autocast_forward_backward_and_cache(overrides):
    model = build(tiny(**overrides)).train()
    x = tokens(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, targets=x, return_hidden=True)
    out.loss.backward()
    ref = model(x, targets=x).loss
    assert out.hidden.shape == (2, 16, 32)
    assert abs(out.loss.item() - ref.item()) < 0.05 * ref.item()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model.new_kv_cache(2, 16)
        model(x[:, :15], kv_cache=cache)
        step = model(x[:, 15:], kv_cache=cache).logits.float()
    torch.testing.assert_close(step, model(x).logits[:, 15:], atol=0.1 * ref.item(), rtol=0.05)


def test_projections_are_plain_linears_with_stable_names():
    model = Transformer(tiny(n_experts=2, moe_top_k=1, moe_every=2))
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "router", "lm_head"} <= names


# ---------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_save_load_round_trip(tmp_path, preset):
    cfg = ModelConfig.preset(preset, vocab_size=100, n_layers=2, d_model=64, n_heads=4,
                             **({"n_kv_heads": 2} if preset != "gpt2-style" else {}),
                             tie_embeddings=preset != "moe")
    model = build(cfg)
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    x = tokens(2, 10, vocab=100)
    torch.testing.assert_close(loaded(x).logits, model(x).logits, atol=0, rtol=0)
    if cfg.tie_embeddings:
        assert loaded.lm_head.weight is loaded.embed.weight
    assert not list((tmp_path / "m").glob("*.tmp"))


def test_load_errors_are_actionable(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)
    save_pretrained(Transformer(tiny()), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="weights file missing"):
        load_pretrained(tmp_path / "m")


def _truncate(path, keep=0.5):
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * keep)])


def test_truncated_checkpoint_is_one_clear_line(tmp_path, capsys):
    model = Transformer(ModelConfig.preset("llama-style", vocab_size=64, d_model=32, n_layers=1, n_heads=2,
                                           n_kv_heads=1, max_seq_len=16))
    save_pretrained(model, tmp_path)
    _truncate(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable safetensors file, truncated or corrupt"):
        load_pretrained(tmp_path)


def test_flops_count_the_tied_lm_head_and_only_active_experts():
    cfg = ModelConfig.preset("llama-style", vocab_size=1000, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                             max_seq_len=32)
    model = Transformer(cfg)
    assert cfg.tie_embeddings
    non_embedding = model.num_params(exclude_embeddings=True)
    norms = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 1)
    assert matmul_params(model) == non_embedding - norms + 1000 * 64  # the lm_head matmul is counted
    assert flops_per_token(model, 32) == 6 * matmul_params(model) + 6 * 2 * 32 * 64
    assert flops_per_token(model, 32, training=False) * 3 == flops_per_token(model, 32)

    moe = Transformer(ModelConfig.preset("moe", vocab_size=1000, d_model=64, n_layers=1, max_seq_len=32))
    layer = moe.layers[0].ffn
    expert = sum(p.numel() for p in layer.experts[0].parameters() if p.dim() == 2)
    every_linear = sum(m.weight.numel() for m in moe.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_params(moe) == every_linear - (layer.n_experts - layer.top_k) * expert
