"""Tensor parallelism for lmstack's Transformer with DTensor (``torch.distributed.tensor.parallel``).

Shoeybi et al. 2019 (Megatron-LM): in each block, q/k/v and the FFN's gate/up projections are
split by output columns (each rank owns whole attention heads / a slice of the hidden units) and
o/down by input rows, so a block needs one all-reduce after attention and one after the FFN in
the forward pass (and the mirror-image two in the backward pass).

With ``sequence_parallel=True`` (Korthikanti et al. 2022) the norms and the residual stream are
split along the sequence instead of replicated: each all-reduce becomes a reduce-scatter (after
o/down) plus an all-gather (before q/k/v and gate/up). Same bytes on the wire, but norm
activations and residuals take 1/tp of the memory.

The embeddings, the final norm and the output head stay replicated (every rank computes them
in full), so the loss and the logits come out as plain tensors.
"""

from __future__ import annotations

from torch import nn


def tensor_parallel_plan(model: nn.Module, tp_size: int, sequence_parallel: bool = False) -> dict[str, object]:
    """The ``parallelize_module`` plan for ONE block (keys relative to the block); checks that the
    model splits evenly into ``tp_size`` shards."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, RowwiseParallel,
                                                   SequenceParallel)

    cfg = model.config
    for field in ("n_heads", "n_kv_heads"):
        if getattr(cfg, field) % tp_size:
            raise ValueError(f"tensor parallel size {tp_size} must divide model {field}={getattr(cfg, field)}")
    if cfg.ffn_hidden % tp_size:
        raise ValueError(f"tensor parallel size {tp_size} must divide model ffn_hidden={cfg.ffn_hidden}")
    if getattr(cfg, "n_experts", 0):
        raise NotImplementedError("tensor parallelism for MoE layers is not built (expert parallelism is "
                                  "a different plan); use a dense model or FSDP/DDP")
    if cfg.qk_norm:
        raise NotImplementedError("tensor parallelism with qk_norm is not built")
    # Row-parallel outputs are all-reduced (Megatron) or reduce-scattered along the sequence (SP).
    out_layout = Shard(1) if sequence_parallel else Replicate()
    plan: dict[str, object] = {
        "attn.q_proj": ColwiseParallel(), "attn.k_proj": ColwiseParallel(), "attn.v_proj": ColwiseParallel(),
        "attn.o_proj": RowwiseParallel(output_layouts=out_layout, use_local_output=not sequence_parallel),
        "ffn.up_proj": ColwiseParallel(),
        "ffn.down_proj": RowwiseParallel(output_layouts=out_layout, use_local_output=not sequence_parallel),
    }
    if cfg.ffn_type == "swiglu":
        plan["ffn.gate_proj"] = ColwiseParallel()
    # The attention / FFN input enters as ONE DTensor shared by q, k, v (gate, up): in the backward
    # their input gradients add up as partial sums and are reduced once at this boundary (Megatron's
    # "f" operator) instead of once per projection. With SP the boundary all-gathers the sequence.
    in_layout = Shard(1) if sequence_parallel else Replicate()
    # attention takes (x, rope, mask, is_causal, kv_cache, value_embed): only x is a tensor to lay out
    plan["attn"] = PrepareModuleInput(input_layouts=(in_layout, None, None, None, None, None),
                                      desired_input_layouts=(Replicate(), None, None, None, None, None))
    plan["ffn"] = PrepareModuleInput(input_layouts=(in_layout,), desired_input_layouts=(Replicate(),))
    if sequence_parallel:
        plan["attn_norm"] = SequenceParallel()   # norms work on sequence shards
        plan["ffn_norm"] = SequenceParallel()
    return plan


def apply_tensor_parallel(model: nn.Module, mesh, sequence_parallel: bool = False) -> nn.Module:
    """Shard ``model`` (an lmstack ``Transformer``) in place over the 1-D device ``mesh``.

    Attention modules are told their *local* head counts, since after the column split each rank
    holds ``n_heads / tp`` heads. Works on CPU with gloo and on CUDA with NCCL."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import PrepareModuleInput, parallelize_module

    tp_size = mesh.size()
    plan = tensor_parallel_plan(model, tp_size, sequence_parallel)
    for block in model.layers:
        parallelize_module(block, mesh, plan)
        block.attn.n_heads //= tp_size
        block.attn.n_kv_heads //= tp_size
    if sequence_parallel:
        # the residual stream enters block 0 split along the sequence (a local slice, no traffic)
        # and is all-gathered again before the replicated final norm and output head
        parallelize_module(model.layers[0], mesh, PrepareModuleInput(
            input_layouts=(Replicate(), None, None, None, None, None),
            desired_input_layouts=(Shard(1), None, None, None, None, None)))
        parallelize_module(model.norm, mesh, PrepareModuleInput(
            input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_output=True))
    return model


