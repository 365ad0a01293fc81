"""Pre-allocated key/value cache for incremental decoding.

Besides keys and values the cache remembers, per batch row, which slots hold real tokens (so a
left-padded prompt stays masked for every later step) and the next position id (so positions of a
left-padded row start at 0 at its first real token, exactly as in an unpadded forward pass).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, max_len: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.key_valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length = 0  # slots filled so far (the same for every row)
        self.max_len = max_len
        self.has_padding = False

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def check_room(self, new_tokens: int) -> None:
        if self.length + new_tokens > self.max_len:
            raise ValueError(
                f"KV cache full: {self.length} cached + {new_tokens} new tokens > max_len={self.max_len}; "
                "create it with a larger max_len (model.new_kv_cache(batch_size, max_len))")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this call's k/v [B, Hkv, T, Dh] after the cached ones; return all of them."""
        start, end = self.length, self.length + k.shape[2]
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, new_tokens: int, new_valid: torch.Tensor | None, new_positions: torch.Tensor) -> None:
        """Called once per forward, after every layer wrote its k/v."""
        start, end = self.length, self.length + new_tokens
        if new_valid is None:
            self.key_valid[:, start:end] = True
        else:
            self.key_valid[:, start:end] = new_valid
            self.has_padding = self.has_padding or not bool(new_valid.all())
        self.next_position = new_positions[:, -1].expand(self.batch_size) + 1
        self.length = end

    def reorder(self, index: torch.Tensor) -> None:
        """Select/reorder batch rows in place (beam search keeps the surviving beams)."""
        for i in range(len(self.keys)):
            self.keys[i] = self.keys[i].index_select(0, index)
            self.values[i] = self.values[i].index_select(0, index)
        self.key_valid = self.key_valid.index_select(0, index)
        self.next_position = self.next_position.index_select(0, index)

    def crop(self, length: int) -> None:
        """Forget every slot from `length` on (speculative decoding rejects draft tokens)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {length}")
        self.length = length
        self.next_position = self.key_valid[:, :length].sum(dim=1)
        self.key_valid[:, length:] = True
