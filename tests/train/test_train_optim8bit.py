"""8-bit AdamW (block-wise dynamic quantization): code book, round trip, training parity with fp32
AdamW, ~75% smaller state, and torchao's AdamW8bit as the oracle."""

import pytest
import torch

from lmstack.train.optim import OptimConfig, build_optimizer
from lmstack.train.optim8bit import AdamW8bit, BlockQuantized, dynamic_code_book, optimizer_state_bytes
from test_train_helpers import periodic_tokens

STEPS = 30


def make_model():
    from lmstack.model import ModelConfig, Transformer
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("llama-style", vocab_size=64, d_model=64, n_layers=2, n_heads=4,
                                          n_kv_heads=4, max_seq_len=32))


def batches(n: int = STEPS, batch: int = 8, seq: int = 32):
    tokens = torch.from_numpy(periodic_tokens(6000, vocab=64).astype("int64"))
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        starts = torch.randint(0, tokens.numel() - seq - 1, (batch,), generator=g)
        window = torch.stack([tokens[s:s + seq + 1] for s in starts.tolist()])
        yield window[:, :-1], window[:, 1:]


def run(model, optimizer) -> list[float]:
    losses = []
    for x, y in batches():
        loss = model(x, targets=y).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_code_books_are_256_sorted_values_in_range():
    signed, unsigned = dynamic_code_book(True), dynamic_code_book(False)
    for book in (signed, unsigned):
        assert book.numel() == 256 and torch.all(book[1:] > book[:-1])
        assert book.max() == 1.0 and 0.0 in book.tolist()
    assert signed.min() < -0.99 and unsigned.min() == 0.0
    # non-linear: the smallest non-zero magnitude is ~1e-7 of the largest, far below linear int8's 1/127
    assert unsigned[1] < 1e-6 and signed[signed > 0].min() < 1e-6


def test_block_round_trip_keeps_small_values_relative():
    torch.manual_seed(0)
    x = torch.randn(5000) * torch.logspace(-4, 0, 5000)   # magnitudes over four decades
    book = dynamic_code_book(True)
    q = BlockQuantized.zeros(x, 256, book)
    q.quantize_(x, book, (book[1:] + book[:-1]) / 2)
    assert q.codes.dtype == torch.uint8 and q.absmax.numel() == -(-5000 // 256)
    back = q.dequantize(book)
    assert back.shape == x.shape
    blocks_absmax = q.absmax.repeat_interleave(256)[:5000]
    assert torch.all((back - x).abs() <= 0.04 * blocks_absmax)   # worst case: the widest gap of the map
    big = x.abs() > 1e-2 * blocks_absmax                        # 2 decades below the block max
    rel = ((back - x).abs() / x.abs())[big]
    assert rel.median() < 0.02 and rel.max() < 0.2


def test_trainer_optimizer_name_and_errors():
    opt = build_optimizer(make_model(), OptimConfig(name="adamw8bit", lr=1e-3))
    assert isinstance(opt, AdamW8bit)
    with pytest.raises(ValueError, match="block_size=100"):
        AdamW8bit(make_model().parameters(), block_size=100)


def test_tracks_fp32_adamw_with_75_percent_less_state():
    model_ref, model_8 = make_model(), make_model()
    cfg = OptimConfig(lr=3e-3, weight_decay=0.1)
    opt_ref = build_optimizer(model_ref, cfg)
    opt_8 = build_optimizer(model_8, OptimConfig(name="adamw8bit", lr=3e-3, weight_decay=0.1))
    ref, ours = run(model_ref, opt_ref), run(model_8, opt_8)
    assert ref[-1] < 0.6 * ref[0]                                  # the run really learns
    diffs = [abs(a - b) for a, b in zip(ref, ours)]
    assert max(diffs) < 0.05 * ref[0], diffs
    assert abs(ref[-1] - ours[-1]) < 0.03 * ref[-1] + 0.02
    saved = 1 - optimizer_state_bytes(opt_8) / optimizer_state_bytes(opt_ref)
    assert 0.70 < saved < 0.76, saved   # 2 x (1 byte + 4/256 absmax) vs 2 x 4 bytes; vectors stay fp32


def test_matches_torchao_adamw8bit(monkeypatch):
    torchao_optim = pytest.importorskip("torchao.optim", reason="torchao is not installed (pip install -e '.[dev]')")
    model_ao, model_ours = make_model(), make_model()
    # torchao quantizes tensors of >= 4096 elements in 256-element blocks with the same dynamic maps
    ao = torchao_optim.AdamW8bit(model_ao.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    ours = AdamW8bit(model_ours.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), block_size=256)
    # torchao compiles its per-parameter step (minutes of C++ builds on CPU); the eager function is the same math
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
    ao_losses = run(model_ao, ao)
    monkeypatch.undo()
    our_losses = run(model_ours, ours)
    for a, b in zip(ao_losses, our_losses):
        assert a == pytest.approx(b, rel=2e-3, abs=2e-3)
    # same codes and per-block scales; torchao also keeps its 256-entry fp32 map in every quantized state
    n_quantized = sum("exp_avg_codes" in st for st in ours.state.values())
    assert n_quantized >= 10
    assert optimizer_state_bytes(ours) == optimizer_state_bytes(ao) - n_quantized * 2 * 256 * 4
    model_fp32 = make_model()
    run(model_fp32, torch.optim.AdamW(model_fp32.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95)))
    p_ao, p_fp32 = dict(model_ao.named_parameters()), dict(model_fp32.named_parameters())
    to_ao = to_fp32 = 0.0
    for name, p in model_ours.named_parameters():
        # float-order differences flip an occasional 8-bit code: a stray element may be off by ~1 step of lr
        torch.testing.assert_close(p, p_ao[name], rtol=0, atol=2 * 3e-3, msg=lambda m: f"{name}: {m}")
        to_ao += (p - p_ao[name]).abs().sum().item()
        to_fp32 += (p - p_fp32[name]).abs().sum().item()
    # ours sits much closer to torchao's 8-bit weights than to the fp32-state weights: same algorithm
    assert to_ao < 0.25 * to_fp32, (to_ao, to_fp32)


