"""A paged key/value cache: a fixed pool of blocks, a block table per sequence, prefix caching.

PagedAttention (Kwon et al. 2023, vLLM) stores a sequence's keys and values in fixed-size blocks
that need not be contiguous; a per-sequence *block table* maps logical block i (token positions
i*B .. i*B+B-1) to a physical block of the pool. Memory is then allocated one block at a time as a
sequence grows, so the only waste is the unfilled tail of each sequence's last block.

Prefix caching: a *full* block is identified by its tokens and by the tokens before it (a chained
key), so two requests that start with the same system prompt map their first blocks to the same
physical blocks. Blocks carry reference counts; a block nobody references but whose contents are
still known stays in an LRU list and is reused on a cache hit, or evicted when a fresh block is
needed and the free list is empty.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Optional, Sequence

import torch


class PoolExhausted(RuntimeError):
    pass


def block_keys(tokens: Sequence[int], block_size: int, parent: Optional[int] = None, start_block: int = 0,
               n_blocks: Optional[int] = None) -> list[int]:
    """Chained keys of the full blocks of ``tokens`` (from ``start_block``): key_i = hash(key_{i-1}, block_i)."""
    keys = []
    total = len(tokens) // block_size if n_blocks is None else n_blocks
    for i in range(start_block, total):
        parent = hash((parent, tuple(tokens[i * block_size:(i + 1) * block_size])))
        keys.append(parent)
    return keys


class BlockPool:
    """Key/value storage for every layer plus the bookkeeping of which block holds what.

    ``keys[layer]`` / ``values[layer]`` are ``[n_blocks * block_size, n_kv_heads, head_dim]``: a flat
    array of token *slots*; slot ``b * block_size + j`` is position j of physical block b.
    """

    def __init__(self, n_layers: int, n_blocks: int, block_size: int, n_kv_heads: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, prefix_caching: bool = True):
        if n_blocks < 1 or block_size < 1:
            raise ValueError(f"BlockPool needs n_blocks >= 1 and block_size >= 1, got {n_blocks} and {block_size}")
        self.n_blocks, self.block_size = n_blocks, block_size
        self.prefix_caching = prefix_caching
        shape = (n_blocks * block_size, n_kv_heads, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.refcount = [0] * n_blocks
        self.key_of: list[Optional[int]] = [None] * n_blocks  # prefix-cache key of a full, registered block
        self.cached: dict[int, int] = {}  # key -> block
        self.free: deque[int] = deque(range(n_blocks))  # unreferenced, contents unknown
        self.evictable: OrderedDict[int, None] = OrderedDict()  # unreferenced, contents cached (LRU first)
        self.hits = 0  # prefix-cache blocks reused
        self.evictions = 0

    @staticmethod
    def bytes_per_block(n_layers: int, block_size: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * n_layers * block_size * n_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    # ------------------------------------------------------------ counts
    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (free or evictable)."""
        return len(self.free) + len(self.evictable)

    @property
    def num_used(self) -> int:
        """Blocks referenced by at least one sequence."""
        return self.n_blocks - self.num_free

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    # ------------------------------------------------------------ allocation
    def _take(self) -> int:
        if self.free:
            block = self.free.popleft()
        elif self.evictable:
            block, _ = self.evictable.popitem(last=False)
            del self.cached[self.key_of[block]]
            self.key_of[block] = None
            self.evictions += 1
        else:
            raise PoolExhausted(f"all {self.n_blocks} KV blocks are in use")
        self.refcount[block] = 1
        return block

    def acquire(self, block: int) -> None:
        if self.refcount[block] == 0:
            self.evictable.pop(block, None)
        self.refcount[block] += 1

    def release(self, block: int) -> None:
        if self.refcount[block] <= 0:
            raise RuntimeError(f"KV block {block} released more often than acquired")
        self.refcount[block] -= 1
        if self.refcount[block] == 0:
            if self.key_of[block] is not None:
                self.evictable[block] = None
            else:
                self.free.append(block)

    def ensure(self, table: list[int], n_tokens: int) -> bool:
        """Grow ``table`` so it covers ``n_tokens`` positions; False (table unchanged) if the pool is short."""
        need = self.blocks_for(n_tokens) - len(table)
        if need <= 0:
            return True
        if need > self.num_free:
            return False
        table.extend(self._take() for _ in range(need))
        return True

    def free_table(self, table: list[int]) -> None:
        # release the tail first so the LRU evicts a sequence's later blocks before its prefix
        for block in reversed(table):
            self.release(block)
        table.clear()

    # ------------------------------------------------------------ prefix caching
    def match_prefix(self, keys: Sequence[int]) -> list[int]:
        """The cached blocks for the leading ``keys``, acquired for the caller (stops at the first miss)."""
        found = []
        if not self.prefix_caching:
            return found
        for key in keys:
            block = self.cached.get(key)
            if block is None:
                break
            self.acquire(block)
            found.append(block)
        self.hits += len(found)
        return found

    def register(self, block: int, key: int) -> None:
        """Record that full ``block`` holds the tokens named by ``key`` (first writer wins)."""
        if not self.prefix_caching or self.key_of[block] is not None or key in self.cached:
            return
        self.cached[key] = block
        self.key_of[block] = key

    # ------------------------------------------------------------ slots
    def slots(self, table: Sequence[int], start: int, end: int) -> torch.Tensor:
        """Flat slot index of every position in [start, end) of a sequence with this block table."""
        bs = self.block_size
        pos = torch.arange(start, end)
        blocks = torch.as_tensor(list(table), dtype=torch.long)[pos // bs]
        return blocks * bs + pos % bs

    def check_all_free(self) -> None:
        """Raise if any block is still referenced (a leak once every request has finished)."""
        leaked = [b for b, c in enumerate(self.refcount) if c]
        if leaked:
            raise RuntimeError(f"{len(leaked)} KV blocks still referenced after all requests finished: {leaked[:10]}")
