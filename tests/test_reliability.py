"""Bad input, by class (issue 14 "Trust"): each gets a clear error naming the
bad value, or a documented defined result. Beside ``test_prototype_compat.py``
(1-element statistics/qparams) and the parity edge cases.

Classes covered here: sizes (level-table guard), bit-width ranges, dtypes
(complex, wide integer, float64 qparams, module casts), export (code dtype
for every valid b, out-of-range and NaN codes, int64 overflow of shift-add
and ``LinearAPoT``), state (torch ``state_dict`` and Flax ``quant_stats`` of
another configuration), files (damaged checkpoints) and the CLI's arguments.
"""

from __future__ import annotations

import re
import time

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import apot_jax.export as jexport
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


def test_wide_integer_codes_in_the_unsigned_dequantize_of_both_frameworks():
    """int64/uint32/uint64 codes beyond the table are NaN, not truncated onto
    a valid code (JAX without x64 would turn 2**32 + 1 into 1)."""
    import apot_jax as aj
    from apot_jax.quantizer import dequantize as jdequantize

    qp_j = aj.calculate_qparams(jnp.float32(-1), jnp.float32(1), b=4, k=2)
    qp_t = _torch_qparams()
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


def test_float64_and_one_element_qparams_in_torch_dequantize():
    alpha, gamma, levels, indices = _torch_qparams()
    codes = torch.tensor([0, 5, 15, -1])
    expected = at.APoTQuantizer(alpha, gamma, levels, indices).dequantize(at.TensorAPoT(None, codes))
    for qp in ((alpha.double(), gamma.double(), levels.double(), indices.long()),
               (alpha.reshape(1), gamma.reshape(1), levels.reshape(1, -1), indices)):  # fmt: skip
        q = at.APoTQuantizer(*qp)
        got = q.dequantize(at.TensorAPoT(q, codes))
        assert got.dtype == torch.float32 and torch.equal(got[:3], expected[:3]) and torch.isnan(got[3])
    with pytest.raises(ValueError, match="alpha must hold one value"):
        at.APoTQuantizer(alpha.repeat(2), gamma, levels, indices)


@pytest.mark.parametrize("cast", ["half", "bfloat16", "to_float16", "to_bfloat16"])
def test_module_casts_keep_statistics_and_qparams_float32(cast):
    from apot_torch.fake_quantize_module import LearnableAPoTFakeQuantize, SignMagnitudeFakeQuantize

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, generator=gen) * 1.3 + 0.1234567  # statistics with more than float16's bits
    modules = [at.APoTFakeQuantize(b=4, k=2), at.APoTFakeQuantize(b=4, k=2, signed=True),
               SignMagnitudeFakeQuantize(3, 2), LearnableAPoTFakeQuantize(3, 2, alpha_init=1.2345678),
               at.APoTObserver(4, 2)]  # fmt: skip
    for m in modules:
        m(x)
    seq = torch.nn.Sequential(torch.nn.Linear(3, 3), *modules)
    before = {key: value.clone() for key, value in seq.state_dict().items()}
    expected = [m(x).detach() for m in modules]
    {"half": lambda: seq.half(), "bfloat16": lambda: seq.bfloat16(), "to_float16": lambda: seq.to(torch.float16),
     "to_bfloat16": lambda: seq.to(torch.bfloat16)}[cast]()  # fmt: skip
    assert seq[0].weight.dtype in (torch.float16, torch.bfloat16)  # other modules are cast as usual
    after = seq.state_dict()
    for key, value in before.items():
        if key.startswith("0."):
            continue
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    assert modules[3].alpha.dtype == torch.float32 and isinstance(modules[3].alpha, torch.nn.Parameter)
    for m, y in zip(modules, expected):
        assert torch.equal(m(x).detach(), y), type(m).__name__  # same outputs for float32 input
    assert modules[0](x.half()).dtype == torch.float16
    meta = seq.to("meta")  # still moves device
    assert all(t.device.type == "meta" for t in meta.state_dict().values())


# --------------------------------------------------------------------------
# bit-width ranges