def test_trainer_resume_with_8bit_state_is_bit_identical(tmp_path):
    from lmstack.train.schedule import ScheduleConfig
    from lmstack.train.trainer import TrainConfig, Trainer

    def train(ckpt_dir, stop_at=None):
        cfg = TrainConfig(steps=8, batch_size=4, seq_len=32, loader="random", ckpt_every=4, eval_every=0,
                          log_every=100, dtype="fp32", peak_flops=1e9, schedule=ScheduleConfig(warmup_steps=2),
                          optim=OptimConfig(name="adamw8bit", lr=3e-3))
        trainer = Trainer(make_model(), cfg, train_tokens=periodic_tokens(3000, vocab=64), seed=3,
                          ckpt_dir=ckpt_dir, progress=False)
        trainer.train(stop_at=stop_at)
        return trainer

    full = train(tmp_path / "full")
    assert any(st["exp_avg_codes"].dtype == torch.uint8 for st in full.optimizer.state.values()
               if "exp_avg_codes" in st)
    train(tmp_path / "resumed", stop_at=6)       # interrupted after update 6; the checkpoint is step 4
    resumed = train(tmp_path / "resumed")
    assert resumed.resumed_from == 4
    # codes come back as uint8 (torch's loader casts state to the parameter dtype), so the saving holds
    assert optimizer_state_bytes(resumed.optimizer) == optimizer_state_bytes(full.optimizer)
    for (name, a), b in zip(full.raw_model.state_dict().items(), resumed.raw_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_loads_a_torch_adamw_checkpoint_and_quantizes_it():
    model = make_model()
    fp32 = build_optimizer(model, OptimConfig(lr=1e-3))
    run(model, fp32)
    ours = build_optimizer(model, OptimConfig(name="adamw8bit", lr=1e-3))
    ours.load_state_dict(fp32.state_dict())
    assert optimizer_state_bytes(ours) < 0.3 * optimizer_state_bytes(fp32)
    p = model.layers[0].attn.q_proj.weight
    back = BlockQuantized(ours.state[p]["exp_avg_codes"], ours.state[p]["exp_avg_absmax"], p.shape,
                          256).dequantize(dynamic_code_book(True))
    want = fp32.state[p]["exp_avg"]
    assert (back - want).abs().max() <= 0.04 * want.abs().max()


def _fsdp_worker(rank: int, port: int, tmp: str, out: str):
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from lmstack.train.schedule import ScheduleConfig
    from lmstack.train.trainer import TrainConfig, Trainer
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        def train(ckpt_dir, stop_at=None):
            cfg = TrainConfig(steps=8, batch_size=4, seq_len=32, loader="random", ckpt_every=4, eval_every=0,
                              log_every=100, dtype="fp32", peak_flops=1e9, distributed="fsdp",
                              schedule=ScheduleConfig(warmup_steps=2), optim=OptimConfig(name="adamw8bit", lr=3e-3))
            trainer = Trainer(make_model(), cfg, train_tokens=periodic_tokens(3000, vocab=64), seed=3,
                              ckpt_dir=ckpt_dir, progress=False)
            trainer.train(stop_at=stop_at)
            quantized = sum("exp_avg_codes" in st for st in trainer.optimizer.state.values())
            return get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True)), quantized
        full, quantized = train(f"{tmp}/full")
        train(f"{tmp}/resumed", stop_at=6)
        resumed, quantized_after = train(f"{tmp}/resumed")
        if rank == 0:
            torch.save({"full": full, "resumed": resumed, "quantized": (quantized, quantized_after)}, out)
    finally:
        dist.destroy_process_group()


def test_fsdp_checkpoint_resume_stays_close(tmp_path):
    """Under FSDP2 the moments are checkpointed as dequantized fp32 DTensors (their blocks follow the
    local shard), so a resume is close to, not bit-identical with, the uninterrupted run."""
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "fsdp.pt"
    mp.start_processes(_fsdp_worker, args=(port, str(tmp_path), str(out)), nprocs=2, join=True, start_method="fork")
    got = torch.load(out, weights_only=True)
    assert got["quantized"][0] >= 6 and got["quantized"][1] == got["quantized"][0]   # shards of >= 4096 elements
    for name, want in got["full"].items():
        torch.testing.assert_close(got["resumed"][name], want, rtol=0, atol=1e-3, msg=lambda m: f"{name}: {m}")
