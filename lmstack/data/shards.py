"""Token shards: a flat array of token ids behind a small fixed header, read by memory map.

Layout: 64-byte header of little-endian int64 values
``[MAGIC, VERSION, itemsize, n_tokens, 0, 0, 0, 0]`` followed by the ids as uint16
(vocab <= 65536) or uint32. The header lets a reader refuse a file that is not a shard
or that was cut short, instead of silently training on garbage.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MAGIC = 0x4C4D535448524431  # "LMSTHRD1"
VERSION = 1
HEADER_INTS = 8
HEADER_BYTES = HEADER_INTS * 8


def write_tokens(path: str | os.PathLike, tokens: np.ndarray) -> None:
    """Write ``tokens`` (an integer array) as a shard, atomically."""
    from lmstack.runs import atomic_write_bytes

    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{path}: tokens must be a 1-D array, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 1 << 32):
        raise ValueError(f"{path}: token ids must be in [0, 2**32)")
    dtype = np.dtype(np.uint16) if (tokens.size == 0 or tokens.max() < 1 << 16) else np.dtype(np.uint32)
    header = np.array([MAGIC, VERSION, dtype.itemsize, tokens.size, 0, 0, 0, 0], dtype="<i8")
    atomic_write_bytes(path, header.tobytes() + tokens.astype(dtype.newbyteorder("<")).tobytes())


def read_tokens(path: str | os.PathLike) -> np.memmap:
    """Memory-map a shard written by :func:`write_tokens`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: token shard not found (run the tokenizer stage first)")
    header = np.fromfile(path, dtype="<i8", count=HEADER_INTS)
    if header.size < HEADER_INTS or header[0] != MAGIC:
        raise ValueError(f"{path}: not an lmstack token shard (bad magic number)")
    if header[1] != VERSION:
        raise ValueError(f"{path}: shard version {header[1]} is not supported (expected {VERSION})")
    itemsize, n = int(header[2]), int(header[3])
    dtype = {2: np.dtype("<u2"), 4: np.dtype("<u4")}.get(itemsize)
    if dtype is None:
        raise ValueError(f"{path}: unsupported token size {itemsize} bytes")
    expected = HEADER_BYTES + n * itemsize
    if path.stat().st_size != expected:
        raise ValueError(f"{path}: truncated or corrupt shard ({path.stat().st_size} bytes, expected {expected})")
    if n == 0:
        return np.zeros(0, dtype=dtype)  # np.memmap cannot map an empty region
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(n,))
