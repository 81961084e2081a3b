"""Homomorphic-encryption parameters: one validated, frozen value shared by every role.

The parameters are fixed at the key ceremony and recorded in both bundles' manifests. Validation
keeps SEAL's 128-bit security defaults and guarantees that the sum of ``max_hospitals`` inputs,
each at most ``value_bound`` in magnitude, can neither overflow nor wrap.

Bounds are derived from prime *sizes* only, using the fact that a ``b``-bit prime is at least
``2**(b - 1)``; the real primes are close to ``2**b``, so the bounds hold with a factor-2 margin.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from common.errors import ConfigError

CKKS = "ckks"
BFV = "bfv"
SCHEMES = (CKKS, BFV)

DEFAULT_SCHEME = CKKS
DEFAULT_POLY_MODULUS_DEGREE = 4096
#: CKKS last (data) primes that bench/results/precision.md measures, SEAL's special prime next
#: to them, and the bits a prime keeps above the scale for the sign, the complex packing, the
#: sum of 100 hospitals and a value bound of 81.92 (``ckks_parameters``).
CKKS_PRIME_BITS = (36, 40, 45, 50, 56)
CKKS_SPECIAL_PRIME_BITS = 53
CKKS_HEADROOM_BITS = 16
#: The smallest prime of the precision table whose final AUC stays within 0.0005 of plaintext
#: FedAvg in every cell (4.5 bytes per value uploaded, scale 2**20).
DEFAULT_CKKS_PRIME_BITS = 36
DEFAULT_CKKS_COEFF_MODULUS_BITS = (DEFAULT_CKKS_PRIME_BITS, CKKS_SPECIAL_PRIME_BITS)
DEFAULT_BFV_COEFF_MODULUS_BITS = (60, 49)
DEFAULT_SCALE_BITS = DEFAULT_CKKS_PRIME_BITS - CKKS_HEADROOM_BITS
DEFAULT_PLAIN_MODULUS_BITS = 36
DEFAULT_MAX_HOSPITALS = 100
DEFAULT_BFV_VALUE_BOUND = 64.0

#: SEAL's largest total coefficient-modulus size (bits) per degree at 128-bit security
#: (``CoeffModulus::MaxBitCount(n, sec_level_type::tc128)``, homomorphicencryption.org tables).
SEC128_MAX_COEFF_MODULUS_BITS = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}
SECURITY_LEVEL = 128
MIN_PRIME_BITS = 20
MAX_PRIME_BITS = 60  # SEAL's SEAL_USER_MOD_BIT_COUNT_MAX
MIN_SCALE_BITS = 20
#: A CKKS configuration must leave at least this much room for each input value.
MIN_CKKS_VALUE_BOUND = 1.0
#: A BFV configuration must keep at least this many fraction bits (resolution 2**-10).
MIN_FRACTION_BITS = 10
#: Noise bits a fresh BFV ciphertext consumes (measured 7 with n=4096) plus a safety margin.
BFV_FRESH_NOISE_BITS = 10
#: SEAL's standard deviation of the error polynomial's coefficients (noise_standard_deviation).
CKKS_NOISE_SIGMA = 3.2
#: The stated CKKS error bound is this many standard deviations of a decrypted sum's error: a
#: Gaussian exceeds it with probability below 2**-280 per value.
ERROR_BOUND_SIGMAS = 20


@dataclass(frozen=True, kw_only=True)
class HEConfig:
    """Scheme and parameters of the homomorphic encryption.

    ``coeff_modulus_bits`` lists SEAL prime sizes; the last prime is SEAL's special prime, which
    is never part of a ciphertext. An empty tuple selects the scheme's default chain.
    ``scale_bits`` applies to CKKS only, ``plain_modulus_bits`` and ``bfv_value_bound`` to BFV
    only. ``max_hospitals`` is the number of blobs an aggregate may sum.
    """

    scheme: str = DEFAULT_SCHEME
    poly_modulus_degree: int = DEFAULT_POLY_MODULUS_DEGREE
    coeff_modulus_bits: tuple[int, ...] = ()
    scale_bits: int = DEFAULT_SCALE_BITS
    plain_modulus_bits: int = DEFAULT_PLAIN_MODULUS_BITS
    max_hospitals: int = DEFAULT_MAX_HOSPITALS
    bfv_value_bound: float = DEFAULT_BFV_VALUE_BOUND

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if not self.coeff_modulus_bits:
            default = DEFAULT_CKKS_COEFF_MODULUS_BITS
            if self.scheme == BFV:
                default = DEFAULT_BFV_COEFF_MODULUS_BITS
            object.__setattr__(self, "coeff_modulus_bits", default)
        object.__setattr__(self, "coeff_modulus_bits", tuple(self.coeff_modulus_bits))
        object.__setattr__(self, "bfv_value_bound", float(self.bfv_value_bound))
        self._check_security()
        _require_int("max_hospitals", self.max_hospitals, low=1)
        if self.scheme == CKKS:
            self._check_ckks()
        else:
            self._check_bfv()

    def _check_security(self) -> None:
        n = self.poly_modulus_degree
        if not isinstance(n, int) or n not in SEC128_MAX_COEFF_MODULUS_BITS:
            raise ConfigError(
                f"poly_modulus_degree must be one of {sorted(SEC128_MAX_COEFF_MODULUS_BITS)}, "
                f"got {n!r}"
            )
        bits = self.coeff_modulus_bits
        if len(bits) < 2:
            raise ConfigError(
                "coeff_modulus_bits needs at least two primes: "
                "the data prime(s) and SEAL's special prime"
            )
        for size in bits:
            _require_int("coeff_modulus_bits entry", size, low=MIN_PRIME_BITS, high=MAX_PRIME_BITS)
        limit = SEC128_MAX_COEFF_MODULUS_BITS[n]
        if sum(bits) > limit:
            raise ConfigError(
                f"coeff_modulus_bits {bits} total {sum(bits)} bits, above the {limit}-bit limit "
                f"for {SECURITY_LEVEL}-bit security at poly_modulus_degree {n}"
            )

    def _check_ckks(self) -> None:
        _require_int("scale_bits", self.scale_bits, low=MIN_SCALE_BITS, high=MAX_PRIME_BITS)
        if self.value_bound < MIN_CKKS_VALUE_BOUND:
            raise ConfigError(
                f"scale_bits {self.scale_bits} with a {self.data_prime_bits}-bit last prime and "
                f"max_hospitals {self.max_hospitals} leave a value bound of "
                f"{self.value_bound:.3g}, below {MIN_CKKS_VALUE_BOUND}: "
                "lower scale_bits or enlarge the first prime"
            )

    def _check_bfv(self) -> None:
        if len(self.coeff_modulus_bits) != 2:
            raise ConfigError(
                "BFV needs exactly one data prime plus the special prime (Pyfhel cannot mod-switch "
                f"BFV ciphertexts down), got coeff_modulus_bits {self.coeff_modulus_bits}"
            )
        slot_bits = int(math.log2(2 * self.poly_modulus_degree)) + 1
        _require_int(
            "plain_modulus_bits", self.plain_modulus_bits, low=slot_bits, high=MAX_PRIME_BITS
        )
        if not math.isfinite(self.bfv_value_bound) or self.bfv_value_bound <= 0:
            raise ConfigError(f"bfv_value_bound must be positive, got {self.bfv_value_bound}")
        headroom = self.data_prime_bits - self.plain_modulus_bits
        needed = math.ceil(math.log2(self.max_hospitals)) + BFV_FRESH_NOISE_BITS
        if headroom < needed:
            raise ConfigError(
                f"BFV noise: data prime {self.data_prime_bits} bits minus plain modulus "
                f"{self.plain_modulus_bits} bits leaves {headroom} bits; fresh encryption and "
                f"{self.max_hospitals} additions need {needed}"
            )
        if _fraction_bits(self) < MIN_FRACTION_BITS:
            raise ConfigError(
                f"plain_modulus_bits {self.plain_modulus_bits} with bfv_value_bound "
                f"{self.bfv_value_bound} and max_hospitals {self.max_hospitals} leave fewer than "
                f"{MIN_FRACTION_BITS} fraction bits"
            )

    @property
    def data_prime_bits(self) -> int:
        """Size of the prime left in a serialized ciphertext (the first of the chain)."""
        return self.coeff_modulus_bits[0]

    @property
    def value_bound(self) -> float:
        """Largest |x| an input may hold so that summing ``max_hospitals`` inputs cannot overflow.

        CKKS: ``max_hospitals * bound * 2**scale_bits <= q_last / 4``; the factor 4 covers the
        sign and the two reals packed into one complex slot (coefficients grow by up to sqrt 2).
        BFV: the configured ``bfv_value_bound``; ``fraction_bits`` is derived from it.
        """
        if self.scheme == BFV:
            return self.bfv_value_bound
        return 2.0 ** (self.data_prime_bits - 1 - 2 - self.scale_bits) / self.max_hospitals

    @property
    def fraction_bits(self) -> int:
        """BFV fixed-point fraction bits ``f``: values are encoded as ``round(x * 2**f)``.

        ``f`` is the largest value with ``max_hospitals * (bound * 2**f + 1) <= 2**(t_bits - 2)
        < t / 2``, so a sum of ``max_hospitals`` encoded inputs stays inside SEAL's centred range.
        """
        if self.scheme != BFV:
            raise ConfigError("fraction_bits applies to the BFV scheme only")
        return _fraction_bits(self)

    @property
    def resolution(self) -> float:
        """Encoding step of one value: ``2**-f`` (BFV), ``2**-scale_bits`` (CKKS).

        CKKS adds encryption noise on top (``error_bound``).
        """
        if self.scheme == BFV:
            return 2.0**-self.fraction_bits
        return 2.0**-self.scale_bits

    def error_bound(self, summands: int) -> float:
        """The largest error of one value decrypted from a sum of ``summands`` fresh uploads.

        BFV: the fixed-point rounding alone, half a step per summand (the arithmetic is exact).
        CKKS: a hospital encrypts with its secret key, so a decrypted upload carries the error
        polynomial ``e`` (coefficients of standard deviation ``CKKS_NOISE_SIGMA``) plus the
        encoder's rounding (variance 1/12), in units of ``2**-scale_bits``. One real value of a
        slot sums ``n`` such coefficients on the unit circle: variance ``n/2 (sigma**2 + 1/12)``
        steps squared, independent across uploads. The bound is ``ERROR_BOUND_SIGMAS`` standard
        deviations of the sum's error (at n=4096: 20 x 145.4 x sqrt(summands) steps).
        """
        _require_int("summands", summands, low=1)
        if self.scheme == BFV:
            return summands * self.resolution / 2
        variance = summands * self.poly_modulus_degree / 2 * (CKKS_NOISE_SIGMA**2 + 1 / 12)
        return ERROR_BOUND_SIGMAS * math.sqrt(variance) * self.resolution

    @property
    def values_per_ciphertext(self) -> int:
        """Reals carried by one ciphertext: n slots (BFV) or n/2 complex slots x 2 (CKKS)."""
        return self.poly_modulus_degree

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready representation (tuples become lists)."""
        data = asdict(self)
        data["coeff_modulus_bits"] = list(self.coeff_modulus_bits)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> HEConfig:
        """Build from ``to_dict`` output; unknown keys and wrong types raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"HE config must be a mapping, got {type(data).__name__}")
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown HE config keys: {', '.join(unknown)}")
        values = dict(data)
        bits = values.get("coeff_modulus_bits", ())
        if not isinstance(bits, list | tuple):
            raise ConfigError(f"coeff_modulus_bits must be a list of ints, got {bits!r}")
        values["coeff_modulus_bits"] = tuple(bits)
        bound = values.get("bfv_value_bound", DEFAULT_BFV_VALUE_BOUND)
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            raise ConfigError(f"bfv_value_bound must be a number, got {bound!r}")
        if not isinstance(values.get("scheme", DEFAULT_SCHEME), str):
            raise ConfigError(f"scheme must be a string, got {values['scheme']!r}")
        return cls(**values)


def ckks_parameters(prime_bits: int) -> dict[str, Any]:
    """``HEConfig`` fields of a CKKS chain with a ``prime_bits`` last prime: the special prime and
    a scale ``CKKS_HEADROOM_BITS`` below the prime (the value bound stays 81.92 at 100
    hospitals whatever the prime; more bits, less error: bench/results/precision.md)."""
    _require_int("CKKS prime bits", prime_bits, low=MIN_SCALE_BITS + CKKS_HEADROOM_BITS)
    return {
        "coeff_modulus_bits": (prime_bits, CKKS_SPECIAL_PRIME_BITS),
        "scale_bits": prime_bits - CKKS_HEADROOM_BITS,
    }


def _fraction_bits(config: HEConfig) -> int:
    limit = 2.0 ** (config.plain_modulus_bits - 2)
    bound = config.bfv_value_bound
    ratio = limit / (config.max_hospitals * bound)
    if ratio < 1:
        return 0
    bits = math.floor(math.log2(ratio))
    while bits > 0 and config.max_hospitals * (bound * 2.0**bits + 1) > limit:
        bits -= 1
    while config.max_hospitals * (bound * 2.0 ** (bits + 1) + 1) <= limit:
        bits += 1
    return bits


def _require_int(name: str, value: Any, *, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = f" and at most {high}" if high is not None else ""
        raise ConfigError(f"{name} must be at least {low}{upper}, got {value}")
