"""lmstack.multimodal: synthetic images, the ViT, the text encoder and the image chat template."""

import numpy as np
import pytest
import torch

from lmstack.model import ModelConfig, Transformer
from lmstack.multimodal.images import (COLOURS, KINDS, images_to_tensor, load_image, make_image_dataset,
                                       save_image, shape_mask)
from lmstack.multimodal.text import IMAGE, build_tokenizer, encode_image_chat, pad_texts, world_texts
from lmstack.multimodal.vit import EncoderConfig, PatchEmbedding, TextEncoder, VisionTransformer


def test_dataset_is_deterministic_and_bilingual():
    a, b = make_image_dataset(12, seed=3), make_image_dataset(12, seed=3)
    c = make_image_dataset(12, seed=4)
    assert all(np.array_equal(x.image, y.image) and x.captions == y.captions for x, y in zip(a, b))
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a, c))
    assert [e.kind for e in a[:4]] == list(KINDS)
    for e in a:
        assert e.image.shape == (32, 32, 3) and e.image.dtype == np.uint8
        assert set(e.captions) == {"en", "zh"} and set(e.short_captions) == {"en", "zh"}
        assert any("\u4e00" <= ch <= "\u9fff" for ch in e.captions["zh"])
        assert {q["lang"] for q in e.questions} == {"en", "zh"}


def test_pictures_show_what_the_captions_say():
    for e in make_image_dataset(40, seed=0):
        img = e.image.astype(int)
        if e.kind == "shape":
            rgb = np.array(COLOURS[e.labels["colour"]][0])
            ink = np.abs(img - rgb).sum(-1) < 60
            ys, xs = np.nonzero(ink)
            assert ink.sum() > 10
            cx, cy = xs.mean() / 32, ys.mean() / 32
            pos = e.labels["position"]
            if "left" in pos:
                assert cx < 0.5
            if "right" in pos:
                assert cx > 0.5
            if "top" in pos:
                assert cy < 0.5
            if "bottom" in pos:
                assert cy > 0.5
            assert e.labels["colour"] in e.captions["en"] and e.labels["shape"] in e.captions["en"]
        if e.kind == "count":
            ndimage = pytest.importorskip("scipy.ndimage")
            rgb = np.array(COLOURS[e.labels["colour"]][0])
            _, n = ndimage.label(np.abs(img - rgb).sum(-1) < 60)
            assert n == e.labels["count"]


def test_shape_masks_differ_and_fit():
    masks = {k: shape_mask(k, 32, 16, 16, 6) for k in ("circle", "square", "triangle", "cross")}
    areas = {k: int(m.sum()) for k, m in masks.items()}
    assert len(set(areas.values())) == 4 and all(a > 20 for a in areas.values())
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("hexagon", 32, 16, 16, 6)
    with pytest.raises(ValueError, match="unknown image kind"):
        make_image_dataset(2, kinds=("photo",))


def test_image_files_round_trip(tmp_path):
    e = make_image_dataset(1, seed=1)[0]
    path = save_image(e.image, tmp_path / "x.png")
    assert np.array_equal(load_image(path, 32), e.image)
    assert load_image(path, 16).shape == (16, 16, 3)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png", 32)


def test_patch_embedding_equals_reshape_plus_linear():
    torch.manual_seed(0)
    c, p, d = 3, 4, 10
    pe = PatchEmbedding(c, p, d)
    x = torch.randn(2, c, 12, 8)
    # explicit: cut into P x P patches in row-major order, flatten each as (c, i, j), then x W^T + b
    b, _, h, w = x.shape
    patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)
    expected = patches @ pe.proj.weight.reshape(d, -1).T + pe.proj.bias
    torch.testing.assert_close(pe(x), expected, rtol=1e-5, atol=1e-5)


def test_vit_shapes_class_token_and_no_causal_mask():
    torch.manual_seed(0)
    cfg = EncoderConfig(d_model=32, n_layers=2, n_heads=4, image_size=16, patch_size=4)
    vit = VisionTransformer(cfg).eval()
    x = torch.randn(2, 3, 16, 16)
    h = vit(x)
    assert h.shape == (2, 1 + 16, 32)
    # bidirectional: changing the LAST patch changes the class token (position 0); a causal model would not
    y = x.clone()
    y[:, :, 12:, 12:] += 1.0
    assert not torch.allclose(vit(y)[:, 0], h[:, 0])
    with pytest.raises(ValueError, match="16x16"):
        vit(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of"):
        EncoderConfig(image_size=30, patch_size=8)


def test_text_encoder_ignores_padding():
    torch.manual_seed(0)
    enc = TextEncoder(EncoderConfig(d_model=32, n_layers=1, n_heads=4, vocab_size=50, max_len=10)).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    valid = torch.tensor([[True, True, True, False, False]])
    other = ids.clone()
    other[0, 3:] = 9  # different junk in the padded slots
    torch.testing.assert_close(enc(ids, valid), enc(other, valid))
    torch.testing.assert_close(enc(ids, valid), enc(ids[:, :3], valid[:, :3]), rtol=1e-5, atol=1e-6)


def test_image_chat_template_matches_lmstack_chat_without_images():
    data = make_image_dataset(40, seed=0)
    tok = build_tokenizer(world_texts(data), vocab_size=400)
    msgs = [{"role": "user", "content": "what colour is the shape?"}, {"role": "assistant", "content": "red"}]
    assert encode_image_chat(tok, msgs, 4) == tok.encode_chat(msgs)
    ids, mask = encode_image_chat(tok, [{"role": "user", "content": IMAGE + "描述这张图片。"}], 5,
                                  add_generation_prompt=True)
    image_id = tok.special_tokens[IMAGE]
    assert ids.count(image_id) == 5 and ids[2:7] == [image_id] * 5 and sum(mask) == 0
    batch, valid = pad_texts(tok, ["a red circle", "红色"], 20)
    assert batch.shape[0] == 2 and valid[0].sum() > valid[1].sum()


def test_transformer_inputs_embeds_hook():
    torch.manual_seed(0)
    cfg = ModelConfig.preset("llama-style", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 64, (2, 7))
    base = model(ids)
    via_embeds = model(ids, inputs_embeds=model.embed(ids))
    torch.testing.assert_close(base.logits, via_embeds.logits)
    swapped = model.embed(ids).clone()
    swapped[:, 2] = torch.randn(32)
    assert not torch.allclose(model(ids, inputs_embeds=swapped).logits[:, 2:], base.logits[:, 2:])
    torch.testing.assert_close(model(ids, inputs_embeds=swapped).logits[:, :2], base.logits[:, :2])
    with pytest.raises(ValueError, match="inputs_embeds shape"):
        model(ids, inputs_embeds=torch.zeros(2, 6, 32))
