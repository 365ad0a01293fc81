"""Shard loader: windows, BOS packing, rank sharding, determinism; checkpoint (de)serialisation."""

import numpy as np
import pytest
import torch

from lmstack.data.shards import read_tokens, write_tokens
from lmstack.train import checkpoint as ckpt
from lmstack.train.loader import TokenLoader, eval_windows
from test_train_helpers import TinyLM, periodic_tokens


def test_random_windows_are_shifted_slices_of_the_memmap(tmp_path):
    toks = np.arange(1000, dtype=np.uint16) % 500
    write_tokens(tmp_path / "t.bin", toks)
    mm = read_tokens(tmp_path / "t.bin")
    loader = TokenLoader(mm, batch_size=4, seq_len=16, seed=3)
    b = loader.next_batch()
    assert b.inputs.shape == (4, 16) and b.inputs.dtype == torch.int64
    assert torch.equal(b.inputs[:, 1:], b.targets[:, :-1])
    for row, off in zip(b.inputs, loader.global_offsets(0)):
        assert row.tolist() == toks[off:off + 16].tolist()
    assert loader.data_step == 1


def test_bos_mode_starts_every_window_at_a_document():
    toks = periodic_tokens(3000, bos=0)
    bos_positions = np.flatnonzero(toks == 0)
    loader = TokenLoader(toks, batch_size=8, seq_len=32, mode="bos", bos_id=0, seed=1)
    for step in range(5):
        for off in loader.global_offsets(step):
            doc_start = bos_positions[bos_positions <= off].max()
            assert (off - doc_start) % 32 == 0  # a document start, or a whole chunk into a long one
    short = periodic_tokens(3000, bos=0)
    short_loader = TokenLoader(short, batch_size=8, seq_len=64, mode="bos", bos_id=0, seed=1)
    assert (short_loader.next_batch().inputs[:, 0] == 0).all()  # docs shorter than a window: always BOS


def test_bos_starts_cover_long_documents_in_chunks():
    from lmstack.train.loader import bos_aligned_starts
    toks = np.array([0, 5, 5, 0] + [7] * 20 + [0, 1], dtype=np.uint16)  # docs of length 3, 21, 2
    assert bos_aligned_starts(toks, 0, 8).tolist() == [0, 3, 11, 19, 24]
    # Long documents are sampled in proportion to their length, not once per document.
    long_doc = np.array([0] + [1] * 999 + [0, 2, 2, 2] * 50, dtype=np.uint16)
    loader = TokenLoader(long_doc, batch_size=64, seq_len=10, mode="bos", bos_id=0, seed=0)
    first = np.concatenate([loader.global_offsets(i) for i in range(20)])
    assert 0.6 < (first < 1000).mean() < 0.73  # 100 of the 150 starts lie in the long document


def test_rank_shards_partition_the_global_batch():
    toks = periodic_tokens(5000)
    full = TokenLoader(toks, batch_size=6, seq_len=8, seed=7).batch_at(4).inputs
    parts = [TokenLoader(toks, batch_size=3, seq_len=8, seed=7, rank=r, world_size=2).batch_at(4).inputs for r in range(2)]
    assert torch.equal(torch.cat(parts), full)


def test_batches_depend_only_on_seed_and_position():
    toks = periodic_tokens(5000)
    a = TokenLoader(toks, batch_size=4, seq_len=8, seed=1)
    for _ in range(3):
        a.next_batch()
    b = TokenLoader(toks, batch_size=4, seq_len=8, seed=1)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next_batch().inputs, b.next_batch().inputs)
    c = TokenLoader(toks, batch_size=4, seq_len=8, seed=2)
    assert not torch.equal(c.batch_at(0).inputs, TokenLoader(toks, batch_size=4, seq_len=8, seed=1).batch_at(0).inputs)


def test_loader_errors_are_actionable():
    with pytest.raises(ValueError, match="fewer than seq_len"):
        TokenLoader(np.zeros(10, np.uint16), batch_size=1, seq_len=16)
    with pytest.raises(ValueError, match="no BOS token"):
        TokenLoader(np.ones(100, np.uint16), batch_size=1, seq_len=16, mode="bos", bos_id=0)
    with pytest.raises(ValueError, match="unknown loader mode"):
        TokenLoader(np.ones(100, np.uint16), batch_size=1, seq_len=16, mode="shuffle")


def test_eval_windows_cover_consecutive_chunks_and_split_across_ranks():
    toks = np.arange(200, dtype=np.uint16)
    single = list(eval_windows(toks, batch_size=4, seq_len=10, max_batches=2))
    assert [r[0].item() for b in single for r in b.inputs] == [0, 10, 20, 30, 40, 50, 60, 70]
    r0 = list(eval_windows(toks, batch_size=2, seq_len=10, max_batches=2, rank=0, world_size=2))
    r1 = list(eval_windows(toks, batch_size=2, seq_len=10, max_batches=2, rank=1, world_size=2))
    got = sorted(r[0].item() for bs in (r0, r1) for b in bs for r in b.inputs)
    assert got == [0, 10, 20, 30, 40, 50, 60, 70]


def test_checkpoint_roundtrip_restores_model_optimizer_and_rng(tmp_path):
    from lmstack.train.optim import OptimConfig, build_optimizer
    torch.manual_seed(0)
    model = TinyLM()
    opt = build_optimizer(model, OptimConfig(name="muon"))
    x = torch.randint(0, 32, (2, 8))
    model(x, targets=x).loss.backward()
    opt.step()
    path = ckpt.save_checkpoint(tmp_path, step=5, model=model, optimizer=opt, trainer_state={"hello": 1})
    expected_rand = torch.rand(3)
    model2 = TinyLM()
    opt2 = build_optimizer(model2, OptimConfig(name="muon"))
    torch.manual_seed(123)
    state = ckpt.load_checkpoint(path, model=model2, optimizer=opt2)
    assert state["hello"] == 1 and state["step"] == 5
    assert torch.equal(torch.rand(3), expected_rand)  # RNG restored to the save point
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    sa, sb = opt.state_dict(), opt2.state_dict()
    for k in sa["state"]:
        for name, v in sa["state"][k].items():
            assert torch.equal(v, sb["state"][k][name])
    assert not any(p.name.endswith(".pkl") or p.suffix in (".pt", ".bin") for p in path.iterdir())


def test_keep_last_checkpoints_and_ignore_half_written(tmp_path):
    model = TinyLM()
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step=step, model=model, optimizer=None, trainer_state={}, keep=2)
    (tmp_path / ".tmp-step_000004").mkdir()  # a crash mid-write
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000002", "step_000003"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000003"
