"""Tensor parallelism (DTensor): 2 gloo processes give the logits and gradients of one process, with
Megatron's collective count (2 all-reduces per layer forward) or its sequence-parallel form."""


import pytest
import torch
import torch.multiprocessing as mp

from lmstack.train.tensor_parallel import tensor_parallel_plan
from test_train_helpers import free_port

N_LAYERS = 2


def make_model():
    from lmstack.model import ModelConfig, Transformer
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("llama-style", vocab_size=64, d_model=32, n_layers=N_LAYERS, n_heads=4,
                                          n_kv_heads=2, max_seq_len=16))


def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 64, (2, 16), generator=g)
    return x, torch.roll(x, -1, dims=1)


def forward_backward(model):
    x, y = batch()
    out = model(x, targets=y)
    out.loss.backward()
    return out


def _worker(rank: int, port: int, out_path: str):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lmstack.train.tensor_parallel import apply_tensor_parallel, count_collectives
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        results = {}
        for mode in ("megatron", "sequence"):
            model = apply_tensor_parallel(make_model(), mesh, sequence_parallel=mode == "sequence")
            x, y = batch()
            out, forward_comms = count_collectives(lambda: model(x, targets=y))
            _, backward_comms = count_collectives(lambda: out.loss.backward())
            grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach()
                     for n, p in model.named_parameters()}
            sharded = [n for n, p in model.named_parameters() if hasattr(p, "placements")]
            results[mode] = {"logits": out.logits.detach(), "loss": out.loss.detach(), "grads": grads,
                             "forward": forward_comms, "backward": backward_comms, "sharded": sharded,
                             "local_q_rows": model.layers[0].attn.q_proj.weight.to_local().shape[0]}
        torch.save(results, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_process_tensor_parallel_matches_one_process(tmp_path):
    out = tmp_path / "tp.pt"
    mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=2, join=True, start_method="fork")
    torch.set_num_threads(1)
    ref_model = make_model()
    ref = forward_backward(ref_model)
    ref_grads = {n: p.grad for n, p in ref_model.named_parameters()}
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}", weights_only=False)
        for mode, r in got.items():
            assert r["local_q_rows"] == 32 // 2                   # each rank holds half the heads
            assert len(r["sharded"]) >= 7 * N_LAYERS
            torch.testing.assert_close(r["logits"], ref.logits.detach(), rtol=0, atol=1e-5)
            assert r["loss"].item() == pytest.approx(ref.loss.item(), abs=1e-6)
            assert set(r["grads"]) == set(ref_grads)
            for name, g in r["grads"].items():
                torch.testing.assert_close(g, ref_grads[name], rtol=0, atol=1e-5, msg=lambda m: f"{mode} {name}: {m}")
        # Megatron: one all-reduce after attention and one after the FFN, forward and backward
        assert got["megatron"]["forward"] == {"all_reduce": 2 * N_LAYERS}
        assert got["megatron"]["backward"] == {"all_reduce": 2 * N_LAYERS}
        # sequence parallel: each all-reduce becomes reduce-scatter + all-gather (+1 gather for the head)
        assert got["sequence"]["forward"] == {"all_gather_into_tensor": 2 * N_LAYERS + 1,
                                              "reduce_scatter_tensor": 2 * N_LAYERS}


def test_plan_rejects_uneven_splits():
    with pytest.raises(ValueError, match="must divide model n_heads=4"):
        tensor_parallel_plan(make_model(), 3)
    plan = tensor_parallel_plan(make_model(), 2)
    assert {"attn.q_proj", "attn.o_proj", "ffn.gate_proj", "ffn.down_proj"} <= set(plan)
    assert "attn_norm" in tensor_parallel_plan(make_model(), 2, sequence_parallel=True)


def _worker_2d(rank: int, port: int, out_path: str):
    import torch.distributed as dist

    from lmstack.train.tensor_parallel import apply_2d_parallel
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=4)
    try:
        model, mesh = apply_2d_parallel(make_model(), dp_size=2, tp_size=2, sequence_parallel=True)
        dp = mesh["dp"].get_local_rank()
        x, y = batch()
        x, y = x[dp:dp + 1], y[dp:dp + 1]                 # each data-parallel group: half the batch
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(2):
            model(x, targets=y).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        state = {n: p.full_tensor().detach() for n, p in model.named_parameters()}
        if rank == 0:
            torch.save(state, out_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # 4 processes: ~15-25 s on 2 contended cores
def test_data_x_tensor_parallel_training_matches_one_process(tmp_path):
    out = tmp_path / "2d.pt"
    mp.start_processes(_worker_2d, args=(free_port(), str(out)), nprocs=4, join=True, start_method="fork")
    torch.set_num_threads(1)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        forward_backward(model)
        opt.step()
        opt.zero_grad(set_to_none=True)
    got = torch.load(out, weights_only=True)
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.detach(), rtol=0, atol=1e-4, msg=lambda m: f"{name}: {m}")


def train_with_trainer(tensor_parallel: int, tmp=None) -> dict:
    from lmstack.train.optim import OptimConfig
    from lmstack.train.schedule import ScheduleConfig
    from lmstack.train.trainer import TrainConfig, Trainer
    from test_train_helpers import periodic_tokens

    cfg = TrainConfig(steps=4, batch_size=2, seq_len=16, loader="random", optim=OptimConfig(lr=3e-3),
                      schedule=ScheduleConfig(warmup_steps=1), grad_clip=0.3, log_every=100, eval_every=0,
                      ckpt_every=0, eval_batches=2, distributed="fsdp", tensor_parallel=tensor_parallel,
                      sequence_parallel=tensor_parallel > 1, peak_flops=1e9, dtype="fp32")
    trainer = Trainer(make_model(), cfg, train_tokens=periodic_tokens(2000, vocab=64),
                      val_tokens=periodic_tokens(400, vocab=64, seed=3), seed=4, progress=False, ckpt_dir=tmp)
    summary = trainer.train()
    if tensor_parallel > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}
    return {"state": state, "val_loss": summary.val_loss, "data_world": trainer.data_world}


def _worker_trainer(rank: int, port: int, out_path: str, ckpt: str):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result = train_with_trainer(2, ckpt)
        if rank == 0:
            torch.save(result, out_path)
    finally:
        dist.destroy_process_group()


def test_trainer_tensor_parallel_config_matches_one_process(tmp_path):
    out = tmp_path / "trainer_tp.pt"
    mp.start_processes(_worker_trainer, args=(free_port(), str(out), str(tmp_path / "ckpt")), nprocs=2, join=True,
                       start_method="fork")
    torch.set_num_threads(1)
    ref = train_with_trainer(1)
    got = torch.load(out, weights_only=False)
    assert got["data_world"] == 1                         # both ranks are one data-parallel replica
    assert got["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5)
    for name, expected in ref["state"].items():
        torch.testing.assert_close(got["state"][name], expected, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    # the checkpoint the TP run wrote is a plain full model
    from lmstack.model import load_pretrained
    reloaded = load_pretrained(tmp_path / "ckpt" / "step_000004")
    for name, t in reloaded.state_dict().items():
        torch.testing.assert_close(t, ref["state"][name], rtol=1e-4, atol=1e-5)
