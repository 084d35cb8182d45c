"""Bad input, by class (issue 14 "Trust"): each gets a clear error naming the
bad value, or a documented defined result. Beside ``test_prototype_compat.py``
(1-element statistics/qparams) and the parity edge cases.

Classes covered here: sizes (level-table guard), dtypes (complex, wide
integer, float64 qparams), export (code dtype for every valid b, out-of-range
and NaN codes, int64 overflow of shift-add and ``LinearAPoT``).
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import apot_jax.export as jexport
import apot_jax.paper as jpaper
import apot_torch as at
import apot_torch.export as texport
import apot_torch.paper as tpaper
from apot_common.tables import check_export_codes, export_code_dtype, level_table, sign_magnitude_table

# --------------------------------------------------------------------------
# sizes


@pytest.mark.parametrize("b, k, signed", [(14000, 1, False), (10**9, 10**9, False), (2**40, 2, True), (20, 1, False),
                                          (10**12 + 1, 10**12, False)])
def test_huge_tables_are_refused_at_once_with_a_short_message(b, k, signed):
    start = time.perf_counter()
    with pytest.raises(ValueError, match="limit of 65536|limit is 65536") as info:
        if b == 10**12 + 1:
            sign_magnitude_table(b, k)
        else:
            level_table(b, k, signed)
    assert time.perf_counter() - start < 0.5
    assert len(str(info.value)) < 200, str(info.value)
    assert f"b={b}" in str(info.value) or f"b={b - 1}" in str(info.value)


def test_table_limit_itself():
    assert level_table(16, 1).num_levels == 2**16  # the largest unsigned table
    with pytest.raises(ValueError, match="117649 levels"):
        level_table(12, 2, True)
    with pytest.raises(ValueError, match="limit"):
        at.APoTObserver(b=17, k=1)
    with pytest.raises(ValueError, match="limit"):
        at.LinearAPoT(torch.rand(2, 2), 10**6, 1)


# --------------------------------------------------------------------------
# dtypes


def _torch_qparams():
    obs = at.APoTObserver(4, 2)
    obs(torch.tensor([-1.0, 1.0]))
    return obs.calculate_qparams(signed=False)


def test_complex_inputs_are_refused_in_torch():
    qp = _torch_qparams()
    z = torch.tensor([0.5 + 1j])
    for fn in (lambda: at.quantize_APoT(z, *qp), lambda: at.quant_dequant_APoT(z, *qp),
               lambda: at.fake_quantize_function.apply(z, *qp), lambda: at.APoTObserver(4, 2)(z),
               lambda: at.LinearAPoT(torch.rand(3, 2), 4, 2)(torch.ones(1, 2, dtype=torch.complex64))):
        with pytest.raises(TypeError, match="complex|floating|real"):
            fn()
    with pytest.raises(TypeError, match="real floating"):
        at.quantize_APoT(torch.ones(2), qp[0].to(torch.complex64), *qp[1:])


def test_complex_inputs_are_refused_in_jax():
    import apot_jax as aj

    qp = aj.calculate_qparams(jnp.float32(-1), jnp.float32(1), b=4, k=2)
    z = jnp.asarray([0.5 + 1j], jnp.complex64)
    for fn in (lambda: aj.quantize(z, qp), lambda: aj.quant_dequant(z, qp), lambda: aj.fake_quantize(z, qp),
               lambda: aj.observe(aj.init_observer_state(), z)):
        with pytest.raises(TypeError):
            fn()


def test_float64_qparams_work_when_exact_and_are_refused_otherwise():
    qp = _torch_qparams()
    x = torch.linspace(-2, 2, 41)
    as64 = tuple(t.double() if t.is_floating_point() else t for t in qp)
    assert torch.equal(at.quantize_APoT(x, *as64).int_repr(), at.quantize_APoT(x, *qp).int_repr())
    levels = qp[2].double().clone()
    levels[3] += 1e-12  # not a float32 value
    with pytest.raises(ValueError, match="quantization_levels of dtype torch.float64 holds"):
        at.quantize_APoT(x, qp[0], qp[1], levels, qp[3])
    with pytest.raises(TypeError, match="level_indices must be an integer"):
        at.quantize_APoT(x, qp[0], qp[1], qp[2], qp[3].float())
    with pytest.raises(ValueError, match="alpha must hold one value"):
        at.quantize_APoT(x, qp[0].repeat(2), *qp[1:])


def test_wide_integer_codes_are_range_checked_before_any_cast():
    """Codes beyond int32 are out of range (NaN), not wrapped onto a valid code."""
    qp = tpaper.sign_magnitude_qparams(torch.tensor(1.0), b=3, k=2)
    codes = torch.tensor([1, 2**32 + 1, -(2**40)], dtype=torch.int64)
    out = tpaper.dequantize(codes, qp)
    assert out[0] == tpaper.dequantize(torch.tensor([1], dtype=torch.int32), qp)[0] and torch.isnan(out[1:]).all()


# --------------------------------------------------------------------------
# export


@pytest.mark.parametrize("b, dtype", [(2, np.int8), (8, np.int8), (9, np.int16), (16, np.int16), (17, np.int32)])
def test_export_code_dtype_holds_every_code(b, dtype):
    assert export_code_dtype(b) == np.dtype(dtype)
    info = np.iinfo(dtype)
    assert info.min <= -(2 ** (b - 1)) and 2 ** (b - 1) - 1 <= info.max


def test_export_b17_codes_do_not_wrap_in_either_framework():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 8)).astype(np.float32)
    et = texport.export_weight(torch.from_numpy(w.T.copy()), torch.tensor(2.0), b=17, k=1, normalize=False)
    ej = jexport.export_kernel(jnp.asarray(w), jnp.float32(2.0), b=17, k=1, normalize=False)
    assert et.codes.dtype == torch.int32 and ej.codes.dtype == np.int32
    assert int(np.abs(ej.codes).max()) > 2**15  # would have wrapped in int16
    qp = tpaper.sign_magnitude_qparams(torch.tensor(2.0), b=17, k=1)
    expected = tpaper.quantize(torch.from_numpy(w.T.copy()), qp)
    assert torch.equal(et.codes, expected.to(torch.int32))
    np.testing.assert_array_equal(ej.codes, expected.numpy().T)


def _exported(framework: str, codes: np.ndarray):
    import dataclasses

    if framework == "torch":
        ex = texport.export_weight(torch.ones(2, 3), torch.tensor(1.0), b=3, k=2, normalize=False)
        return dataclasses.replace(ex, codes=torch.from_numpy(codes.astype(np.int8)))
    ex = jexport.export_kernel(jnp.ones((3, 2)), jnp.float32(1.0), b=3, k=2, normalize=False)
    return dataclasses.replace(ex, codes=codes.astype(np.int8).T.copy())


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("bad", [-4, 4, 7], ids=["nan-code", "just-out", "far-out"])
def test_out_of_range_and_nan_codes(framework, bad):
    """b=3: codes (-4, 4); -4 is the NaN code. dequantize gives NaN there,
    integer_weights and shift_add_matmul refuse (they have no NaN)."""
    codes = np.array([[1, 0, -1], [2, bad, 3]], np.int64)
    ex = _exported(framework, codes)
    if framework == "torch":
        deq = texport.dequantize_weight(ex)
        assert torch.isnan(deq[1, 1]) and not torch.isnan(deq[0]).any()
        fns = (lambda: texport.integer_weights(ex), lambda: texport.shift_add_matmul(torch.ones(1, 3, dtype=torch.int64), ex))
    else:
        deq = np.asarray(jexport.dequantize_kernel(ex))
        assert np.isnan(deq[1, 1]) and not np.isnan(deq[:, 0]).any()
        fns = (lambda: jexport.integer_weights(ex), lambda: jexport.shift_add_matmul(np.ones((1, 3), np.int64), ex))
    for fn in fns:
        with pytest.raises(ValueError, match=f"code {bad} at flat position"):
            fn()


def test_check_export_codes_names_the_code():
    check_export_codes(np.array([-3, 3]), 3)
    with pytest.raises(ValueError, match="code -4 at flat position 1"):
        check_export_codes(np.array([0, -4]), 3)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_shift_add_overflow_is_detected(framework):
    codes = np.array([[1, 2, 3], [0, -1, -2]], np.int64)
    ex = _exported(framework, codes)
    big = np.full((1, 3), 2**60, np.int64)
    small = np.full((1, 3), 1000, np.int64)
    if framework == "torch":
        with pytest.raises(ValueError, match="would overflow int64"):
            texport.shift_add_matmul(torch.from_numpy(big), ex)
        got = texport.shift_add_matmul(torch.from_numpy(small), ex).numpy()
        i, d = texport.integer_weights(ex)
        i = i.numpy().T
    else:
        with pytest.raises(ValueError, match="would overflow int64"):
            jexport.shift_add_matmul(big, ex)
        got = jexport.shift_add_matmul(small, ex)
        i, d = jexport.integer_weights(ex)
    np.testing.assert_array_equal(got, small @ i)  # exact below the bound


def test_linear_apot_detects_overflow_of_huge_activations():
    """1e30 used to be cast to int64 first (undefined, wraps) and then pass
    the check; int64's minimum made abs() wrap."""
    layer = at.LinearAPoT(torch.rand(3, 4), 4, 2)
    with pytest.raises(ValueError, match="max\\|activation\\| = 1e\\+30"):
        layer(torch.full((2, 4), 1e30))
    with pytest.raises(ValueError, match="too large"):
        layer(torch.full((2, 4), -(2**63), dtype=torch.int64))
    x = torch.full((2, 4), 2.0**40)
    assert torch.equal(layer(x), (x.double() @ layer.weight.double().T).float())
