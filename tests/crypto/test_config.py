"""HEConfig: defaults, derived bounds, and validation (128-bit security, no overflow)."""

from __future__ import annotations

import dataclasses

import pytest

from common.crypto.config import (
    DEFAULT_BFV_COEFF_MODULUS_BITS,
    DEFAULT_CKKS_COEFF_MODULUS_BITS,
    HEConfig,
)
from common.errors import ConfigError


def test_defaults_are_ckks_with_its_chain() -> None:
    config = HEConfig()
    assert config.scheme == "ckks"
    assert config.poly_modulus_degree == 4096
    assert config.coeff_modulus_bits == DEFAULT_CKKS_COEFF_MODULUS_BITS == (36, 53)
    assert (config.scale_bits, config.max_hospitals) == (20, 100)


def test_bfv_gets_its_own_default_chain() -> None:
    config = HEConfig(scheme="bfv")
    assert config.coeff_modulus_bits == DEFAULT_BFV_COEFF_MODULUS_BITS == (60, 49)
    assert config.plain_modulus_bits == 36


def test_config_is_frozen_and_keyword_only() -> None:
    config = HEConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.scheme = "bfv"  # type: ignore[misc]
    with pytest.raises(TypeError):
        HEConfig("ckks")  # type: ignore[call-arg]


def test_ckks_value_bound_keeps_the_full_sum_below_a_quarter_of_the_last_prime() -> None:
    config = HEConfig()
    q_last_lower_bound = 2.0 ** (config.data_prime_bits - 1)
    total = config.max_hospitals * config.value_bound * 2.0**config.scale_bits
    assert total <= q_last_lower_bound / 4
    assert config.value_bound == pytest.approx(81.92)


def test_bfv_fraction_bits_are_the_largest_that_cannot_overflow() -> None:
    config = HEConfig(scheme="bfv")
    f = config.fraction_bits
    half_t_lower_bound = 2.0 ** (config.plain_modulus_bits - 2)
    assert config.max_hospitals * (config.value_bound * 2.0**f + 1) <= half_t_lower_bound
    assert config.max_hospitals * (config.value_bound * 2.0 ** (f + 1) + 1) > half_t_lower_bound
    assert (config.value_bound, f) == (64.0, 21)
    assert config.resolution == 2.0**-21


def test_fewer_hospitals_buy_more_precision() -> None:
    assert (
        HEConfig(scheme="bfv", max_hospitals=10).fraction_bits
        > HEConfig(scheme="bfv").fraction_bits
    )
    assert HEConfig(max_hospitals=10).value_bound > HEConfig().value_bound


def test_fraction_bits_do_not_apply_to_ckks() -> None:
    with pytest.raises(ConfigError, match="BFV"):
        _ = HEConfig().fraction_bits


@pytest.mark.parametrize(
    ("kwargs", "limit"),
    [
        ({"coeff_modulus_bits": (60, 50)}, "109-bit limit"),
        ({"poly_modulus_degree": 8192, "coeff_modulus_bits": (60, 60, 60, 40)}, "218-bit limit"),
        ({"scheme": "bfv", "coeff_modulus_bits": (60, 50)}, "109-bit limit"),
    ],
)
def test_exceeding_128_bit_security_names_the_limit(kwargs: dict[str, object], limit: str) -> None:
    with pytest.raises(ConfigError, match=limit):
        HEConfig(**kwargs)  # type: ignore[arg-type]


def test_a_larger_degree_allows_a_longer_chain() -> None:
    config = HEConfig(poly_modulus_degree=8192, coeff_modulus_bits=(60, 40, 40, 60))
    assert config.data_prime_bits == 60


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "rsa"}, "scheme must be one of"),
        ({"poly_modulus_degree": 5000}, "poly_modulus_degree must be one of"),
        ({"coeff_modulus_bits": (56,)}, "at least two primes"),
        ({"coeff_modulus_bits": (61, 40)}, "at most 60"),
        ({"max_hospitals": 0}, "max_hospitals must be at least 1"),
        ({"max_hospitals": True}, "max_hospitals must be an integer"),
        ({"scale_bits": 55}, "value bound"),
        ({"scheme": "bfv", "coeff_modulus_bits": (40, 30, 30)}, "exactly one data prime"),
        ({"scheme": "bfv", "plain_modulus_bits": 50}, "BFV noise"),
        ({"scheme": "bfv", "plain_modulus_bits": 12}, "plain_modulus_bits must be at least 14"),
        ({"scheme": "bfv", "bfv_value_bound": -1.0}, "positive"),
        ({"scheme": "bfv", "bfv_value_bound": 1e9}, "fraction bits"),
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HEConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_dict_round_trip(scheme: str) -> None:
    config = HEConfig(scheme=scheme, max_hospitals=12)
    data = config.to_dict()
    assert data["coeff_modulus_bits"] == list(config.coeff_modulus_bits)
    assert HEConfig.from_dict(data) == config


def test_from_dict_rejects_unknown_keys_and_bad_types() -> None:
    with pytest.raises(ConfigError, match="unknown HE config keys: colour"):
        HEConfig.from_dict({"colour": "blue"})
    with pytest.raises(ConfigError, match="mapping"):
        HEConfig.from_dict(["ckks"])
    with pytest.raises(ConfigError, match="coeff_modulus_bits"):
        HEConfig.from_dict({"coeff_modulus_bits": "56,53"})
    with pytest.raises(ConfigError, match="bfv_value_bound"):
        HEConfig.from_dict({"scheme": "bfv", "bfv_value_bound": "64"})
