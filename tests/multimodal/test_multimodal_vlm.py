"""Image-to-text: image slots, targets, batched KV-cache generation, staged training."""

import dataclasses

import pytest
import torch

from lmstack.model import Transformer
from lmstack.multimodal.images import images_to_tensor, make_image_dataset
from lmstack.multimodal.text import build_tokenizer, image_token_id, world_texts
from lmstack.multimodal.vit import EncoderConfig, VisionTransformer
from lmstack.multimodal.vlm import (VisionLanguageModel, collate, conversations, describe, encode_turn,
                                    evaluate_vlm, lm_config, train_stage, train_text_lm)


@pytest.fixture(scope="module")
def setup():
    data = make_image_dataset(64, seed=0, kinds=("shape",))
    tok = build_tokenizer(world_texts(data), vocab_size=400)
    torch.manual_seed(0)
    vision = VisionTransformer(EncoderConfig(d_model=32, n_layers=1, n_heads=4, patch_size=8))
    lm = Transformer(lm_config(tok.vocab_size, d_model=48, n_layers=1, n_heads=4))
    return data, tok, VisionLanguageModel(vision, lm, image_token_id(tok), "mlp")


def test_image_features_fill_exactly_the_image_slots(setup):
    data, tok, model = setup
    convs = conversations(data[:3], "vqa")[:3]
    ids, _ = collate(tok, convs, model.n_image_tokens)
    images = images_to_tensor([data[c.example].image for c in convs])
    x = model.input_embeddings(ids, images)
    slots = ids == image_token_id(tok)
    assert int(slots.sum()) == 3 * model.n_image_tokens
    torch.testing.assert_close(x[~slots], model.lm.embed(ids)[~slots])
    feats = model.projector(model.vision(images))
    torch.testing.assert_close(x[1][slots[1]], feats[1])
    bad = ids.clone()
    bad[0, torch.nonzero(slots[0])[0, 0]] = tok.pad_id
    with pytest.raises(ValueError, match="image slots"):
        model.input_embeddings(bad, images)
    with pytest.raises(ValueError, match="projector"):
        VisionLanguageModel(model.vision, model.lm, 0, "perceiver")


def test_targets_cover_only_the_reply(setup):
    data, tok, model = setup
    conv = conversations(data[:1], "caption")[0]
    ids, targets = collate(tok, [conv], model.n_image_tokens)
    kept = targets[targets != -100].tolist()
    assert tok.decode(kept[:-1]) == conv.answer and kept[-1] == tok.end_id
    # each kept target is the next input id
    pos = torch.nonzero(targets[0] != -100)[:-1, 0]
    assert torch.equal(targets[0, pos], ids[0, pos + 1])


def test_batched_cached_generation_matches_one_by_one(setup):
    data, tok, model = setup
    model.eval()
    convs = conversations(data[:2], "vqa")[:1] + conversations(data[2:3], "caption")[:1]
    prompts = [encode_turn(tok, c, model.n_image_tokens, with_answer=False)[0] for c in convs]
    assert len(prompts[0]) != len(prompts[1])  # so left padding is exercised
    images = images_to_tensor([data[c.example].image for c in convs])
    batch = model.generate(prompts, images, 6, stop_id=tok.end_id, pad_id=tok.pad_id)
    for i in range(2):
        single = model.generate([prompts[i]], images[i:i + 1], 6, stop_id=tok.end_id, pad_id=tok.pad_id)
        assert single[0] == batch[i]
        # and the cached greedy path equals recomputing the whole sequence each step
        ids = list(prompts[i])
        for tok_id in single[0]:
            t = torch.tensor([ids])
            logits = model(t, images[i:i + 1]).logits[0, -1]
            assert int(logits.argmax()) == tok_id
            ids.append(tok_id)


def test_stages_train_what_they_should(setup):
    data, tok, model = setup
    images = images_to_tensor([e.image for e in data])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_text_lm(model, tok, data, steps=20, batch_size=16, progress=False)
    after0 = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(before[k], after0[k]) for k in before if not k.startswith("lm."))
    assert any(not torch.equal(before[k], after0[k]) for k in before if k.startswith("lm."))
    log1 = train_stage(model, tok, data, images, {"caption": 1.0}, [model.projector], 15, "s1", batch_size=16,
                       progress=False)
    after1 = model.state_dict()
    changed = {k for k in before if not torch.equal(after0[k], after1[k])}
    assert changed and all(k.startswith("projector.") for k in changed)
    assert all(p.requires_grad for p in model.parameters())  # frozen only during the stage
    assert log1["losses"][-1] < log1["losses"][0]
    # stage 2 on the colour questions only, so a few seconds of training must beat chance (1/6) clearly
    colour_only = [dataclasses.replace(e, questions=[q for q in e.questions if "colo" in q["question"]
                                                     or "颜色" in q["question"]]) for e in data]
    train_stage(model, tok, colour_only, images, {"vqa": 1.0}, [model.projector, model.lm, model.vision], 300,
                "s2", batch_size=32, lr=3e-3, progress=False)
    metrics = evaluate_vlm(model, tok, colour_only[:24], max_new_tokens=6)
    assert set(metrics) >= {"caption_exact_en", "caption_chrf_zh", "vqa_acc_en", "vqa_acc_zh"}
    assert (metrics["vqa_acc_en"] + metrics["vqa_acc_zh"]) / 2 > 0.5, metrics
    assert isinstance(describe(model, tok, data[0].image, "what colour is the shape?", 6), str)


def test_qformer_projector_gives_a_fixed_number_of_image_tokens(setup):
    data, tok, base = setup
    torch.manual_seed(0)
    model = VisionLanguageModel(base.vision, base.lm, image_token_id(tok), "qformer", n_queries=4)
    assert model.n_image_tokens == 4
    convs = conversations(data[:2], "caption")[::2]  # one English caption turn per picture
    ids, targets = collate(tok, convs, model.n_image_tokens)
    images = images_to_tensor([data[c.example].image for c in convs])
    assert int((ids == image_token_id(tok)).sum()) == 2 * 4
    loss = model(ids, images, targets=targets).loss
    loss.backward()
    assert model.projector.queries.grad is not None and model.projector.queries.grad.abs().sum() > 0
    # every query sees the whole image: changing one corner patch moves all of them
    other = images.clone()
    other[:, :, :8, :8] += 2.0
    with torch.no_grad():
        a, b = model.projector(model.vision(images)), model.projector(model.vision(other))
    assert a.shape == (2, 4, model.lm.config.d_model)
    assert bool(((a - b).abs().amax(-1) > 1e-6).all())
    log = train_stage(model, tok, data, images_to_tensor([e.image for e in data]), {"caption": 1.0},
                      [model.projector], 5, "q", batch_size=8, progress=False)
    assert len(log["losses"]) == 5
