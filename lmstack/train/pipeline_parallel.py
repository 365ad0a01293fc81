"""Pipeline parallelism for lmstack's Transformer with ``torch.distributed.pipelining``.

The layers are cut into ``num_stages`` contiguous stages, one per rank: stage 0 also owns the
embeddings, the last stage the final norm and output head (and computes the loss). A batch is
split into ``m`` micro-batches that flow through the stages under a schedule:

- GPipe (Huang et al. 2019): all forwards, then all backwards.
- 1F1B (Narayanan et al. 2019, PipeDream-Flush): after a warm-up, each stage alternates one
  forward and one backward, so at most ``p`` micro-batches keep activations alive instead of ``m``.

Both leave every stage idle for ``p - 1`` of the ``m + p - 1`` slots of a step: the bubble
fraction is (p - 1) / (m + p - 1) (Huang et al. 2019), so more micro-batches shrink it.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

SCHEDULES = ("gpipe", "1f1b")


class TransformerStage(nn.Module):
    """Layers ``[start, end)`` of an lmstack ``Transformer`` as one pipeline stage. Input: token ids
    on the first stage, hidden states after that; output: logits on the last stage, hidden
    states before that. Only this stage's modules are held (the rest of the model can be freed)."""

    def __init__(self, model: nn.Module, start: int, end: int):
        super().__init__()
        cfg = model.config
        if not 0 <= start < end <= cfg.n_layers:
            raise ValueError(f"pipeline stage layers [{start}, {end}) outside the model's {cfg.n_layers} layers")
        if cfg.n_experts:
            raise NotImplementedError("pipeline stages for MoE models are not built (the auxiliary loss "
                                      "would have to travel with the activations)")
        if any(cfg.layer_attention(i) != "full" for i in range(cfg.n_layers)) or model.alibi_slopes is not None:
            raise NotImplementedError("pipeline stages support plain causal attention only "
                                      "(no sliding windows, no ALiBi)")
        self.config = cfg
        self.is_first, self.is_last = start == 0, end == cfg.n_layers
        self.embed = model.embed if self.is_first else None
        self.pos_embed = model.pos_embed if self.is_first else None
        self.sinusoidal = model.sinusoidal if self.is_first else None
        self.rotary = model.rotary
        self.layers = nn.ModuleList(model.layers[start:end])
        self.norm = model.norm if self.is_last else None
        self.lm_head = model.lm_head if self.is_last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_first:
            t = x.shape[1]
            positions = torch.arange(t, device=x.device)[None]
            h = self.embed(x)
            if self.pos_embed is not None:
                h = h + self.pos_embed(positions)
            elif self.sinusoidal is not None:
                h = h + self.sinusoidal(positions).to(h.dtype)
        else:
            h = x
        rope = self.rotary.tables(h.shape[1], None, h.dtype) if self.rotary is not None else None
        for block in self.layers:
            h, _ = block(h, rope, None, True, None)    # no mask + is_causal: SDPA's causal kernel
        if not self.is_last:
            return h
        logits = self.lm_head(self.norm(h))
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap > 0 else logits


def stage_bounds(n_layers: int, num_stages: int) -> list[tuple[int, int]]:
    """Contiguous layer ranges, as even as possible (the first stages take the remainder)."""
    if not 1 <= num_stages <= n_layers:
        raise ValueError(f"pipeline stages={num_stages}: need between 1 and n_layers={n_layers}")
    base, extra = divmod(n_layers, num_stages)
    bounds, start = [], 0
    for s in range(num_stages):
        size = base + (1 if s < extra else 0)
        bounds.append((start, start + size))
        start += size
    return bounds


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of one micro-batch (the model's loss, -100 ignored)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


class PipelineRunner:
    """One rank's part of a pipeline-parallel model: its ``TransformerStage``, the schedule that
    drives it, and the gradient sync of tied embeddings.

    With ``tie_embeddings`` the input embedding (first stage) and the output head (last stage)
    are one matrix held twice; their gradients are summed across the two stages after each
    backward (as Megatron-LM does), so both copies take identical optimizer steps.
    """

    def __init__(self, model: nn.Module, rank: int, num_stages: int, n_microbatches: int,
                 schedule: str = "1f1b", device: str | torch.device = "cpu"):
        import torch.distributed as dist
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        if schedule not in SCHEDULES:
            raise ValueError(f"pipeline schedule={schedule!r}: choose one of {', '.join(SCHEDULES)}")
        self.rank, self.num_stages = rank, num_stages
        start, end = stage_bounds(model.config.n_layers, num_stages)[rank]
        self.module = TransformerStage(model, start, end).to(device)
        stage = PipelineStage(self.module, rank, num_stages, torch.device(device))
        cls = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
        # the micro-batch losses are means; scale_grads averages their gradients (= full-batch mean)
        self.schedule = cls(stage, n_microbatches, loss_fn=lm_loss, scale_grads=True)
        self.tied = bool(model.config.tie_embeddings) and num_stages > 1
        # new_group is collective: every rank creates it, only the first and last use it
        self.tied_group = dist.new_group([0, num_stages - 1]) if self.tied else None

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.num_stages - 1

    def parameters(self):
        return self.module.parameters()

    def step(self, input_ids: torch.Tensor | None, targets: torch.Tensor | None) -> float | None:
        """Forward and backward of one batch (gradients accumulate in this stage's parameters).
        Returns the batch's mean loss on the last stage, None elsewhere."""
        import torch.distributed as dist

        losses: list[torch.Tensor] = []
        if self.is_first and self.is_last:
            self.schedule.step(input_ids, target=targets, losses=losses)
        elif self.is_first:
            self.schedule.step(input_ids)
        elif self.is_last:
            self.schedule.step(target=targets, losses=losses)
        else:
            self.schedule.step()
        if self.tied and (self.is_first or self.is_last):
            weight = self.module.embed.weight if self.is_first else self.module.lm_head.weight
            dist.all_reduce(weight.grad, group=self.tied_group)
        return torch.stack(losses).mean().item() if losses else None


def bubble_formula(num_stages: int, n_microbatches: int) -> float:
    return (num_stages - 1) / (n_microbatches + num_stages - 1)


class StageTimer:
    """Measures how long one stage computes (forward + backward) in a step, to compare with the
    step's wall time: bubble = 1 - busy / wall. ``delay`` adds a fixed sleep per forward and twice
    that per backward so the measurement is dominated by a known, contention-free cost."""

    def __init__(self, stage_module: nn.Module, delay: float = 0.0):
        self.busy, self.delay = 0.0, delay
        self._t0 = 0.0
        stage_module.register_forward_pre_hook(self._start)
        stage_module.register_forward_hook(self._stop_forward)
        stage_module.register_full_backward_pre_hook(self._start_backward)
        stage_module.register_full_backward_hook(self._stop_backward)

    def _start(self, *_):
        self._t0 = time.perf_counter()

    def _stop_forward(self, *_):
        if self.delay:
            time.sleep(self.delay)
        self.busy += time.perf_counter() - self._t0

    def _start_backward(self, *_):
        self._t0 = time.perf_counter()

    def _stop_backward(self, *_):
        if self.delay:
            time.sleep(2 * self.delay)
        self.busy += time.perf_counter() - self._t0