def test_bit_width_ranges_of_every_config():
    from apot_cli import digits as T
    from apot_jax.fake_quantize_module import UniformFakeQuantize, uniform_quantizer

    for kw, match in ((dict(bits=0), "bits must be None or an integer >= 1, got 0"), (dict(bits=4.0), "got 4.0"),
                      (dict(bits=4, k=0), "k must be an integer >= 1, got 0"), (dict(bits=4, k=3), "multiple of k"),
                      (dict(bits=17, k=1), "limit of 65536"),
                      (dict(bits=17, k=1, scheme="uniform"), "at most 16 bits, got b=17"),
                      (dict(bits=3, recipe="paper", weight_k=0), "weight_k must be an integer >= 1, got 0"),
                      (dict(bits=1, recipe="paper"), "b >= 2"),
                      (dict(bits=6, k=4, quantize="activations"), "multiple of k")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            T.QuantConfig(**kw)
    T.QuantConfig(bits=16, k=1, quantize="activations", scheme="uniform")
    for b, signed in ((0, True), (1, True), (17, False), (10**6, True)):
        with pytest.raises(ValueError, match=f"b={b}|got {b}"):
            uniform_quantizer(b, signed)
        with pytest.raises(ValueError):
            UniformFakeQuantize(b, signed)
    uniform_quantizer(16, False)
    uniform_quantizer(1, False)


# --------------------------------------------------------------------------
# state: a torch state_dict / Flax quant_stats of another configuration


def _observed(module, seed=0):
    module(torch.randn(64, generator=torch.Generator().manual_seed(seed)) * 2)
    return module


@pytest.mark.parametrize("other, named", [
    (dict(b=8, k=2), "b=4 (this module: 8)"),
    (dict(b=4, k=1), "k=2 (this module: 1)"),
    (dict(b=4, k=4), "k=2 (this module: 4)"),
    (dict(b=4, k=2, signed=True), "signed=False (this module: True)"),
])  # fmt: skip
def test_torch_state_dict_of_another_configuration_is_refused(other, named):
    import io

    sd = _observed(at.APoTFakeQuantize(b=4, k=2)).state_dict()
    buffer = io.BytesIO()
    torch.save(sd, buffer)  # the recorded configuration survives a file
    buffer.seek(0)
    target = at.APoTFakeQuantize(**other)
    before = {key: value.clone() for key, value in target.state_dict().items()}
    with pytest.raises(RuntimeError, match="saved for another configuration: " + re.escape(named)):
        target.load_state_dict(torch.load(buffer))
    for key, value in target.state_dict().items():  # nothing was half loaded
        assert torch.equal(value, before[key]) or (torch.isnan(value).all() and torch.isnan(before[key]).all()), key
    at.APoTFakeQuantize(b=4, k=2).load_state_dict(sd)  # its own configuration loads


@pytest.mark.parametrize("other", [dict(b=4, k=1), dict(b=4, k=4)])
def test_torch_plain_dict_of_another_configuration_is_refused_by_its_qparams(other):
    """Without the recorded configuration (a plain dict, a converted Flax
    state) the 16-level tables of (4, 1) and (4, 4) have the same shapes as
    (4, 2); their level order and gamma give them away."""
    sd = dict(_observed(at.APoTFakeQuantize(b=4, k=2)).state_dict())
    with pytest.raises(RuntimeError, match="level_indices: not the level order of the table for b=4"):
        at.APoTFakeQuantize(**other).load_state_dict(sd)
    at.APoTFakeQuantize(b=4, k=2).load_state_dict(sd)
    # unobserved: shapes only
    at.APoTFakeQuantize(**other).load_state_dict(dict(at.APoTFakeQuantize(b=4, k=2).state_dict()))
    levels = sd["quantization_levels"].clone()
    levels[3] = levels[4]
    with pytest.raises(RuntimeError, match="quantization_levels: not gamma times the level table"):
        at.APoTFakeQuantize(b=4, k=2).load_state_dict({**sd, "quantization_levels": levels})


def test_torch_state_dict_entries_name_themselves():
    sd = dict(_observed(at.APoTFakeQuantize(b=4, k=2)).state_dict())
    fresh = at.APoTFakeQuantize(b=4, k=2)
    with pytest.raises(RuntimeError, match='Missing key.*"gamma"'):
        fresh.load_state_dict({k: v for k, v in sd.items() if k != "gamma"})
    with pytest.raises(RuntimeError, match="size mismatch for quantization_levels"):
        fresh.load_state_dict(dict(_observed(at.APoTFakeQuantize(b=4, k=2, signed=True)).state_dict()))
    with pytest.raises(RuntimeError, match="activation_post_process.min_val of dtype torch.float64 holds"):
        fresh.load_state_dict({**sd, "activation_post_process.min_val": torch.tensor(0.1, dtype=torch.float64)})
    with pytest.raises(RuntimeError, match="level_indices: expected an integer tensor"):
        fresh.load_state_dict({**sd, "level_indices": sd["level_indices"].float()})
    with pytest.raises(RuntimeError, match="alpha: expected a real floating tensor"):
        fresh.load_state_dict({**sd, "alpha": torch.tensor(1)})
    exact = {**sd, "activation_post_process.min_val": sd["activation_post_process.min_val"].double()}
    fresh.load_state_dict(exact)  # float64 holding a float32 value: exact, accepted
    assert fresh.activation_post_process.min_val.dtype == torch.float32


def test_torch_other_modules_record_their_configuration():
    from apot_torch.fake_quantize_module import LearnableAPoTFakeQuantize, SignMagnitudeFakeQuantize

    sd = _observed(SignMagnitudeFakeQuantize(3, 2)).state_dict()
    with pytest.raises(RuntimeError, match="b=3 \\(this module: 5\\)"):
        SignMagnitudeFakeQuantize(5, 2).load_state_dict(sd)
    obs = at.APoTObserver(4, 2)
    obs(torch.ones(3))
    with pytest.raises(RuntimeError, match="k=2 \\(this module: 1\\)"):
        at.APoTObserver(4, 1).load_state_dict(obs.state_dict())
    sd = LearnableAPoTFakeQuantize(3, 2).state_dict()
    with pytest.raises(RuntimeError, match="scheme='sign-magnitude' \\(this module: 'unsigned'\\)"):
        LearnableAPoTFakeQuantize(3, 1, scheme="unsigned", normalize=False).load_state_dict(sd)
    with pytest.raises(RuntimeError, match="normalize=True \\(this module: False\\)"):
        LearnableAPoTFakeQuantize(3, 2, normalize=False).load_state_dict(sd)
    with pytest.raises(RuntimeError, match="size mismatch for alpha"):
        LearnableAPoTFakeQuantize(3, 2, channel_axis=0, channels=4).load_state_dict(dict(sd))
    seq = torch.nn.Sequential(at.APoTFakeQuantize(b=4, k=2))
    with pytest.raises(RuntimeError, match="0: state_dict saved for another configuration"):
        torch.nn.Sequential(at.APoTFakeQuantize(b=8, k=2)).load_state_dict(seq.state_dict())


def test_torch_state_dict_keys_unchanged_and_converted_flax_state_loads():
    from apot_jax.convert import TORCH_KEYS, flax_to_torch_state_dict, torch_state_dict_to_flax

    fq = _observed(at.APoTFakeQuantize(b=4, k=2))
    sd = fq.state_dict()
    assert tuple(sd) == TORCH_KEYS
    stats = torch_state_dict_to_flax(sd, b=4, k=2)
    fresh = at.APoTFakeQuantize(b=4, k=2)
    fresh.load_state_dict(flax_to_torch_state_dict(stats, 4, 2))
    assert torch.equal(fresh.quantization_levels, fq.quantization_levels)
    with pytest.raises(RuntimeError, match="level_indices: not the level order"):
        at.APoTFakeQuantize(b=4, k=1).load_state_dict(flax_to_torch_state_dict(stats, 4, 2))


def test_flax_quant_stats_of_another_configuration_are_refused():
    import jax

    from apot_jax.fake_quantize_module import APoTFakeQuantize, LearnableAPoTFakeQuantize

    x = jnp.linspace(-2, 2, 12).reshape(3, 4)
    module = APoTFakeQuantize(4, 2)
    _, updates = module.apply(module.init(jax.random.key(0), x), x, mutable=["quant_stats"])
    stats = dict(updates["quant_stats"])
    module.apply({"quant_stats": stats}, x)
    for bad, match, error in (
        ({"observer_enabled": jnp.ones((1,), jnp.int32)}, "observer_enabled must be a scalar", ValueError),
        ({"min_val": jnp.zeros(4)}, "min_val must be a scalar \\(shape \\(\\)\\), got shape \\(4,\\)", ValueError),
        ({"quantization_levels": jnp.zeros(49)}, "unexpected entries \\['quantization_levels'\\]", ValueError),
        ({"max_val": jnp.int32(1)}, "max_val must be a real floating scalar", TypeError),
    ):  # fmt: skip
        with pytest.raises(error, match="quant_stats of .*" + match):
            module.apply({"quant_stats": {**stats, **bad}}, x)
    with pytest.raises(ValueError, match="missing entries \\['max_val'\\]"):
        module.apply({"quant_stats": {k: v for k, v in stats.items() if k != "max_val"}}, x, mutable=["quant_stats"])
    learn = LearnableAPoTFakeQuantize(3, 2, normalize=False, channel_axis=-1)
    params = learn.init(jax.random.key(0), x)
    with pytest.raises(Exception, match='"alpha".*shape \\(5,\\).*shape \\(4,\\)'):
        learn.apply(params, jnp.zeros((3, 5)))  # Flax's own check names the parameter


def test_nnx_state_of_another_configuration_is_refused():
    from apot_jax.fake_quantize_module import NNXAPoTFakeQuantize, NNXLearnableAPoTFakeQuantize, QuantStat

    x = jnp.linspace(-2, 2, 12).reshape(3, 4)
    module = NNXAPoTFakeQuantize(4, 2)
    module(x)
    module.min_val = QuantStat(jnp.zeros(4))
    with pytest.raises(ValueError, match="NNXAPoTFakeQuantize QuantStat: min_val must be a scalar"):
        module(x)
    learn = NNXLearnableAPoTFakeQuantize(3, 2, normalize=False, channel_axis=-1, channels=4)
    learn(x)
    with pytest.raises(ValueError, match="alpha has shape \\(4,\\), expected \\(5,\\)"):
        learn(jnp.zeros((3, 5)))


# --------------------------------------------------------------------------
# files


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    import jax
    import optax

    from apot_cli import digits as D
    from apot_jax import train as T

    model = D.MLP(hidden=(8,), quant=D.QuantConfig(bits=4, k=2))
    state = T.init_state(model, optax.adam(1e-3), jax.random.key(0), jnp.zeros((2, 64)))
    path = tmp_path_factory.mktemp("ckpt") / "saved"
    T.save_checkpoint(path, state)
    return path, state


def _damaged_copy(saved, tmp_path, rel, how):
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(saved, copy)
    if rel is None:  # the largest array data file
        rel = max((p for p in copy.rglob("*") if p.is_file() and p.parent.name == "d"), key=lambda p: p.stat().st_size)
        rel = rel.relative_to(copy)
    file = copy / rel
    data = file.read_bytes()
    if how == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        file.write_bytes(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :])
    else:
        file.unlink()
    return copy, str(rel)


