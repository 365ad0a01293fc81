"""CLIP: the loss against transformers' CLIPModel, retrieval recall, zero-shot, a tiny training run."""

import math

import pytest
import torch

from lmstack.multimodal.clip import CLIP, CLIPConfig, clip_loss, evaluate_clip, retrieval_recall, train_clip
from lmstack.multimodal.common import chrf, error_rate, load_checkpoint, save_checkpoint
from lmstack.multimodal.images import make_image_dataset
from lmstack.multimodal.text import build_tokenizer, world_texts
from lmstack.multimodal.vit import EncoderConfig


def test_clip_loss_equals_transformers_clipmodel():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=12),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=8)
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.05))  # away from the init so the scale really matters
        out = model(input_ids=torch.randint(0, 50, (5, 7)), pixel_values=torch.randn(5, 3, 16, 16),
                    return_loss=True)
        ours = clip_loss(out.image_embeds, out.text_embeds, model.logit_scale)
    torch.testing.assert_close(ours, out.loss, rtol=1e-5, atol=1e-6)
    # same temperature initialisation as HF / the paper: exp(scale) = 1 / 0.07
    ours_model = CLIP(CLIPConfig())
    hf_default = transformers.CLIPModel(cfg).logit_scale
    # (HF writes ln(1/0.07) rounded to 2.6592)
    torch.testing.assert_close(ours_model.logit_scale.detach(), hf_default.detach(), atol=1e-4, rtol=0)
    assert math.isclose(1 / ours_model.logit_scale.exp().item(), 0.07, rel_tol=1e-6)


def test_clip_loss_is_symmetric_and_rewards_matching_pairs():
    torch.manual_seed(0)
    img = torch.randn(6, 8)
    scale = torch.tensor(math.log(1 / 0.07))
    assert clip_loss(img, img, scale) < clip_loss(img, torch.randn(6, 8), scale)
    txt = torch.randn(6, 8)
    torch.testing.assert_close(clip_loss(img, txt, scale), clip_loss(txt, img, scale))
    with pytest.raises(ValueError, match="same"):
        clip_loss(img, txt[:5], scale)


def test_retrieval_recall_with_shared_captions():
    # 3 images, 2 captions; images 0 and 1 share caption 0
    img = torch.tensor([[1.0, 0.0], [0.3, 0.9], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    r = retrieval_recall(img, [0, 0, 1], txt, ks=(1, 2))
    assert r["i2t_R@1"] == pytest.approx(2 / 3)  # image 1 looks like caption 1
    assert r["i2t_R@2"] == 1.0
    assert r["t2i_R@1"] == 1.0  # caption 0 -> image 0, caption 1 -> image 2: both carry their caption
    r = retrieval_recall(img, [1, 0, 0], txt, ks=(1, 3))
    assert r["t2i_R@1"] == 0.0 and r["t2i_R@3"] == 1.0 and r["i2t_R@1"] == 0.0


def test_tiny_clip_training_beats_chance(tmp_path):
    torch.manual_seed(0)
    train, test = make_image_dataset(400, seed=0, kinds=("shape",)), make_image_dataset(80, seed=1, kinds=("shape",))
    tok = build_tokenizer(world_texts(train), vocab_size=400)
    enc = dict(d_model=32, n_layers=1, n_heads=4)
    model = CLIP(CLIPConfig(vision=EncoderConfig(**enc, patch_size=8),
                            text=EncoderConfig(**enc, vocab_size=tok.vocab_size), embed_dim=32))
    before = evaluate_clip(model, tok, test)
    log = train_clip(model, tok, train, steps=60, batch_size=64, progress=False)
    after = evaluate_clip(model, tok, test)
    assert log["losses"][-1] < log["losses"][0] - 0.5
    assert after["zeroshot_colour+shape_en"] > max(3 * after["zeroshot_colour+shape_chance"],
                                                   before["zeroshot_colour+shape_en"])
    assert after["i2t_R@5_en"] > before["i2t_R@5_en"]
    # checkpoint round trip (safetensors + JSON)
    save_checkpoint(model, tmp_path / "clip", {"config": model.config.to_dict()})
    meta = load_checkpoint(fresh := CLIP(CLIPConfig.from_dict(model.config.to_dict())), tmp_path / "clip")
    assert meta["config"]["embed_dim"] == 32
    assert evaluate_clip(fresh, tok, test) == after


def test_chrf_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    metric = sacrebleu.metrics.CHRF()
    pairs = [("a red circle at the top", "a red circle at the top left"), ("the cat sat", "a cat sits"),
             ("abc", "abd"), ("红色的圆形", "蓝色的圆形"), ("ab", "xyz"), ("", "abc"), ("same", "same")]
    for hyp, ref in pairs:
        assert chrf(hyp, ref) == pytest.approx(metric.sentence_score(hyp, [ref]).score, abs=1e-9)


def test_wer_cer_match_jiwer():
    jiwer = pytest.importorskip("jiwer")
    refs = ["a red circle at the top left", "three blue squares", "the digit seven"]
    hyps = ["a red circle at top left", "three blue square", "a digit seven in green"]
    assert error_rate(refs, hyps, "word") == pytest.approx(jiwer.wer(refs, hyps))
    assert error_rate(refs, hyps, "char") == pytest.approx(jiwer.cer(refs, hyps))
    with pytest.raises(ValueError, match="hypotheses"):
        error_rate(refs, hyps[:2], "word")
