"""8-bit AdamW: both Adam moments stored as uint8 codes with block-wise dynamic quantization.

Dettmers et al. 2021, "8-bit Optimizers via Block-wise Quantization": split each state tensor
into blocks (2048 elements), keep one fp32 absmax per block, and store every element as the
index of the nearest value in a 256-entry *dynamic* code book. The code book is non-linear
(one "decade" exponent per leading zero, more fraction points in the larger decades), so small
and large magnitudes both keep a few significant digits. The first moment is signed; the
second moment is never negative, so it uses an unsigned map that spends the sign bit on
resolution. Each step dequantizes to fp32, runs an ordinary AdamW update, and quantizes back:
the state costs ~2 bytes per parameter instead of 8 (about 75% less).

Small tensors (biases, norm gains; fewer than ``min_8bit_numel`` elements) keep fp32 moments,
as bitsandbytes does: they cost little and are the most sensitive to quantization noise.
"""

from __future__ import annotations

import torch

DEFAULT_BLOCK = 2048       # Dettmers et al. 2021
SMALL_BLOCK = 256          # tensors under 8 full blocks: smaller blocks keep the absmax local
MIN_8BIT_NUMEL = 4096


def dynamic_code_book(signed: bool) -> torch.Tensor:
    """The 256 sorted values of the dynamic ("tree") quantization map in [-1, 1] or [0, 1].

    Decade k (k = 0..6) covers magnitudes 10^(k-6) * (0.1, 1]; it holds 2^k (signed) or
    2^(k+1) (unsigned) evenly spaced points, taken as midpoints of a linear grid. Together with
    0 and 1 this fills exactly 256 codes in both cases.
    """
    extra_bit = 0 if signed else 1
    magnitudes: list[float] = []
    for k in range(7):
        n = 2 ** (k + extra_bit)
        grid = torch.linspace(0.1, 1.0, n + 1, dtype=torch.float64)
        mids = (grid[:-1] + grid[1:]) / 2
        magnitudes += (mids * 10.0 ** (k - 6)).tolist()
    values = magnitudes + ([-m for m in magnitudes] if signed else []) + [0.0, 1.0]
    book = torch.tensor(sorted(values), dtype=torch.float32)
    if book.numel() != 256:
        raise RuntimeError(f"dynamic code book has {book.numel()} entries, expected 256")
    return book


def block_size_for(numel: int, block_size: int = DEFAULT_BLOCK) -> int:
    return block_size if numel >= 8 * block_size else SMALL_BLOCK


