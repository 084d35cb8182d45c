"""Module parity: the Flax ``APoTFakeQuantize`` and ``SignMagnitudeFakeQuantize``
(linen, ``quant_stats`` collection, ``set_flags``) against torch's
(``FakeQuantizeBase``), stepped through the same batches with the observer
and fake-quant flags toggled; and ``LinearAPoT`` against codes computed by
``apot_jax``. Everything bitwise, for every pair of JAX and torch backends."""

from __future__ import annotations

import numpy as np
import pytest

from apot_parity import compare, compare_state, golden, numpy_dtype

jax = pytest.importorskip("jax", reason="module parity needs jax")
torch = pytest.importorskip("torch", reason="module parity needs torch")
import jax.numpy as jnp  # noqa: E402

import apot_jax as aj  # noqa: E402
import apot_jax.fake_quantize_module as jfq  # noqa: E402
import apot_torch.fake_quantize_module as tfq  # noqa: E402
import apot_torch.linear as tlin  # noqa: E402

CONFIGS = [(4, 2, False), (8, 2, False), (4, 2, True), (6, 3, False)]


def _batch(seed, shape, scale, dtype="float32", specials=False):
    n = int(np.prod(shape))
    x = ((golden.uniform(seed, n) * 2.2 - 1.0) * scale).astype(np.float32)
    if specials:
        x[:4] = [np.nan, np.inf, -np.inf, 1e-40]
    return x.reshape(shape).astype(numpy_dtype(dtype))


#: (observer enabled, fake quant enabled, input)
SCHEDULE = [
    (True, True, _batch(1, (32,), 1.0)),
    (True, False, _batch(2, (32,), 3.0)),
    (False, True, _batch(3, (32,), 5.0)),  # beyond alpha: clipped, gradient 0
    (False, False, _batch(4, (32,), 2.0)),
    (True, True, _batch(5, (32,), 0.5, specials=True)),
    (True, True, _batch(6, (32,), 4.0, "bfloat16")),
    (True, True, _batch(7, (32,), 6.0, "float16")),
    (False, True, _batch(8, (2, 3, 5), 7.0)),
    (True, True, np.zeros((0,), np.float32)),
    (True, True, _batch(9, (32,), 0.25)),
]


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"b{c[0]}k{c[1]}{'s' if c[2] else 'u'}")
def test_fake_quantize_module_parity(jax_backend, torch_backend, config, parity):
    b, k, signed = config
    tb = torch_backend
    t_mod = tfq.APoTFakeQuantize(b=b, k=k, signed=signed).to(tb.device)
    j_mod = jfq.APoTFakeQuantize(b, k, signed)

    @jax.jit
    def run(variables, x, dy):
        def apply(v):
            return j_mod.apply(variables, v, mutable=["quant_stats"])

        y, vjp, updates = jax.vjp(apply, x, has_aux=True)
        st = updates["quant_stats"]
        qp = aj.calculate_qparams(st["min_val"], st["max_val"], b=b, k=k, signed=signed)
        return y, vjp(dy)[0], updates, (qp.alpha, qp.gamma, qp.quantization_levels, qp.level_indices)

    with jax.default_device(jax_backend.device):
        variables = j_mod.init(jax.random.key(0), jnp.zeros((4,), jnp.float32))
        assert set(variables) == {"quant_stats"}
        for step, (observe, fake_quant, x) in enumerate(SCHEDULE):
            # torch
            (t_mod.enable_observer if observe else t_mod.disable_observer)()
            (t_mod.enable_fake_quant if fake_quant else t_mod.disable_fake_quant)()
            xt = tb.to_torch(x).requires_grad_(True)
            dy = golden.dy_pattern(x.size, x.dtype).reshape(x.shape)
            yt = t_mod(xt)
            yt.backward(tb.to_torch(dy))
            # flax
            variables = jfq.set_flags(variables, observer=observe, fake_quant=fake_quant)
            yj, gj, updates, qp = run(variables, jax.device_put(x, jax_backend.device),
                                  jax.device_put(dy, jax_backend.device))
            variables = {"quant_stats": updates["quant_stats"]}
            stats = variables["quant_stats"]
            obs = t_mod.activation_post_process
            case = f"module b={b} k={k} {'signed' if signed else 'unsigned'} step={step}"
            comps = [
                compare("output", np.asarray(yj), tb.to_numpy(yt)),
                compare("grad", np.asarray(gj), tb.to_numpy(xt.grad)),
                compare_state("min_val", np.asarray(stats["min_val"]), tb.to_numpy(obs.min_val)),
                compare_state("max_val", np.asarray(stats["max_val"]), tb.to_numpy(obs.max_val)),
                compare("observer_enabled", np.asarray(stats["observer_enabled"], np.int64),
                        np.asarray(int(t_mod.observer_enabled[0]))),
                compare("fake_quant_enabled", np.asarray(stats["fake_quant_enabled"], np.int64),
                        np.asarray(int(t_mod.fake_quant_enabled[0]))),
            ]
            # torch's qparam buffers = JAX's qparams of the same statistics
            comps += [
                compare(name, np.asarray(value), tb.to_numpy(getattr(t_mod, name)))
                for name, value in zip(("alpha", "gamma", "quantization_levels", "level_indices"), qp)
            ]
            parity.record(f"{jax_backend.name}~{tb.name}", case, comps)
            # the input is never modified; disabled fake quant is the identity
            assert _bits_equal(tb.to_numpy(xt), x)
            if not fake_quant:
                assert _bits_equal(np.asarray(yj), x)
            elif step == 0:
                assert not _bits_equal(np.asarray(yj), x)
    parity.assert_ok()
    assert len(parity.results) == 10 * len(SCHEDULE)


