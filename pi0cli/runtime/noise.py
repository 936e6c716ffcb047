"""JAX's sampling noise, drawn with numpy: ``jax.random.normal(fold_in(key(seed), counter), shape)``.

The JAX :class:`~pi0cli.policy.Policy` draws each model call's noise from the key ``fold_in(key(seed), n)``
(n counts model calls). The artifact runtime draws the very same numbers without JAX, so ``pi0 serve
--artifact`` and ``pi0 serve --checkpoint`` of one checkpoint answer the same requests with the same actions.

The pieces follow JAX's public definitions: the Threefry-2x32 block cipher (20 rounds), the "partitionable"
counter layout (a 64-bit linear index per element, split into two 32-bit words, the two output words
xor-ed), 23 random mantissa bits for a uniform in [-1, 1), and ``sqrt(2) * erfinv(u)`` with the single-
precision erfinv polynomial XLA uses (M. Giles, "Approximating the erfinv function").
"""

from __future__ import annotations

import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(key: tuple[int, int], x0: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32 of the counter words ``(x0, x1)`` under ``key`` (uint32 arrays, wrapping arithmetic)."""
    k0, k1 = np.uint32(key[0]), np.uint32(key[1])
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    with np.errstate(over="ignore"):
        x0 = x0.astype(np.uint32) + ks[0]
        x1 = x1.astype(np.uint32) + ks[1]
        for i in range(5):
            for r in _ROTATIONS[i % 2]:
                x0 = x0 + x1
                x1 = _rotl(x1, r) ^ x0
            x0 = x0 + ks[(i + 1) % 3]
            x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def fold_in(key: tuple[int, int], data: int) -> tuple[int, int]:
    """``jax.random.fold_in`` of a raw Threefry key."""
    y0, y1 = threefry2x32(key, np.array([0], np.uint32), np.array([data & 0xFFFFFFFF], np.uint32))
    return int(y0[0]), int(y1[0])


def seed_key(seed: int) -> tuple[int, int]:
    """``jax.random.key(seed)``'s raw Threefry words (non-negative seeds)."""
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return (seed >> 32) & 0xFFFFFFFF, seed & 0xFFFFFFFF


def random_bits(key: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    """32 random bits per element (JAX's partitionable Threefry layout)."""
    index = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint64)
    hi = (index >> np.uint64(32)).astype(np.uint32)
    lo = (index & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    b0, b1 = threefry2x32(key, hi, lo)
    return (b0 ^ b1).reshape(shape)


def erfinv(x: np.ndarray) -> np.ndarray:
    """Single-precision inverse error function (Giles' polynomial, as XLA evaluates it), float32."""
    x = x.astype(np.float32)
    with np.errstate(divide="ignore"):
        w = -np.log1p(-x * x)  # XLA's form; log((1 - x)(1 + x)) is 60x less accurate near |x| = 1
    small = w < np.float32(5.0)
    ws = w - np.float32(2.5)
    wl = np.sqrt(w) - np.float32(3.0)
    p_small = np.float32(2.81022636e-08)
    for c in (3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087, -0.00125372503, -0.00417768164,
              0.246640727, 1.50140941):
        p_small = np.float32(c) + p_small * ws
    p_large = np.float32(-0.000200214257)
    for c in (0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613, 0.00943887047,
              1.00167406, 2.83297682):
        p_large = np.float32(c) + p_large * wl
    out = np.where(small, p_small, p_large) * x
    return np.where(np.abs(x) == 1.0, x * np.float32(np.inf), out).astype(np.float32)


def normal(key: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    """``jax.random.normal(key, shape, float32)`` for a raw Threefry key."""
    bits = random_bits(key, shape)
    one = np.array(1.0, np.float32).view(np.uint32)
    floats = ((bits >> np.uint32(9)) | one).view(np.float32) - np.float32(1.0)  # [0, 1)
    low = np.nextafter(np.float32(-1.0), np.float32(np.inf))
    uniform = np.maximum(low, floats * (np.float32(1.0) - low) + low)
    return (np.float32(np.sqrt(2.0)) * erfinv(uniform)).astype(np.float32)


def policy_noise(seed: int, counter: int, shape: tuple[int, ...]) -> np.ndarray:
    """The noise of a JAX policy's ``counter``-th model call: ``normal(fold_in(key(seed), counter), shape)``."""
    return normal(fold_in(seed_key(seed), counter), shape)
