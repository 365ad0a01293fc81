"""BERT-style masked LM: masking statistics, bidirectionality, training, HF BertForMaskedLM parity."""

import pytest
import torch

from lmstack.model import ModelConfig, build_model
from lmstack.model.hf import export_bert
from lmstack.model.mlm import MaskedLM, mask_tokens


def _tiny(**kw):
    base = dict(vocab_size=60, d_model=32, n_layers=2, n_heads=4, max_seq_len=32, ffn_hidden=64)
    base.update(kw)
    return ModelConfig.preset("bert-style", **base)


def test_masking_statistics_are_15_percent_with_80_10_10():
    gen = torch.Generator().manual_seed(0)
    vocab, mask_id, special = 1000, 1000, (0, 1)
    ids = torch.randint(2, vocab, (200, 1000), generator=gen)
    ids[:, 0] = 0  # a BOS-like special token in every row: never chosen
    inputs, labels = mask_tokens(ids, vocab, mask_id, 0.15, gen, special_ids=special)
    chosen = labels != -100
    assert not chosen[:, 0].any()
    n = ids[:, 1:].numel()
    assert abs(chosen.sum().item() / n - 0.15) < 0.003
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the original tokens
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing else is touched
    k = chosen.sum().item()
    masked = (inputs[chosen] == mask_id).sum().item() / k
    kept = (inputs[chosen] == ids[chosen]).sum().item() / k
    randomised = 1 - masked - kept
    assert abs(masked - 0.8) < 0.01
    assert abs(kept - (0.1 + 0.1 / vocab)) < 0.01  # a random draw may hit the original token
    assert abs(randomised - 0.1 * (1 - 1 / vocab)) < 0.01
    replaced = inputs[chosen & (inputs != mask_id) & (inputs != ids)]
    assert replaced.min() >= 0 and replaced.max() < vocab  # random tokens come from the vocabulary
    assert replaced.float().std() > 0.25 * vocab  # spread over it, not one value


def test_encoder_is_bidirectional_and_padding_is_ignored():
    torch.manual_seed(0)
    model = MaskedLM(_tiny()).eval()
    a = torch.randint(0, 60, (1, 10))
    b = a.clone()
    b[0, 9] = (a[0, 9] + 1) % 60
    assert (model(a).logits[0, 0] - model(b).logits[0, 0]).abs().max() > 1e-4  # the first token sees the last
    padded = torch.cat([a, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 4)], 1).long()
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, :10], model(a).logits,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.encode(padded, mask), model.encode(a), atol=1e-5, rtol=1e-5)
    with pytest.raises(NotImplementedError, match="causal family"):
        model.new_kv_cache(1, 8)


def test_mlm_overfits_one_batch_and_fills_in_masks():
    torch.manual_seed(0)
    model = build_model(_tiny())
    assert isinstance(model, MaskedLM) and model.mask_id == 60
    ids = torch.randint(0, 60, (4, 16))
    inputs, labels = mask_tokens(ids, 60, model.mask_id, 0.3, torch.Generator().manual_seed(1))
    first = model(inputs, labels=labels).loss.item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(inputs, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = model(inputs, labels=labels)
    chosen = labels != -100
    assert first > 3.5 and out.loss.item() < 0.1, (first, out.loss.item())
    assert torch.equal(out.logits.argmax(-1)[chosen], ids[chosen])


def test_mlm_trains_through_trainer_and_reloads(tmp_path):
    from lmstack.model import load_pretrained, save_pretrained
    from lmstack.train.optim import OptimConfig
    from lmstack.train.schedule import ScheduleConfig
    from lmstack.train.trainer import TrainConfig, Trainer
    from test_train_helpers import periodic_tokens

    torch.manual_seed(0)
    model = build_model(_tiny(vocab_size=32))
    cfg = TrainConfig(steps=300, batch_size=8, seq_len=16, loader="random", log_every=10, eval_every=150,
                      ckpt_every=0, eval_batches=2, peak_flops=1e9, dtype="fp32",
                      optim=OptimConfig(lr=3e-3, weight_decay=0.0),
                      schedule=ScheduleConfig(kind="constant", warmup_steps=0))
    summary = Trainer(model, cfg, train_tokens=periodic_tokens(3000, vocab=32),
                      val_tokens=periodic_tokens(500, vocab=32, seed=1), progress=False, log=lambda m: None).train()
    # the self-masked objective learns (ln(33) = 3.5 at the start); the eval masking is seeded
    assert summary.val_loss is not None and summary.val_loss < 3.0, summary.val_loss
    save_pretrained(model, tmp_path)
    again = load_pretrained(tmp_path).eval()
    assert isinstance(again, MaskedLM) and again.lm_head.weight is again.embed.weight
    x = torch.randint(0, 32, (2, 12))
    torch.testing.assert_close(again(x).logits, model.eval()(x).logits)


@pytest.mark.parametrize("ffn_type", ["gelu", "gelu_tanh"])
def test_export_to_hf_bert_gives_equal_logits(tmp_path, ffn_type):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = MaskedLM(_tiny(ffn_type=ffn_type, init_std=0.1)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mis-mapped tensor shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    export_bert(model, tmp_path)
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 61, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 15:] = 0
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    assert (ours[0] - theirs[0]).abs().max().item() < 1e-4
    assert (ours[1, :15] - theirs[1, :15]).abs().max().item() < 1e-4


def test_export_refuses_what_bert_cannot_express(tmp_path):
    from lmstack.model.hf import HFExportError

    model = MaskedLM(_tiny(n_kv_heads=2))
    with pytest.raises(HFExportError, match="grouped-query"):
        export_bert(model, tmp_path)


def test_hf_export_entry_point_routes_by_family(tmp_path):
    from lmstack.model.hf import HFExportError, export_hf

    transformers = pytest.importorskip("transformers")
    model = MaskedLM(_tiny()).eval()
    export_hf(model, tmp_path / "bert")
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "bert").eval()
    ids = torch.randint(0, 60, (1, 9))
    with torch.no_grad():
        assert (model(ids).logits - hf(input_ids=ids).logits).abs().max().item() < 1e-4
    with pytest.raises(HFExportError, match="family 'gla'"):
        export_hf(build_model(ModelConfig(family="gla", vocab_size=60, d_model=32, n_layers=1, n_heads=2,
                                          n_kv_heads=0)), tmp_path / "gla")


def test_mask_token_can_be_an_existing_id():
    model = MaskedLM(_tiny(mlm_mask_id=3))
    assert model.mask_id == 3 and model.n_embeddings == 60
    assert model(torch.randint(0, 60, (1, 5))).logits.shape == (1, 5, 60)
    with pytest.raises(ValueError, match="mlm_mask_id"):
        _tiny(mlm_mask_id=60)