@pytest.mark.parametrize("b,k", [(3, 2), (2, 1), (5, 2), (8, 7)])
def test_sign_magnitude_module_parity(jax_backend, torch_backend, b, k, parity):
    """``SignMagnitudeFakeQuantize`` (observed alpha, the paper's signed
    levels) in both frameworks through the same schedule of flags and batches."""
    tb = torch_backend
    t_mod = tfq.SignMagnitudeFakeQuantize(b, k).to(tb.device)
    j_mod = jfq.SignMagnitudeFakeQuantize(b, k)

    @jax.jit
    def run(variables, x, dy):
        y, vjp, updates = jax.vjp(lambda v: j_mod.apply(variables, v, mutable=["quant_stats"]), x, has_aux=True)
        st = updates["quant_stats"]
        alpha = aj.observed_alpha(st["min_val"], st["max_val"])
        return y, vjp(dy)[0], updates, alpha, aj.sign_magnitude_qparams(alpha, b=b, k=k).quantization_levels

    with jax.default_device(jax_backend.device):
        variables = j_mod.init(jax.random.key(0), jnp.zeros((4,), jnp.float32))
        for step, (observe, fake_quant, x) in enumerate(SCHEDULE):
            (t_mod.enable_observer if observe else t_mod.disable_observer)()
            (t_mod.enable_fake_quant if fake_quant else t_mod.disable_fake_quant)()
            xt = tb.to_torch(x).requires_grad_(True)
            dy = golden.dy_pattern(x.size, x.dtype).reshape(x.shape)
            yt = t_mod(xt)
            yt.backward(tb.to_torch(dy))
            variables = jfq.set_flags(variables, observer=observe, fake_quant=fake_quant)
            yj, gj, updates, alpha, levels = run(
                variables, jax.device_put(x, jax_backend.device), jax.device_put(dy, jax_backend.device)
            )
            variables = {"quant_stats": updates["quant_stats"]}
            stats = variables["quant_stats"]
            obs = t_mod.activation_post_process
            comps = [
                compare("output", np.asarray(yj), tb.to_numpy(yt)),
                compare("grad", np.asarray(gj), tb.to_numpy(xt.grad)),
                compare_state("min_val", np.asarray(stats["min_val"]), tb.to_numpy(obs.min_val)),
                compare_state("max_val", np.asarray(stats["max_val"]), tb.to_numpy(obs.max_val)),
                compare("alpha", np.asarray(alpha), tb.to_numpy(t_mod.alpha)),
                compare("levels", np.asarray(levels), tb.to_numpy(t_mod.calculate_qparams().quantization_levels)),
            ]
            parity.record(f"{jax_backend.name}~{tb.name}", f"sign-magnitude module b={b} k={k} step={step}", comps)
            assert _bits_equal(tb.to_numpy(xt), x)
            if fake_quant and x.size and x.dtype == np.float32:
                # 2**b - 1 symmetric levels at most; a nonzero output keeps x's sign
                y = np.asarray(yj)
                finite = np.isfinite(y) & np.isfinite(x)
                assert np.unique(y[finite]).size <= 2**b - 1
                assert np.all((y[finite] == 0) | (np.sign(y[finite]) == np.sign(x[finite])))
                if step == 0:
                    assert (y < 0).any() and (y > 0).any()
    parity.assert_ok()
    assert len(parity.results) == 6 * len(SCHEDULE)