class _NoModuleTracking:
    """Stands in for CommDebugMode's per-module tracker, which breaks on a module called twice in one
    forward (lmstack's Block reuses ``resid_dropout``): its forward hook is registered once per call
    under the same name and then pops its parent stack twice. Totals do not need module tracking."""

    name, is_bw, activation_checkpointing = "Global", False, False
    module_parents_dict = {"Global": ()}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def count_collectives(fn) -> tuple[object, dict[str, int]]:
    """Run ``fn()`` under ``CommDebugMode``; return its result and {collective name: count}."""
    from torch.distributed.tensor.debug import CommDebugMode

    mode = CommDebugMode()
    mode.advanced_module_tracker = _NoModuleTracking()
    with mode:
        result = fn()
    return result, {getattr(op, "__name__", str(op)): n for op, n in mode.get_comm_counts().items()}


def apply_2d_parallel(model: nn.Module, dp_size: int, tp_size: int, device_type: str = "cpu",
                      sequence_parallel: bool = False) -> tuple[nn.Module, object]:
    """Data x tensor parallelism: tensor parallel inside groups of ``tp_size`` ranks (put them on one
    node: TP talks every layer), FSDP2 across the ``dp_size`` groups. Needs dp_size * tp_size ranks;
    returns the model and the 2-D mesh (dims "dp", "tp"). Each dp group must get its own batch."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (dp_size, tp_size), mesh_dim_names=("dp", "tp"))
    apply_tensor_parallel(model, mesh["tp"], sequence_parallel=sequence_parallel)
    for block in model.layers:
        fully_shard(block, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    return model, mesh


def parallelize_for_training(model: nn.Module, tensor_parallel: int, sequence_parallel: bool, strategy: str,
                             world_size: int, device: str) -> tuple[nn.Module, int, int]:
    """The trainer's entry point (``tensor_parallel > 1``): 2-D FSDP2 x TP over the torchrun ranks.
    Returns the model and this rank's (data-parallel rank, data-parallel size): ranks of one
    tensor-parallel group must read the same batches."""
    if strategy != "fsdp":
        raise ValueError(f"train config tensor_parallel={tensor_parallel} needs distributed = \"fsdp\" "
                         f"(FSDP2 shards across the data-parallel groups), got {strategy!r}")
    if world_size < tensor_parallel or world_size % tensor_parallel:
        raise ValueError(f"train config tensor_parallel={tensor_parallel} must divide the number of processes "
                         f"({world_size}); launch with torchrun --nproc_per_node=N")
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    model, mesh = apply_2d_parallel(model, world_size // tensor_parallel, tensor_parallel, device_type,
                                    sequence_parallel=sequence_parallel)
    return model, mesh["dp"].get_local_rank(), mesh["dp"].size()


def clip_grad_norm_across_meshes(params: list, max_norm: float) -> float:
    """Global gradient norm (and clipping when ``max_norm > 0``) for parameters that live on
    different device meshes (2-D TP weights next to 1-D FSDP embeddings). torch's
    ``clip_grad_norm_`` stacks the per-parameter norms and fails on mixed meshes."""
    import torch

    squares = torch.zeros((), dtype=torch.float32)
    by_mesh: dict[object, list] = {}
    for p in params:
        by_mesh.setdefault(getattr(p.grad, "device_mesh", None), []).append(p.grad)
    for grads in by_mesh.values():
        norm = torch.nn.utils.get_total_norm(grads)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        squares = squares + norm.float().cpu() ** 2
    total = float(squares.sqrt())
    if max_norm > 0 and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in params:
            p.grad.mul_(scale)
    return total