@pytest.mark.parametrize("rel, how, named", [("_METADATA", "truncate", "_METADATA is not valid JSON"),
                                             ("_METADATA", "flip", "_METADATA is not valid JSON"),
                                             ("_METADATA", "delete", "_METADATA is missing"),
                                             ("manifest.ocdbt", "truncate", "cannot decode .*manifest.ocdbt"),
                                             (None, "truncate", "array params\\.dense\\d\\.kernel"),
                                             (None, "delete", "array params\\.dense\\d\\.kernel")])  # fmt: skip
def test_damaged_checkpoint_names_the_damaged_file(saved_checkpoint, tmp_path, rel, how, named):
    from apot_jax import train as T

    saved, state = saved_checkpoint
    copy, _ = _damaged_copy(saved, tmp_path, rel, how)
    with pytest.raises(ValueError, match=f"checkpoint {copy} is damaged.*{named}"):
        T.restore_checkpoint(copy, state)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.restore_checkpoint(tmp_path / "nowhere", state)


# --------------------------------------------------------------------------
# CLI: every argument checked before any work


@pytest.mark.parametrize("argv, named", [(["--epochs", "0"], "--epochs: must be >= 1, got 0"),
                                         (["--epochs", "-3"], "--epochs: must be >= 1, got -3"),
                                         (["--qat-epochs", "0"], "--qat-epochs: must be >= 1"),
                                         (["--batch-size", "0"], "--batch-size: must be >= 1"),
                                         (["--hidden", "32", "0"], "--hidden: every width must be >= 1, got 0"),
                                         (["--lr", "nan"], "--lr: must be a finite number > 0, got nan"),
                                         (["--lr", "inf"], "--lr: must be a finite number > 0, got inf"),
                                         (["--qat-lr=-1e-3"], "--qat-lr: must be a finite number > 0"),
                                         (["--lr", "0"], "--lr: must be a finite number > 0"),
                                         (["--seed", "-1"], "--seed: must be in"),
                                         (["--timing-steps", "0"], "--timing-steps: must be >= 1"),
                                         (["--bits", "0"], "--bits/--k: --bits 0"),
                                         (["--bits", "17", "--k", "1"], "--bits/--k: --bits 17 with --k 1: .*limit"),
                                         (["--recipe", "paper", "--paper-bits", "40"], "--paper-bits: 40"),
                                         (["--plot"], "--plot: needs --out")])  # fmt: skip
def test_qat_cli_refuses_each_bad_argument_before_any_work(argv, named, capsys, monkeypatch):
    from apot_cli import digits as D
    from apot_cli.main import main

    monkeypatch.setattr(D, "load_digits_split", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as info:
        main(["qat", "--no-progress", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: apot qat" in err and re.search("error: argument " + named, err), err


def test_qat_cli_refuses_an_unwritable_out(tmp_path, capsys, monkeypatch):
    import os

    from apot_cli import digits as D
    from apot_cli.main import main

    monkeypatch.setattr(D, "load_digits_split", lambda *a, **k: pytest.fail("work started"))
    a_file = tmp_path / "file"
    a_file.write_text("")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # root may write anywhere: the permission answer is faked
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    cases = [(a_file, "exists and is not a directory"), (a_file / "sub", "is not a directory"),
             (locked / "run", "is not writable")]  # fmt: skip
    for out, named in cases:
        with pytest.raises(SystemExit) as info:
            main(["qat", "--out", str(out)])
        assert info.value.code == 2 and re.search("argument --out: .*" + named, capsys.readouterr().err)
