"""apot_common.config: the typed quantizer configs are validated at
construction, frozen and keyword-only, and the scheme strings map to them."""

from __future__ import annotations

import dataclasses

import pytest

from apot_common.config import (
    APoTConfig,
    LearnableAPoTConfig,
    SignMagnitudeConfig,
    UniformConfig,
    check_config,
    from_scheme,
)


@pytest.mark.parametrize("make, message", [
    (lambda: APoTConfig(b=4, k=3), "multiple of k"),
    (lambda: APoTConfig(b=0), "b must be an integer >= 1"),
    (lambda: APoTConfig(b=4.0), "b must be an integer"),
    (lambda: APoTConfig(b=64, k=1, signed=True), "level"),
    (lambda: SignMagnitudeConfig(b=1), "b must be an integer >= 2"),
    (lambda: SignMagnitudeConfig(b=4, k=2), "divide"),
    (lambda: SignMagnitudeConfig(b=3, level_set="bogus"), "level_set"),
    (lambda: LearnableAPoTConfig(b=3, alpha_init=0.0), "alpha_init"),
    (lambda: LearnableAPoTConfig(b=3, alpha_init=float("nan")), "alpha_init"),
    (lambda: LearnableAPoTConfig(b=3, signed=False), "normalize and per_channel are for weights"),
    (lambda: UniformConfig(b=17), "at most 16"),
    (lambda: UniformConfig(b=1, signed=True), "b >= 2"),
])
def test_bad_configs_are_refused_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_configs_are_frozen_and_typed():
    cfg = APoTConfig(b=4, k=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.b = 3
    with pytest.raises(TypeError, match="signed must be a bool"):
        APoTConfig(b=4, k=2, signed=1)
    with pytest.raises(TypeError, match="must be one of APoTConfig"):
        check_config("apot")
    with pytest.raises(TypeError):
        APoTConfig(4, 2)  # keyword-only, like torchao's configs


def test_default_magnitude_widths():
    assert SignMagnitudeConfig(b=3).magnitude_k == 2 and SignMagnitudeConfig(b=4).magnitude_k == 1
    assert LearnableAPoTConfig(b=3).magnitude_k == 2 and LearnableAPoTConfig(b=4).magnitude_k == 1
    unsigned = dict(signed=False, normalize=False)
    assert LearnableAPoTConfig(b=4, **unsigned).magnitude_k == 2
    assert LearnableAPoTConfig(b=3, **unsigned).magnitude_k == 1


def test_scheme_strings_map_to_configs():
    assert from_scheme("apot", b=4) == APoTConfig(b=4, k=2)
    assert from_scheme("apot", b=3, signed=True) == APoTConfig(b=3, k=1, signed=True)
    assert from_scheme("uniform", b=8) == UniformConfig(b=8)
    assert from_scheme("sign-magnitude", b=3, level_set="paper") == SignMagnitudeConfig(b=3, level_set="paper")
    assert from_scheme("apot-paper", b=4, k=2) == LearnableAPoTConfig(
        b=4, k=2, signed=False, normalize=False, alpha_init=8.0)
    with pytest.raises(ValueError, match="scheme must be one of"):
        from_scheme("apot2", b=4)