def test_unobserved_module(jax_backend, torch_backend):
    """Fake quant before any observation: torch raises, the Flax module gives
    NaN everywhere (documented in apot_jax.fake_quantize_module)."""
    t_mod = tfq.APoTFakeQuantize(b=4, k=2).to(torch_backend.device)
    t_mod.disable_observer()
    with pytest.raises(RuntimeError):
        t_mod(torch_backend.to_torch(np.ones(3, np.float32)))
    j_mod = jfq.APoTFakeQuantize(4, 2)
    with jax.default_device(jax_backend.device):
        variables = jfq.set_flags(j_mod.init(jax.random.key(0), jnp.ones(3)), observer=False)
        y, _ = j_mod.apply(variables, jnp.ones(3), mutable=["quant_stats"])
    assert np.isnan(np.asarray(y)).all()


@pytest.mark.parametrize("b,k", [(4, 2), (8, 2), (6, 3), (4, 1)])
def test_linear_apot(jax_backend, torch_backend, b, k, parity):
    weight = ((golden.uniform(100 + b * 10 + k, 6 * 20) - 0.3) * 2).astype(np.float32).reshape(6, 20)
    act = np.round((golden.uniform(200 + b, 9 * 20) - 0.2) * 60).astype(np.float32).reshape(9, 20)
    act[0, :3] = [2.7, -3.9, 0.5]  # truncated toward zero
    tb = torch_backend
    lin = tlin.LinearAPoT(tb.to_torch(weight), b, k)
    y_t = tb.to_numpy(lin(tb.to_torch(act)))
    with jax.default_device(jax_backend.device):
        state = aj.observe(aj.init_observer_state(), jnp.asarray(weight))
        qp = aj.calculate_qparams(state.min_val, state.max_val, b=b, k=k, signed=False)
        codes = aj.quantize(jnp.asarray(weight), qp)
        # exact integer product on the device: every partial sum < 2**24
        y_j = jnp.matmul(jnp.trunc(jnp.asarray(act)), codes.astype(jnp.float32).T,
                         precision=jax.lax.Precision.HIGHEST)
    assert float(np.abs(np.trunc(act)).sum(axis=1).max()) * (2**b - 1) < 2**24
    parity.check(f"{jax_backend.name}~{tb.name}", f"linear b={b} k={k}", [
        compare("weight_codes", np.asarray(codes), tb.to_numpy(lin.weight)),
        compare("alpha", np.asarray(qp.alpha), tb.to_numpy(lin.alpha)),
        compare("gamma", np.asarray(qp.gamma), tb.to_numpy(lin.gamma)),
        compare("levels", np.asarray(qp.quantization_levels), tb.to_numpy(lin.quantization_levels)),
        compare("output", np.asarray(y_j), y_t),
    ])
    # and the output is the exact integer product
    exact = (np.trunc(act).astype(np.int64) @ np.asarray(codes).astype(np.int64).T).astype(np.float32)
    assert _bits_equal(y_t, exact)