class BlockQuantized:
    """A tensor stored as uint8 codes into ``book`` plus one fp32 absmax per block."""

    def __init__(self, codes: torch.Tensor, absmax: torch.Tensor, shape: torch.Size, block: int):
        self.codes, self.absmax, self.shape, self.block = codes, absmax, shape, block

    @classmethod
    def zeros(cls, like: torch.Tensor, block: int, book: torch.Tensor) -> "BlockQuantized":
        n_blocks = -(-like.numel() // block)
        zero_code = int(torch.argmin(book.abs()))
        codes = torch.full((n_blocks * block,), zero_code, dtype=torch.uint8, device=like.device)
        return cls(codes, torch.zeros(n_blocks, dtype=torch.float32, device=like.device), like.shape, block)

    def dequantize(self, book: torch.Tensor) -> torch.Tensor:
        values = book[self.codes.long()].view(-1, self.block) * self.absmax[:, None]
        return values.view(-1)[: self.shape.numel()].view(self.shape)

    def quantize_(self, x: torch.Tensor, book: torch.Tensor, boundaries: torch.Tensor) -> None:
        flat = x.detach().float().reshape(-1)
        pad = self.codes.numel() - flat.numel()
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        blocks = flat.view(-1, self.block)
        absmax = blocks.abs().amax(dim=1)
        normalized = blocks / absmax.clamp_min(1e-30)[:, None]
        # nearest code: the boundaries are the midpoints between neighbouring code values
        self.codes.copy_(torch.bucketize(normalized.reshape(-1), boundaries).to(torch.uint8))
        self.absmax.copy_(absmax)

    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.absmax.numel() * self.absmax.element_size()


class AdamW8bit(torch.optim.Optimizer):
    """Decoupled-weight-decay Adam (Loshchilov & Hutter 2019) with 8-bit block-quantized moments.

    The state of a quantized parameter holds ``exp_avg_codes`` / ``exp_avg_absmax`` and
    ``exp_avg_sq_codes`` / ``exp_avg_sq_absmax`` (plain tensors, so checkpoints stay
    safetensors); small parameters hold fp32 ``exp_avg`` / ``exp_avg_sq`` as in torch's AdamW.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, block_size: int = DEFAULT_BLOCK, min_8bit_numel: int = MIN_8BIT_NUMEL):
        if block_size <= 0 or block_size % 64:
            raise ValueError(f"AdamW8bit block_size={block_size}: use a positive multiple of 64 (2048 is the default)")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.block_size, self.min_8bit_numel = block_size, min_8bit_numel
        self._books: dict[tuple[bool, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _book(self, signed: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (signed, device)
        if key not in self._books:
            book = dynamic_code_book(signed).to(device)
            self._books[key] = (book, (book[1:] + book[:-1]) / 2)
        return self._books[key]

    def _init_state(self, p: torch.Tensor, state: dict) -> None:
        state["step"] = torch.zeros((), dtype=torch.float32)
        if p.numel() < self.min_8bit_numel:
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
            return
        block = block_size_for(p.numel(), self.block_size)
        for name, signed in (("exp_avg", True), ("exp_avg_sq", False)):
            q = BlockQuantized.zeros(p, block, self._book(signed, p.device)[0])
            state[f"{name}_codes"], state[f"{name}_absmax"] = q.codes, q.absmax

    def _moment(self, p: torch.Tensor, state: dict, name: str) -> BlockQuantized:
        codes, absmax = state[f"{name}_codes"], state[f"{name}_absmax"]
        return BlockQuantized(codes, absmax, p.shape, codes.numel() // absmax.numel())

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                param, grad = _local(p), _local(p.grad).float()
                state = self.state[p]
                if "step" not in state:
                    self._init_state(param, state)
                state["step"] += 1
                t = float(state["step"])
                quantized = "exp_avg_codes" in state
                if quantized:
                    m_q, v_q = self._moment(param, state, "exp_avg"), self._moment(param, state, "exp_avg_sq")
                    exp_avg = m_q.dequantize(self._book(True, param.device)[0])
                    exp_avg_sq = v_q.dequantize(self._book(False, param.device)[0])
                else:
                    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = (exp_avg_sq / (1.0 - beta2 ** t)).sqrt_().add_(eps)
                if wd:
                    param.mul_(1.0 - lr * wd)
                param.addcdiv_(exp_avg.to(param.dtype), denom.to(param.dtype), value=-lr / (1.0 - beta1 ** t))
                if quantized:
                    m_q.quantize_(exp_avg, *self._book(True, param.device))
                    v_q.quantize_(exp_avg_sq, *self._book(False, param.device))
        return loss


    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Quantized moments are saved as codes + absmax, except for FSDP2-sharded (DTensor)
        parameters: their blocks follow the local shard, so they are saved as dequantized fp32
        DTensors that torch.distributed.checkpoint can gather and re-shard (re-quantized on load;
        such a resume is close to, not bit-identical with, an uninterrupted run)."""
        sd = super().state_dict()
        params = [p for g in self.param_groups for p in g["params"]]
        state = {}
        for idx, st in sd["state"].items():
            p = params[idx]
            if hasattr(p, "device_mesh") and "step" in st:
                from torch.distributed.tensor import DTensor
                live, st = self.state[p], {"step": st["step"]}
                for name, signed in (("exp_avg", True), ("exp_avg_sq", False)):
                    local = (self._moment(_local(p), live, name).dequantize(self._book(signed, p.device)[0])
                             if f"{name}_codes" in live else live[name])
                    st[name] = DTensor.from_local(local, p.device_mesh, p.placements, run_check=False,
                                                  shape=p.shape, stride=p.stride())
            state[idx] = st
        sd["state"] = state
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for p, st in self.state.items():
            for name, signed in (("exp_avg", True), ("exp_avg_sq", False)):
                if f"{name}_codes" in st:
                    # torch's loader casts every floating-point-param state to the param dtype
                    st[f"{name}_codes"] = st[f"{name}_codes"].to(torch.uint8)
                    st[f"{name}_absmax"] = st[f"{name}_absmax"].float()
                elif name in st:
                    # fp32 moments (FSDP2 checkpoints, or a torch AdamW checkpoint): this rank's shard,
                    # quantized where the optimizer would have quantized it
                    value = _local(st.pop(name)).float()
                    if value.numel() < self.min_8bit_numel:
                        st[name] = value
                        continue
                    q = BlockQuantized.zeros(value, block_size_for(value.numel(), self.block_size),
                                             self._book(signed, value.device)[0])
                    q.quantize_(value, *self._book(signed, value.device))
                    st[f"{name}_codes"], st[f"{name}_absmax"] = q.codes, q.absmax


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2 parameters), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by all tensors in the optimizer state (step counters included), measured the same
    way for torch's AdamW, ours and torchao's (whose state tensors are subclasses: their inner
    tensors are counted)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += tensor_bytes(value)
    return total


def tensor_bytes(t: torch.Tensor) -> int:
    inner = getattr(t, "__tensor_flatten__", None)
    if inner is not None and type(t) is not torch.Tensor:
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()
