"""The generic training loop shared by pretraining (and usable by any next-token objective).

One optimizer update = ``grad_accum`` micro-batches per rank. Per update the trainer:
sets the LR (schedule x anomaly back-off), runs forward/backward under optional bf16
autocast, clips the global gradient norm, asks the anomaly guard whether to apply or skip the
update, logs to metrics.jsonl, evaluates and checkpoints every N updates. Everything that
decides the next weights (weights, optimizer state, step, data position, RNG, guard history)
is in the checkpoint, so a resumed run is bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn

from lmstack.machine import compile_unavailable, persist_compile_cache, probe, resolve_dtype
from lmstack.model.flops import flops_per_token
from lmstack.model.io import read_safetensors
from lmstack.model.transformer import Transformer, document_ids
from lmstack.train import checkpoint as ckpt
from lmstack.train.anomaly import AnomalyConfig, AnomalyGuard
from lmstack.train.distributed import DistInfo, all_reduce_mean, all_reduce_sum, barrier, current, wrap_model
from lmstack.train.loader import LOADER_MODES, LoaderMode, TokenLoader, eval_windows
from lmstack.train.optim import OptimConfig, build_optimizer, set_lr, set_muon_momentum
from lmstack.train.schedule import ScheduleConfig, schedule_multiplier


@dataclass
class TrainConfig:
    steps: int = 600                # optimizer updates
    batch_size: int = 16            # sequences per micro-batch per rank
    grad_accum: int = 1             # micro-batches per update
    seq_len: int = 256
    loader: LoaderMode = "bos"      # bos: windows start at a document's BOS
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_clip: float = 1.0          # 0 = no clipping
    dtype: Literal["auto", "fp32", "bf16", "fp8"] = "auto"  # autocast dtype (on CPU too); auto = the faster here; fp8: lmstack.train.fp8
    fp8_scaling: Literal["tensor", "row"] = "tensor"  # dtype=fp8: one scale per tensor, or per row/column
    compile: bool = False           # torch.compile the model (its cache persists in ~/.cache/lmstack/inductor)
    fused_loss: bool = True         # lm_head + cross-entropy in chunks, never the whole logits (Transformer)
    distributed: Literal["ddp", "fsdp"] = "ddp"  # used when launched by torchrun with >1 process
    tensor_parallel: int = 1        # > 1: DTensor tensor parallelism in groups of this many ranks, FSDP2 across them
    sequence_parallel: bool = False  # with tensor_parallel: norms and residuals split along the sequence
    eval_every: int = 100           # 0 = only at the end
    eval_batches: int = 8
    ckpt_every: int = 100           # 0 = only at the end
    keep_checkpoints: int = 2
    log_every: int = 10
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    peak_flops: float = 0.0         # FLOP/s for MFU; 0 = the machine probe's GEMM rate (lmstack.machine)
    # less work per step / speedrun schedules (all off by default)
    doc_mask: bool = False          # packed rows: attend within a document only, positions restart at each BOS
    seq_len_warmup_steps: int = 0   # grow the trained context from seq_len_start to seq_len over these updates
    seq_len_start: int = 32
    batch_size_warmup_steps: int = 0  # grow the rows per micro-batch from batch_size_start to batch_size
    batch_size_start: int = 4

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train config {name}={getattr(self, name)} must be positive")
        if self.loader not in LOADER_MODES:
            raise ValueError(f"train config loader={self.loader!r}: choose one of {', '.join(LOADER_MODES)}")
        if self.dtype not in ("auto", "fp32", "bf16", "fp8"):
            raise ValueError(f"train config dtype={self.dtype!r}: choose auto, fp32, bf16 or fp8")
        if self.tensor_parallel < 1:
            raise ValueError(f"train config tensor_parallel={self.tensor_parallel} must be >= 1")
        if self.fp8_scaling not in ("tensor", "row"):
            raise ValueError(f"train config fp8_scaling={self.fp8_scaling!r}: choose tensor or row")
        for steps, start, end in (("seq_len_warmup_steps", "seq_len_start", "seq_len"),
                                  ("batch_size_warmup_steps", "batch_size_start", "batch_size")):
            if getattr(self, steps) < 0:
                raise ValueError(f"train config {steps}={getattr(self, steps)} must be >= 0")
            if getattr(self, steps) and not 1 <= getattr(self, start) <= getattr(self, end):
                raise ValueError(f"train config {start}={getattr(self, start)} must be in 1..{end}={getattr(self, end)}")

    def warmed_up(self, step: int) -> tuple[int, int]:
        """(rows, context) trained at update ``step`` under the batch-size and sequence-length warm-ups:
        linear from the start value to the full one, context rounded down to a multiple of
        seq_len_start so that only a few shapes occur."""
        rows = _ramp(step, self.batch_size_warmup_steps, self.batch_size_start, self.batch_size, 1)
        context = _ramp(step, self.seq_len_warmup_steps, self.seq_len_start, self.seq_len, self.seq_len_start)
        return rows, context


def _ramp(step: int, steps: int, start: int, end: int, quantum: int) -> int:
    if steps <= 0 or step >= steps:
        return end
    value = start + (end - start) * step / steps
    return max(start, min(end, int(value // quantum) * quantum))


@dataclass
class TrainSummary:
    step: int
    final_loss: float
    val_loss: float | None
    val_bpb: float | None
    tokens: int
    seconds: float
    skipped_steps: int
    rollbacks: int
    tok_per_s: float
    mfu: float
    events: list[dict]
    resumed_from: int | None
    dtype: str = "fp32"             # what the run computed in ("auto" resolved)
    peak_flops: float = 0.0         # the MFU denominator
    compiled: bool = False          # whether steps ran through torch.compile
    compile_note: str = ""          # why not, when compile was asked for


class Trainer:
    def __init__(self, model: nn.Module, cfg: TrainConfig, *, train_tokens: np.ndarray,
                 val_tokens: np.ndarray | None = None, bos_id: int | None = None,
                 ckpt_dir: str | Path | None = None, seed: int = 0, device: str = "cpu",
                 metrics_sink: Callable[[dict], None] | None = None, bytes_per_token: float | None = None,
                 log: Callable[[str], None] = print, progress: bool = True, stage: str = "pretrain"):
        cfg.validate()
        self.cfg, self.device, self.seed, self.stage = cfg, device, seed, stage
        self.dist: DistInfo = current()
        if cfg.dtype == "fp8":
            # FP8 GEMMs in the block linears (emulated off H100-class GPUs: lmstack.train.fp8)
            from lmstack.train.fp8 import convert_to_fp8
            convert_to_fp8(model, cfg.fp8_scaling)
        self.raw_model = model.to(device)
        # ranks of one tensor-parallel group read the same batches: the loader shards by data rank
        self.data_rank, self.data_world = self.dist.rank, self.dist.world_size
        if cfg.tensor_parallel > 1:
            from lmstack.train.tensor_parallel import parallelize_for_training
            self.model, self.data_rank, self.data_world = parallelize_for_training(
                self.raw_model, cfg.tensor_parallel, cfg.sequence_parallel, cfg.distributed,
                self.dist.world_size, device)
        else:
            self.model = wrap_model(self.raw_model, cfg.distributed, self.dist, device)
        self.fsdp = self.dist.enabled and cfg.distributed == "fsdp"
        self.forward_model = self.model
        self.compile_note = ""
        if cfg.compile:
            self.compile_note = compile_unavailable(device)
            if not self.compile_note:
                persist_compile_cache()
                self.forward_model = torch.compile(self.model)
        self._compiled_once = False
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.loader = TokenLoader(train_tokens, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=seed,
                                  mode=cfg.loader, bos_id=bos_id, rank=self.data_rank,
                                  world_size=self.data_world)
        self.val_tokens = val_tokens
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.metrics_sink = metrics_sink if self.dist.is_main else None
        self.bytes_per_token = bytes_per_token
        self.log = log if self.dist.is_main else (lambda msg: None)
        if self.compile_note:
            self.log(f"compile=true skipped: {self.compile_note}")
        self.progress = progress and self.dist.is_main
        self.guard = AnomalyGuard(cfg.anomaly)
        self.step = 0
        self.lr_scale = 1.0
        self.skipped = 0
        self.rollbacks = 0
        self.events: list[dict] = []
        self.tokens_per_update = cfg.batch_size * cfg.seq_len * cfg.grad_accum * self.data_world
        self.flops_per_token = flops_per_token(self.raw_model, cfg.seq_len)
        # "auto" becomes the faster of fp32 and bf16 on this machine, measured (lmstack.machine).
        self.dtype, self.machine = resolve_dtype(cfg.dtype, device)
        # The fused linear + cross-entropy (lmstack.model.fused_ce) is a Transformer option; other
        # models (and tests' toy models) take only (inputs, targets).
        self._loss_kwargs = {"fused_loss": True} if cfg.fused_loss and isinstance(self.raw_model, Transformer) else {}
        self.bos_id = bos_id
        if cfg.doc_mask and (bos_id is None or not isinstance(self.raw_model, Transformer)):
            raise ValueError("train config doc_mask=true needs the tokenizer's bos_id and an lmstack Transformer "
                             f"(got bos_id={bos_id}, model {type(self.raw_model).__name__})")
        self.last_update_tokens = self.tokens_per_update
        self._peak = cfg.peak_flops
        self.last_eval: dict | None = None
        self.resumed_from: int | None = None

    # ------------------------------------------------------------------ helpers
    def _forward(self, x, **kwargs):
        """The (compiled) model's forward. Should compilation fail on the first call (a broken toolchain),
        training goes on eagerly and says so, instead of dying minutes into a run."""
        if self.forward_model is self.model or self._compiled_once:
            return self.forward_model(x, **kwargs)
        try:
            out = self.forward_model(x, **kwargs)
        except Exception as e:  # noqa: BLE001 -- any compiler failure; the eager model is the fallback
            self.compile_note = f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            self.log(f"{self.compile_note}; training continues without compile")
            self.forward_model = self.model
            return self.model(x, **kwargs)
        self._compiled_once = True
        return out

    def autocast(self):
        # with fp8 the linears cast their own operands; on CUDA the rest runs under bf16 autocast
        if self.dtype == "bf16" or (self.dtype == "fp8" and self.device.startswith("cuda")):
            return torch.autocast(device_type="cuda" if self.device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
        return nullcontext()

    def _emit(self, record: dict) -> None:
        if self.metrics_sink is not None:
            self.metrics_sink({"stage": self.stage, **record})

    def _event(self, kind: str, **info) -> None:
        ev = {"event": kind, "step": self.step, **info}
        self.events.append(ev)
        self._emit(ev)
        self.log(f"step {self.step}: {kind} {info}")

    def peak_flops(self) -> float:
        if not self._peak:
            self._peak = (self.machine or probe(self.device)).peak_flops(self.dtype)
        return self._peak

    def trainer_state(self) -> dict:
        return {"step": self.step, "loader": self.loader.state_dict(), "lr_scale": self.lr_scale,
                "guard": self.guard.state_dict(), "skipped": self.skipped, "rollbacks": self.rollbacks,
                "seed": self.seed, "total_steps": self.cfg.steps, "events": self.events,
                "schedule": {"kind": self.cfg.schedule.kind, "multiplier": self._lr_multiplier()},
                "world_size": self.dist.world_size}

    def _lr_multiplier(self) -> float:
        return schedule_multiplier(self.step, self.cfg.steps, self.cfg.schedule) * self.lr_scale

    # -------------------------------------------------------------- checkpoints
    def save(self) -> Path | None:
        if self.ckpt_dir is None:
            return None
        model_sd = optim_sd = None
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=opts)
        path = None
        if self.dist.is_main:
            path = ckpt.save_checkpoint(self.ckpt_dir, step=self.step, model=self.raw_model,
                                        optimizer=None if self.fsdp else self.optimizer,
                                        optimizer_state_dict=optim_sd, model_state_dict=model_sd,
                                        trainer_state=self.trainer_state(), keep=self.cfg.keep_checkpoints)
        barrier(self.dist)
        return path

    def load(self, path: Path, *, restore_rng: bool = True) -> dict:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
            state = ckpt.load_checkpoint(path, model=None, optimizer=None, restore_rng=restore_rng)
            model_sd = read_safetensors(path / "model.safetensors")
            optim_sd = ckpt.optimizer_state_from_flat(read_safetensors(path / "optimizer.safetensors"), state["optimizer"])
            set_state_dict(self.model, self.optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                           options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            state = ckpt.load_checkpoint(path, model=self.raw_model, optimizer=self.optimizer, restore_rng=restore_rng)
        return state

    def _load_newest_good(self, *, restore_rng: bool = True) -> tuple[Path, dict] | None:
        """Load the newest checkpoint that reads back whole; a damaged one (a truncated file after
        a crash or a full disk) is reported and the next older one is tried."""
        candidates = ckpt.list_checkpoints(self.ckpt_dir) if self.ckpt_dir is not None else []
        for path in reversed(candidates):
            try:
                return path, self.load(path, restore_rng=restore_rng)
            except (ValueError, KeyError, OSError) as e:
                self.log(f"checkpoint {path} is damaged ({e}); falling back to an older one")
        if candidates:
            self.log(f"no readable checkpoint in {self.ckpt_dir}: starting from scratch")
        return None

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint in ``ckpt_dir``, if any and if it is ahead of the
        steps this trainer has already taken (``train(stop_at=...)`` then ``train()`` just goes on)."""
        newest = ckpt.latest_checkpoint(self.ckpt_dir) if self.ckpt_dir is not None else None
        if self.step > 0 and (newest is None or ckpt.checkpoint_step(newest) <= self.step):
            return False
        found = self._load_newest_good()
        if found is None:
            return False
        path, state = found
        if state.get("total_steps") not in (None, self.cfg.steps):
            self.log(f"note: checkpoint was made for {state['total_steps']} steps, now training for {self.cfg.steps}")
        self.step = int(state["step"])
        self.loader.load_state_dict(state["loader"])
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.guard.load_state_dict(state.get("guard", {}))
        self.skipped = int(state.get("skipped", 0))
        self.rollbacks = int(state.get("rollbacks", 0))
        self.events = list(state.get("events", []))
        self.resumed_from = self.step
        self.log(f"resumed from {path} (step {self.step})")
        return True

    def rollback(self) -> None:
        """Reload the last good checkpoint, lower the LR, and keep consuming *new* data."""
        self.rollbacks += 1
        if self.rollbacks > self.cfg.anomaly.max_rollbacks:
            raise RuntimeError(f"training diverged: {self.rollbacks - 1} rollbacks did not help "
                               f"(step {self.step}); lower optim.lr or raise anomaly.spike_std")
        data_step = self.loader.data_step
        found = self._load_newest_good(restore_rng=False)
        from_step = self.step
        path = found[0] if found else None
        if found is not None:
            state = found[1]
            self.step = int(state["step"])
            self.guard.load_state_dict(state.get("guard", {}))
        self.guard.consecutive = 0
        self.loader.data_step = data_step  # do not replay the batches that caused the spike
        self.lr_scale *= self.cfg.anomaly.lr_backoff
        self._event("rollback", from_step=from_step, to_step=self.step, lr_scale=self.lr_scale,
                    checkpoint=str(path) if path else None)

    # ---------------------------------------------------------------- evaluate
    @torch.no_grad()
    def evaluate(self) -> dict:
        if self.val_tokens is None:
            return {}
        self.model.eval()
        loss_sum, count = 0.0, 0.0
        for batch in eval_windows(self.val_tokens, batch_size=self.cfg.batch_size, seq_len=self.cfg.seq_len,
                                  max_batches=self.cfg.eval_batches, rank=self.data_rank,
                                  world_size=self.data_world):
            x = batch.inputs.to(self.device)
            extra = {"doc_ids": document_ids(x, self.bos_id)} if self.cfg.doc_mask else {}  # as in training
            with self.autocast():
                # eager: a compiled eval-mode graph would be a second compilation for a few batches
                out = self.model(x, targets=batch.targets.to(self.device), **extra)
            n = batch.targets.numel()
            loss_sum += out.loss.float().item() * n
            count += n
        loss_sum, count = all_reduce_sum([loss_sum, count], self.dist, self.reduce_device())
        self.model.train()
        val_loss = loss_sum / max(count, 1)
        result = {"val_loss": val_loss}
        if self.bytes_per_token:
            from lmstack.eval.bpb import bits_per_byte
            result["val_bpb"] = bits_per_byte(val_loss, tokens_per_byte=1.0 / self.bytes_per_token)
        self.last_eval = result
        self._emit({"step": self.step, **result})
        return result

    def reduce_device(self) -> str:
        return self.device if self.device.startswith("cuda") else "cpu"

    # ------------------------------------------------------------------- train
    def train_step(self) -> tuple[float, float, str]:
        """One optimizer update; returns (loss, grad_norm, verdict)."""
        cfg = self.cfg
        set_lr(self.optimizer, self._lr_multiplier())
        set_muon_momentum(self.optimizer, self.step, cfg.optim)
        rows, context = cfg.warmed_up(self.step)
        self.last_update_tokens = rows * context * cfg.grad_accum * self.data_world
        loss_total = 0.0
        for micro in range(cfg.grad_accum):
            batch = self.loader.next_batch()  # the loader advances by whole batches; warm-ups use a slice
            x, y = batch.inputs[:rows, :context].to(self.device), batch.targets[:rows, :context].to(self.device)
            kwargs = dict(self._loss_kwargs)
            if cfg.doc_mask:
                kwargs["doc_ids"] = document_ids(x, self.bos_id)
            sync = micro == cfg.grad_accum - 1
            no_sync = getattr(self.model, "no_sync", None)
            ctx = no_sync() if (no_sync is not None and not sync) else nullcontext()
            if self.fsdp:
                self.model.set_requires_gradient_sync(sync)
            with ctx:
                with self.autocast():
                    out = self._forward(x, targets=y, **kwargs)
                    loss = out.loss
                    aux = getattr(out, "aux_loss", None)
                    if aux is not None and torch.is_tensor(aux):
                        loss = loss + aux  # the model already weights its MoE auxiliary losses
                (loss / cfg.grad_accum).backward()
            loss_total += out.loss.detach().float().item()
        loss_value = all_reduce_mean(loss_total / cfg.grad_accum, self.dist, self.reduce_device())
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.tensor_parallel > 1:
            from lmstack.train.tensor_parallel import clip_grad_norm_across_meshes
            grad_norm = clip_grad_norm_across_meshes(params, cfg.grad_clip)
        elif cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        verdict = self.guard.check(loss_value, grad_norm)
        if verdict == "ok":
            self.optimizer.step()
            self.guard.accept(loss_value)
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm, verdict

    def train(self, *, stop_at: int | None = None) -> TrainSummary:
        """Train up to ``cfg.steps`` updates (resuming first). ``stop_at`` stops early after that
        update, as an interruption would (used to test resume)."""
        cfg = self.cfg
        self.resume()
        self.model.train()
        t_start = time.perf_counter()
        start_step = self.step
        tokens_done = 0
        last_loss = float("nan")
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.steps, initial=self.step, desc=self.stage, dynamic_ncols=True, mininterval=1.0)
        tok_per_s = mfu = 0.0
        peak = self.peak_flops() if (self.progress or self.metrics_sink) else 0.0
        t_window, tokens_window = time.perf_counter(), 0
        while self.step < cfg.steps:
            loss, grad_norm, verdict = self.train_step()
            lr = self.optimizer.param_groups[0]["lr"]
            tokens_done += self.last_update_tokens
            tokens_window += self.last_update_tokens
            if verdict != "ok":
                self.skipped += 1
                self._event(f"anomaly_{verdict}", loss=loss, grad_norm=grad_norm)
                if self.guard.reject():
                    self.rollback()
                    if bar is not None:
                        bar.n = self.step
                    continue
            else:
                last_loss = loss
            self.step += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                dt = time.perf_counter() - t_window
                tok_per_s = tokens_window / max(dt, 1e-9)
                mfu = tok_per_s * self.flops_per_token / peak if peak else 0.0
                t_window, tokens_window = time.perf_counter(), 0
                self._emit({"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                            "tok_per_s": tok_per_s, "mfu": mfu, "time": time.perf_counter() - t_start})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_per_s:,.0f}", mfu=f"{100 * mfu:.1f}%", refresh=False)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                ev = self.evaluate()
                if ev:
                    self.log(f"step {self.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in ev.items()))
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.steps and self.guard.consecutive == 0:
                self.save()
            if stop_at is not None and self.step >= stop_at and self.step < cfg.steps:
                if bar is not None:
                    bar.close()
                return self._summary(last_loss, t_start, tokens_done, tok_per_s, mfu)
        if bar is not None:
            bar.close()
        ev = self.evaluate()
        if start_step < cfg.steps or not ckpt.list_checkpoints(self.ckpt_dir or Path("/nonexistent")):
            self.save()
        return self._summary(last_loss, t_start, tokens_done, tok_per_s, mfu, ev)

    def _summary(self, last_loss, t_start, tokens, tok_per_s, mfu, ev=None) -> TrainSummary:
        ev = ev or self.last_eval or {}
        seconds = time.perf_counter() - t_start
        return TrainSummary(step=self.step, final_loss=last_loss, val_loss=ev.get("val_loss"),
                            val_bpb=ev.get("val_bpb"), tokens=tokens, seconds=seconds,
                            skipped_steps=self.skipped, rollbacks=self.rollbacks,
                            tok_per_s=tokens / seconds if seconds > 0 else 0.0, mfu=mfu,
                            events=list(self.events), resumed_from=self.resumed_from,
                            dtype=self.dtype, peak_flops=self._peak,
                            compiled=self.forward_model is not self.model, compile_note=self.compile_note)
