"""Greedy and beam search equal transformers' generate() token for token on the same weights.

A random-weight llama-style lmstack model is exported with lmstack.model.hf.export_hf and loaded as
LlamaForCausalLM. Both run in float64 so that the two implementations' logits agree far below the
gaps that decide an argmax or a beam ranking. The stop token is chosen among tokens the model
actually produces, so that beams really finish early and the early-stopping rules matter.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmstack.generate import GenerationConfig, generate  # noqa: E402
from lmstack.model import ModelConfig, Transformer  # noqa: E402
from lmstack.model.hf import export_hf  # noqa: E402


class _IdTokenizer:
    """Token ids as text; enough for the engine (the HF comparison is on ids)."""

    def __init__(self, vocab):
        self.vocab_size = vocab
        self.special_tokens = {}
        self.bos_id = None
        self.eos_id = None
        self.pad_id = 0

    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return "".join(f" {i}" for i in ids)


VOCAB = 96




@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(1234)
    cfg = ModelConfig.preset("llama-style", vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                             max_seq_len=128, init_std=0.08, tie_embeddings=False)
    ours = Transformer(cfg).eval()
    d = tmp_path_factory.mktemp("hf")
    export_hf(ours, d)
    hf = transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float64).eval()
    return ours.double(), hf


PROMPTS = [[5, 17, 33, 2, 71, 9, 40], [88, 3, 3, 60], [12, 45, 7, 7, 19, 23, 64, 31, 30, 11]]


def _hf_generate(hf, prompt, eos, **kw):
    ids = torch.tensor([prompt])
    gc = transformers.GenerationConfig(eos_token_id=eos, pad_token_id=0, bos_token_id=None, **kw)
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc)
    return out[:, len(prompt):]


def _strip(row, eos):
    toks = row.tolist()
    if eos in toks:
        toks = toks[: toks.index(eos) + 1]
    return toks


def _stop_token(ours, prompt):
    # a token greedy produces a few steps in: beams will meet it
    g = generate(ours, _IdTokenizer(VOCAB), [prompt], GenerationConfig(max_new_tokens=12, stop_token_ids=[]))[0]
    return g.token_ids[4]


def test_greedy_equals_hf_generate(models):
    ours, hf = models
    tok = _IdTokenizer(VOCAB)
    for prompt in PROMPTS:
        eos = _stop_token(ours, prompt)
        mine = generate(ours, tok, [prompt], GenerationConfig(max_new_tokens=24, stop_token_ids=[eos]))[0]
        ref = _hf_generate(hf, prompt, eos, max_new_tokens=24, do_sample=False)
        assert mine.token_ids == _strip(ref[0], eos)
        assert mine.finish_reason == "stop"


def test_greedy_with_processors_equals_hf(models):
    ours, hf = models
    tok = _IdTokenizer(VOCAB)
    prompt = PROMPTS[0]
    mine = generate(ours, tok, [prompt], GenerationConfig(max_new_tokens=30, stop_token_ids=[], repetition_penalty=1.3,
                                                          no_repeat_ngram_size=2))[0]
    ref = _hf_generate(hf, prompt, None, max_new_tokens=30, do_sample=False, repetition_penalty=1.3,
                       no_repeat_ngram_size=2)
    assert mine.token_ids == ref[0].tolist()


def test_batched_left_padded_greedy_equals_unbatched(models):
    ours, hf = models
    tok = _IdTokenizer(VOCAB)
    cfg = GenerationConfig(max_new_tokens=16, stop_token_ids=[])
    batched = generate(ours, tok, PROMPTS, cfg)
    for prompt, b in zip(PROMPTS, batched):
        ref = _hf_generate(hf, prompt, None, max_new_tokens=16, do_sample=False)
        assert b.token_ids == ref[0].tolist()


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping,n_return", [
    (4, 1.0, False, 1),
    (4, 0.0, True, 2),
    (3, 2.0, False, 3),
    (4, -1.0, True, 1),
    (4, 1.5, "never", 2),
    (2, 0.5, "never", 1),
])
def test_beam_search_equals_hf_generate(models, num_beams, length_penalty, early_stopping, n_return):
    ours, hf = models
    tok = _IdTokenizer(VOCAB)
    finished_early = 0
    for prompt in PROMPTS:
        eos = _stop_token(ours, prompt)
        cfg = GenerationConfig(strategy="beam", num_beams=num_beams, length_penalty=length_penalty,
                               early_stopping=early_stopping, num_return_sequences=n_return,
                               max_new_tokens=20, stop_token_ids=[eos])
        mine = generate(ours, tok, [prompt], cfg)[0]
        gc = dict(max_new_tokens=20, do_sample=False, num_beams=num_beams, length_penalty=length_penalty,
                  early_stopping=early_stopping, num_return_sequences=n_return)
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), output_scores=True, return_dict_in_generate=True,
                              generation_config=transformers.GenerationConfig(eos_token_id=eos, pad_token_id=0, **gc))
        beams = mine.extra["beams"]
        assert len(beams) == n_return
        for i, beam in enumerate(beams):
            ref_row = out.sequences[i, len(prompt):]
            assert beam.token_ids == _strip(ref_row, eos)[: len(beam.token_ids)]
            # whatever HF returns after our tokens is filler (HF fills with eos when pad_token_id is 0)
            assert set(ref_row[len(beam.token_ids):].tolist()) <= {0, eos}
            assert beam.score == pytest.approx(float(out.sequences_scores[i]), rel=1e-4, abs=1e-4)
            finished_early += beam.finish_reason == "stop"
    if length_penalty <= 1.0:  # long hypotheses win under a large length bonus
        assert finished_early > 0  # the stop token was really in play
