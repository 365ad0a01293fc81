"""DDP / FSDP2 parity: 2 gloo processes with half the batch each == 1 process with the full batch,
also after an interrupted-and-resumed FSDP run and with Muon under FSDP."""


import pytest
import torch
import torch.multiprocessing as mp

from lmstack.train.optim import OptimConfig
from lmstack.train.schedule import ScheduleConfig
from lmstack.train.trainer import TrainConfig, Trainer
from test_train_helpers import free_port, periodic_tokens

STEPS, GLOBAL_BATCH = 6, 4


def make_model():
    from lmstack.model import ModelConfig, Transformer
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("llama-style", vocab_size=32, d_model=32, n_layers=2, n_heads=4,
                                          n_kv_heads=2, max_seq_len=16))


def make_cfg(batch_size: int, strategy: str, optim: str = "adamw", ckpt_every: int = 0) -> TrainConfig:
    return TrainConfig(steps=STEPS, batch_size=batch_size, grad_accum=2, seq_len=16, loader="random",
                       optim=OptimConfig(name=optim, lr=3e-3), schedule=ScheduleConfig(warmup_steps=2), log_every=100,
                       eval_every=0, ckpt_every=ckpt_every, eval_batches=2, distributed=strategy, peak_flops=1e9,
                       dtype="fp32")  # exact comparisons: not bf16 even where the machine probe would pick it


def train(batch_size: int, strategy: str, tmp=None, optim: str = "adamw", interrupt_at: int = 0) -> dict:
    def trainer_for():
        return Trainer(make_model(), make_cfg(batch_size, strategy, optim, ckpt_every=interrupt_at),
                       train_tokens=periodic_tokens(4000), val_tokens=periodic_tokens(600, seed=3), seed=11,
                       progress=False, ckpt_dir=tmp)
    if interrupt_at:
        trainer_for().train(stop_at=interrupt_at)  # "killed" after its checkpoint at interrupt_at
    trainer = trainer_for()  # a fresh process: model, optimizer, RNG and data position come from the checkpoint
    summary = trainer.train()
    if interrupt_at:
        assert trainer.resumed_from is not None
    if strategy == "fsdp" and (tmp is None or interrupt_at):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}
    return {"state": sd, "val_loss": summary.val_loss}


def _worker(rank: int, port: int, out_path: str, tmp: str):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {s: train(GLOBAL_BATCH // 2, s) for s in ("ddp", "fsdp")}
        # resume under DDP writes/reads checkpoints from rank 0 only
        results["ckpt"] = train(GLOBAL_BATCH // 2, "ddp", tmp)
        # FSDP2: every rank saves and loads its shards (torch.distributed.checkpoint)
        results["fsdp_resume"] = train(GLOBAL_BATCH // 2, "fsdp", tmp + "_fsdp", interrupt_at=3)
        results["fsdp_muon"] = train(GLOBAL_BATCH // 2, "fsdp", optim="muon")
        if rank == 0:
            torch.save({k: {"state": v["state"], "val_loss": v["val_loss"]} for k, v in results.items()}, out_path)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_single_process(tmp_path):
    out = tmp_path / "ranks.pt"
    # fork: the children inherit the imported modules instead of re-importing torch (seconds each)
    mp.start_processes(_worker, args=(free_port(), str(out), str(tmp_path / "ckpt")), nprocs=2, join=True,
                       start_method="fork")
    got = torch.load(out, weights_only=True)
    torch.set_num_threads(1)
    ref = train(GLOBAL_BATCH, "ddp")  # single process: no process group -> plain model
    ref_muon = train(GLOBAL_BATCH, "ddp", optim="muon")
    for strategy in ("ddp", "fsdp", "ckpt", "fsdp_resume", "fsdp_muon"):
        want = ref_muon if strategy == "fsdp_muon" else ref
        assert got[strategy]["val_loss"] == pytest.approx(want["val_loss"], rel=1e-5), strategy
        for name, expected in want["state"].items():
            torch.testing.assert_close(got[strategy]["state"][name], expected, rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"{strategy} {name}: {m}")
    # the checkpoint written by the 2-process run loads into a fresh single-process model
    from lmstack.model import load_pretrained
    reloaded = load_pretrained(tmp_path / "ckpt" / f"step_{STEPS:06d}")
    for name, t in reloaded.state_dict().items():
        torch.testing.assert_close(t, ref["state"][name], rtol=1e-4, atol=1e-5)
