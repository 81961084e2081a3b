"""Pure checks and conversions between model values and what a scheme can encode."""

from __future__ import annotations

import numpy as np

from common.errors import ValueRangeError


def checked_values(values: np.ndarray, bound: float) -> np.ndarray:
    """Return ``values`` as a 1-D float64 array, or raise ValueRangeError.

    Non-finite values and values with ``|x| > bound`` are refused, naming the first offender.
    The input is never modified.
    """
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueRangeError(f"expected a 1-D array of values, got shape {array.shape}")
    if array.size == 0:
        raise ValueRangeError("expected at least one value, got an empty array")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueRangeError(f"expected real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    bad = ~np.isfinite(array) | (np.abs(array) > bound)
    if bad.any():
        index = int(np.argmax(bad))
        value = float(array[index])
        reason = "is not finite" if not np.isfinite(value) else f"exceeds the bound {bound:g}"
        raise ValueRangeError(f"value at index {index} ({value!r}) {reason}")
    return array


def check_sum(values: np.ndarray, limit: float) -> None:
    """A decrypted sum beyond ``limit`` means overflow or corruption: refuse it, never wrap."""
    bad = ~np.isfinite(values) | (np.abs(values) > limit)
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueRangeError(
            f"decrypted value at index {index} ({float(values[index])!r}) is beyond {limit:g}: "
            "the sum overflowed or the blob is corrupted"
        )


def blocks(values: np.ndarray, size: int) -> list[np.ndarray]:
    """Split into blocks of exactly ``size`` values, zero-padding the last one."""
    count = -(-len(values) // size)
    padded = np.zeros(count * size, dtype=values.dtype)
    padded[: len(values)] = values
    return list(padded.reshape(count, size))


def to_fixed(values: np.ndarray, fraction_bits: int) -> np.ndarray:
    """Fixed point: ``round(x * 2**f)`` as int64 (exact for |x * 2**f| < 2**53)."""
    return np.rint(np.ldexp(values, fraction_bits)).astype(np.int64)


def from_fixed(integers: np.ndarray, fraction_bits: int) -> np.ndarray:
    return np.ldexp(integers.astype(np.float64), -fraction_bits)
