"""Export and integer codes in both frameworks: b=17 codes do not wrap,
out-of-range and NaN codes give the same defined result, shift-add overflow
is detected, and wide integer codes are range-checked before any cast."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="export parity needs jax")
torch = pytest.importorskip("torch", reason="export parity needs torch")
import jax.numpy as jnp  # noqa: E402

import apot_jax.export as jexport  # noqa: E402
import apot_torch as at  # noqa: E402
import apot_torch.export as texport  # noqa: E402
import apot_torch.paper as tpaper  # noqa: E402
from tests.torch.helpers import observed_qparams  # noqa: E402


def _exported(framework: str, codes: np.ndarray):
    import dataclasses

    if framework == "torch":
        ex = texport.export_weight(torch.ones(2, 3), torch.tensor(1.0), b=3, k=2, normalize=False)
        return dataclasses.replace(ex, codes=torch.from_numpy(codes.astype(np.int8)))
    ex = jexport.export_kernel(jnp.ones((3, 2)), jnp.float32(1.0), b=3, k=2, normalize=False)
    return dataclasses.replace(ex, codes=codes.astype(np.int8).T.copy())


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
        fns = (
            lambda: texport.integer_weights(ex),
            lambda: texport.shift_add_matmul(torch.ones(1, 3, dtype=torch.int64), ex),
        )
    else:
        deq = np.asarray(jexport.dequantize_kernel(ex))
        assert np.isnan(deq[1, 1]) and not np.isnan(deq[:, 0]).any()
        fns = (lambda: jexport.integer_weights(ex), lambda: jexport.shift_add_matmul(np.ones((1, 3), np.int64), ex))
    for fn in fns:
        with pytest.raises(ValueError, match=f"code {bad} at flat position"):
            fn()


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


def test_wide_integer_codes_in_the_unsigned_dequantize_of_both_frameworks():
    """int64/uint32/uint64 codes beyond the table are NaN, not truncated onto
    a valid code (JAX without x64 would turn 2**32 + 1 into 1)."""
    import apot_jax as aj
    from apot_jax.quantizer import dequantize as jdequantize

    qp_j = aj.calculate_qparams(jnp.float32(-1), jnp.float32(1), b=4, k=2)
    qp_t = observed_qparams()
    quantizer = at.APoTQuantizer(*qp_t)
    one_t = float(quantizer.dequantize(at.TensorAPoT(quantizer, torch.tensor([1])))[0])
    one_j = float(jdequantize(np.array([1], np.int32), qp_j)[0])
    assert one_t == one_j
    for codes in (np.array([1, 2**32 + 1, -(2**40), 16], np.int64), np.array([1, 2**32 + 1, 2**64 - 1, 16], np.uint64),
                  np.array([1, 2**32 - 1, 16, 17], np.uint32)):  # fmt: skip
        given = codes.copy()
        got = np.asarray(jdequantize(codes, qp_j))
        assert got[0] == one_j and np.isnan(got[1:]).all(), (codes.dtype, got)
        np.testing.assert_array_equal(codes, given)  # the caller's codes are not written
        out = quantizer.dequantize(at.TensorAPoT(quantizer, torch.from_numpy(codes.copy())))
        assert out[0] == one_t and torch.isnan(out[1:]).all(), (codes.dtype, out)
    assert np.isnan(jdequantize(np.int64(2**32 + 1), qp_j)) and np.isnan(jdequantize([1, 2**32 + 1], qp_j)[1])
    with pytest.raises(TypeError, match="integer codes"):
        jdequantize(np.array([1.0]), qp_j)
    with pytest.raises(TypeError, match="integer codes, got dtype torch.float32"):
        quantizer.dequantize(at.TensorAPoT(quantizer, torch.tensor([1.7])))  # was truncated to code 1
