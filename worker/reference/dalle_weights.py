"""Deterministic synthetic weights shared by Kiln's DALL·E parity fixtures.

Kiln's `models::dalle::synthetic` implements the same function, so the Rust
tests rebuild exactly these weights from a seed and a tensor name instead of
reading hundreds of megabytes of committed weights.

For the tensor `name` of shape `shape` and element `i` (row-major):
  key  = FNV-1a-32(seed as 8 little-endian bytes ++ name as UTF-8)
  x    = lowbias32((i * 0x9E3779B9 mod 2^32) XOR key)
  r    = (x >> 8) / 2^24 * 2 - 1                       (exact in float32)
  bias (name ends with ".bias"):       r * 0.1
  1-D weight (layer and group norms):  1 + r * 0.1
  other weights:                       r * float32(sqrt(3 / fan_in)),
                                       fan_in = numel / shape[0]
"""
import math

import numpy as np


def tensor_key(seed: int, name: str) -> int:
    h = 0x811C9DC5
    for b in seed.to_bytes(8, "little") + name.encode("utf-8"):
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def _lowbias32(x: np.ndarray) -> np.ndarray:
    m = np.uint64(0xFFFFFFFF)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & m
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & m
    x = x ^ (x >> np.uint64(16))
    return x


def unit(seed: int, name: str, numel: int) -> np.ndarray:
    """Values in [-1, 1) as float32."""
    i = np.arange(numel, dtype=np.uint64)
    x = (i * np.uint64(0x9E3779B9)) & np.uint64(0xFFFFFFFF)
    x = _lowbias32(x ^ np.uint64(tensor_key(seed, name)))
    u = (x >> np.uint64(8)).astype(np.float32) / np.float32(16777216.0)
    return u * np.float32(2.0) - np.float32(1.0)


def synthetic(seed: int, name: str, shape) -> np.ndarray:
    numel = int(np.prod(shape)) if len(shape) else 1
    r = unit(seed, name, numel)
    if name.endswith(".bias"):
        v = r * np.float32(0.1)
    elif len(shape) == 1:
        v = np.float32(1.0) + r * np.float32(0.1)
    else:
        fan_in = numel // shape[0]
        v = r * np.float32(math.sqrt(3.0 / fan_in))
    return v.astype(np.float32).reshape(shape)


def fill_module(module, seed: int, rename=lambda n: n):
    """Overwrites every parameter of a torch module with synthetic values."""
    import torch

    with torch.no_grad():
        for name, p in module.state_dict().items():
            if not p.is_floating_point():
                continue
            p.copy_(torch.from_numpy(synthetic(seed, rename(name), tuple(p.shape))))
