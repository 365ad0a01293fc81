"""Distillation losses and loop, sequence-level KD data, the student as a draft, QLoRA merge."""

import copy

import numpy as np
import pytest
import torch

from lmstack import DATA_DIR
from lmstack.compress.distill import DistillConfig, distill, kd_loss, speculative_report, teacher_sequences
from lmstack.compress.evaluate import kl_to_reference
from lmstack.compress.qlora import qlora_merge_report
from lmstack.model import ModelConfig, Transformer


def _model(seed=0, d=64, layers=2, vocab=97, init_std=0.02):
    torch.manual_seed(seed)
    cfg = ModelConfig.preset("llama-style", vocab_size=vocab, d_model=d, n_layers=layers, n_heads=4, n_kv_heads=2,
                             max_seq_len=64, init_std=init_std)
    return Transformer(cfg).eval()


def test_kd_loss_definitions():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    assert kd_loss(t, t).abs() < 1e-6
    T = 2.0
    ps, pt = (s / T).softmax(-1), (t / T).softmax(-1)
    forward = (pt * (pt.log() - ps.log())).sum(-1).mean() * T * T
    reverse = (ps * (ps.log() - pt.log())).sum(-1).mean() * T * T
    assert torch.allclose(kd_loss(s, t, T, "forward"), forward, atol=1e-5)
    assert torch.allclose(kd_loss(s, t, T, "reverse"), reverse, atol=1e-5)
    assert not torch.allclose(forward, reverse)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :2] = True
    assert torch.allclose(kd_loss(s, t, 1.0, mask=mask), kd_loss(s[0, :2], t[0, :2], 1.0), atol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        kd_loss(s, t, kind="sideways")


@pytest.mark.parametrize("kind", ["forward", "reverse"])
def test_distillation_moves_student_towards_teacher(kind):
    teacher = _model(seed=1)
    with torch.no_grad():  # a teacher with sharp, non-uniform predictions
        teacher.lm_head.weight.mul_(20)
    tokens = np.random.default_rng(0).integers(0, 97, size=5000)
    windows = torch.from_numpy(np.stack([tokens[i * 33:(i + 1) * 33] for i in range(8)]))

    def kl(student):
        with torch.no_grad():
            return float(kl_to_reference(student(windows).logits, teacher(windows).logits))

    cfg = dict(steps=40, batch_size=4, seq_len=32, lr=1e-2, temperature=1.0, kind=kind)
    students = {alpha: _model(seed=2, d=32, layers=1) for alpha in (0.0, 1.0)}
    before = kl(students[1.0])
    for alpha, student in students.items():
        distill(student, teacher, tokens, DistillConfig(alpha=alpha, **cfg), log=lambda s: None)
    assert kl(students[1.0]) < 0.8 * before
    assert kl(students[1.0]) < kl(students[0.0])  # the teacher, not the data, moved it


def _tokenizer():

    from lmstack.tokenizer import SPECIAL_TOKENS, train_tokenizer
    text = (DATA_DIR / "en" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:6000]
    return train_tokenizer([text], 300, mode="byte", special_tokens=list(SPECIAL_TOKENS), progress=False)


def test_teacher_sequences_and_self_draft():
    tok = _tokenizer()
    teacher = _model(seed=3, vocab=tok.vocab_size, init_std=0.08)
    prompts = [[tok.bos_id] + tok.encode("ROMEO:"), [tok.bos_id] + tok.encode("First Citizen")]
    rows = teacher_sequences(teacher, tok, prompts, max_new_tokens=10, seq_len=16, temperature=0)
    assert rows.shape == (2, 17)
    for r, p in zip(rows, prompts):
        assert r[:len(p)].tolist() == p
        assert (r[len(p):len(p) + 10] != tok.pad_id).all()
    # a draft identical to the target accepts every proposal and changes nothing
    rep = speculative_report(teacher, copy.deepcopy(teacher), tok, prompts, max_new_tokens=12)
    assert rep["acceptance_rate"] == 1.0 and rep["identical_outputs"]
    other = speculative_report(teacher, _model(seed=9, d=32, layers=1, vocab=tok.vocab_size, init_std=0.08), tok, prompts,
                               max_new_tokens=12)
    assert other["identical_outputs"] and other["acceptance_rate"] < 1.0


def test_qlora_merge_requantize_report():
    from lmstack.align.lora import lora_modules
    from lmstack.compress.qlora import attach_qlora

    model = _model(seed=4)
    attach_qlora(model, r=4, alpha=8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.05)
    windows = torch.randint(0, 97, (4, 33), generator=g)
    rep = qlora_merge_report(model, windows)
    assert rep["kl_merged_dense"] < 1e-6  # merging into fp32 is exact up to rounding
    assert rep["kl_merged_requantized"] > 100 * max(rep["kl_merged_dense"], 1e-12)  # rounding again costs
    assert abs(rep["ppl_merged_dense"] - rep["ppl_unmerged"]) < 1e-3
    assert len(lora_modules(model)) == 14  # the input model keeps its adapters (copies were merged)
