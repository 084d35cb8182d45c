"""apot_jax.convert: Flax observer state to a torch ``state_dict`` and back
(layout, values against ``tests/reference.py``, round trips through the torch
modules bit for bit). Needs torch only for the round trips."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apot_jax.convert import TORCH_KEYS, flax_to_torch_state_dict, torch_state_dict_to_flax
from apot_jax.fake_quantize_module import APoTFakeQuantize, NNXAPoTFakeQuantize, set_flags
from tests.helpers import bits
from tests.jax.helpers import ref_fake_quant, sample
from tests.reference import reference_qparams


def _observed_linen_stats(b=4, k=2, signed=False):
    fq = APoTFakeQuantize(b, k, signed)
    x = sample(19, (64,), scale=2.0)
    variables = fq.init(jax.random.key(0), x)
    _, upd = fq.apply(variables, x, mutable=["quant_stats"])
    return fq, x, set_flags(upd["quant_stats"], observer=False)


# torch is a third-party extra (apot[torch]); apot_torch itself imports plainly
requires_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch (apot[torch])")


def test_flax_to_torch_layout_and_values_numpy_only():
    _, x, stats = _observed_linen_stats()
    sd = flax_to_torch_state_dict(stats, 4, 2, as_numpy=True)
    assert tuple(sd) == TORCH_KEYS
    assert sd["fake_quant_enabled"].dtype == np.uint8 and sd["fake_quant_enabled"].shape == (1,)
    assert list(sd["observer_enabled"]) == [0] and list(sd["fake_quant_enabled"]) == [1]
    alpha, gamma, levels, indices = reference_qparams(float(x.min()), float(x.max()), 4, 2, False)
    assert bits(sd["alpha"]) == bits(alpha) and bits(sd["gamma"]) == bits(gamma)
    np.testing.assert_array_equal(bits(sd["quantization_levels"]), bits(levels))
    assert sd["level_indices"].dtype == np.int32
    np.testing.assert_array_equal(sd["level_indices"], indices)
    assert sd["activation_post_process.min_val"].shape == () and sd["activation_post_process.min_val"] == x.min()
    back = torch_state_dict_to_flax(sd, b=4, k=2)
    for key in stats:
        assert back[key].dtype == stats[key].dtype and bits(back[key]) == bits(stats[key])
    with pytest.raises(ValueError, match="does not match"):
        torch_state_dict_to_flax(sd, b=4, k=2, signed=True)  # the stored levels are unsigned
    with pytest.raises(KeyError, match="min_val"):
        torch_state_dict_to_flax({k: v for k, v in sd.items() if "min_val" not in k})


def test_nnx_module_converts_like_linen():
    _, x, stats = _observed_linen_stats(4, 2, True)
    module = NNXAPoTFakeQuantize(4, 2, True)
    module(x)
    module.disable_observer()
    a = flax_to_torch_state_dict(module, 4, 2, True, as_numpy=True)
    b = flax_to_torch_state_dict(stats, 4, 2, True, as_numpy=True)
    for key in TORCH_KEYS:
        np.testing.assert_array_equal(np.atleast_1d(a[key]).view(np.uint8), np.atleast_1d(b[key]).view(np.uint8))


def test_unobserved_state_converts_to_a_fresh_torch_modules_buffers():
    stats = APoTFakeQuantize(4, 2).init(jax.random.key(0), sample(0))["quant_stats"]
    sd = flax_to_torch_state_dict(stats, 4, 2, as_numpy=True)
    assert np.isnan(sd["alpha"]) and np.isnan(sd["gamma"]) and np.isnan(sd["quantization_levels"]).all()
    np.testing.assert_array_equal(sd["level_indices"], np.zeros(16, np.int32))
    assert sd["activation_post_process.min_val"] == np.inf and sd["activation_post_process.max_val"] == -np.inf
    back = torch_state_dict_to_flax(sd, b=4, k=2)  # consistent with itself: no error
    assert back["min_val"] == np.inf and back["observer_enabled"] == 1


@requires_torch
@pytest.mark.parametrize("signed", [False, True])
def test_round_trip_with_the_torch_module_bitwise(signed):
    import torch

    from apot_torch.fake_quantize_module import APoTFakeQuantize as TorchAPoTFakeQuantize

    # A fresh module's state_dict (nothing observed) matches the converter's.
    untouched = TorchAPoTFakeQuantize(b=4, k=2, signed=signed).state_dict()
    stats0 = APoTFakeQuantize(4, 2, signed).init(jax.random.key(0), jnp.zeros(3))["quant_stats"]
    for key, value in flax_to_torch_state_dict(stats0, 4, 2, signed).items():
        assert value.dtype == untouched[key].dtype and value.shape == untouched[key].shape, key
        np.testing.assert_array_equal(
            np.atleast_1d(value.numpy()).view(np.uint8), np.atleast_1d(untouched[key].numpy()).view(np.uint8)
        )

    torch_fq = TorchAPoTFakeQuantize(b=4, k=2, signed=signed)
    calib = np.random.default_rng(20).normal(size=(8, 16)).astype(np.float32) * 1.7
    torch_fq(torch.from_numpy(calib))
    torch_fq.disable_observer()
    sd = torch_fq.state_dict()
    assert set(sd) == set(TORCH_KEYS)

    # torch -> flax: the linen module then fake-quantizes exactly like torch.
    stats = torch_state_dict_to_flax(sd, b=4, k=2, signed=signed)
    assert stats["observer_enabled"] == 0 and stats["fake_quant_enabled"] == 1
    x = np.random.default_rng(21).normal(size=(5, 40)).astype(np.float32) * 2.5
    y_torch = torch_fq(torch.from_numpy(x)).detach().numpy()
    y_flax = APoTFakeQuantize(4, 2, signed).apply({"quant_stats": stats}, jnp.asarray(x))
    np.testing.assert_array_equal(bits(y_flax), bits(y_torch))
    np.testing.assert_array_equal(bits(y_flax), bits(ref_fake_quant(x, calib.min(), calib.max(), 4, 2, signed)))

    # flax -> torch: a fresh torch module loads it and agrees bitwise.
    fresh = TorchAPoTFakeQuantize(b=4, k=2, signed=signed)
    fresh.load_state_dict(flax_to_torch_state_dict(stats, 4, 2, signed))
    for key, value in fresh.state_dict().items():
        assert value.dtype == sd[key].dtype and value.shape == sd[key].shape, key
        np.testing.assert_array_equal(
            np.atleast_1d(value.numpy()).view(np.uint8), np.atleast_1d(sd[key].numpy()).view(np.uint8)
        )
    np.testing.assert_array_equal(bits(fresh(torch.from_numpy(x)).detach().numpy()), bits(y_flax))


@requires_torch
def test_sign_magnitude_state_round_trip_with_the_torch_module():
    import torch

    from apot_jax.convert import SIGN_MAGNITUDE_TORCH_KEYS
    from apot_jax.fake_quantize_module import SignMagnitudeFakeQuantize
    from apot_torch.fake_quantize_module import SignMagnitudeFakeQuantize as TorchSignMagnitude

    fresh = TorchSignMagnitude(3, 2).state_dict()
    linen = SignMagnitudeFakeQuantize(3, 2)
    stats0 = linen.init(jax.random.key(0), jnp.zeros(3))["quant_stats"]
    sd0 = flax_to_torch_state_dict(stats0, 3, 2, sign_magnitude=True)
    assert tuple(sd0) == SIGN_MAGNITUDE_TORCH_KEYS == tuple(fresh)
    for key, value in sd0.items():  # nothing observed: a fresh module's buffers
        assert value.dtype == fresh[key].dtype and value.shape == fresh[key].shape, key
        np.testing.assert_array_equal(
            np.atleast_1d(value.numpy()).view(np.uint8), np.atleast_1d(fresh[key].numpy()).view(np.uint8)
        )

    x = np.random.default_rng(21).normal(size=(8, 16)).astype(np.float32)
    _, upd = linen.apply({"quant_stats": stats0}, x, mutable=["quant_stats"])
    stats = set_flags(upd["quant_stats"], observer=False)
    torch_fq = TorchSignMagnitude(3, 2)
    torch_fq.load_state_dict(flax_to_torch_state_dict(stats, 3, 2, sign_magnitude=True))  # strict
    assert bits(torch_fq.alpha) == bits(np.float32(np.abs(x).max()))
    probe = np.random.default_rng(22).normal(size=(50,)).astype(np.float32) * 2
    assert np.array_equal(bits(torch_fq(torch.from_numpy(probe))), bits(linen.apply({"quant_stats": stats}, probe)))
    back = torch_state_dict_to_flax(torch_fq.state_dict(), b=3, k=2, sign_magnitude=True)
    for key in stats:
        assert bits(back[key]) == bits(stats[key])
    tampered = {**torch_fq.state_dict(), "alpha": torch_fq.alpha * 2}
    with pytest.raises(ValueError, match="does not match"):
        torch_state_dict_to_flax(tampered, b=3, k=2, sign_magnitude=True)
    with pytest.raises(ValueError, match="signed"):
        flax_to_torch_state_dict(stats, 3, 2, True, sign_magnitude=True)


@requires_torch
def test_torch_state_dict_keys_unchanged_and_converted_flax_state_loads():
    import torch

    import apot_torch as at
    from tests.torch.helpers import observed

    fq = observed(at.APoTFakeQuantize(b=4, k=2))
    sd = fq.state_dict()
    assert tuple(sd) == TORCH_KEYS
    stats = torch_state_dict_to_flax(sd, b=4, k=2)
    fresh = at.APoTFakeQuantize(b=4, k=2)
    fresh.load_state_dict(flax_to_torch_state_dict(stats, 4, 2))
    assert torch.equal(fresh.quantization_levels, fq.quantization_levels)
    with pytest.raises(RuntimeError, match="level_indices: not the level order"):
        at.APoTFakeQuantize(b=4, k=1).load_state_dict(flax_to_torch_state_dict(stats, 4, 2))
