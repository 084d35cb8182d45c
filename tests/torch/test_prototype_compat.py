"""PyTorch's own unit tests of its APoT prototype, ported to ``apot_torch``.

The prototype (``torch/ao/quantization/experimental/``) came with tests in
``test/quantization/core/experimental/``: ``test_nonuniform_observer.py``,
``test_quantizer.py``, ``test_fake_quantize.py``, ``test_linear.py`` and
``test_quantized_tensor.py`` (their last versions before the folder was
deleted). Each test below carries the name of the one it ports and makes
the same assertions, written anew for pytest, with fixed seeds instead of
``random``. Where ``apot_torch`` deliberately differs from the prototype
(``docs/numerics.md`` section 7), the test is named ``..._difference`` and
asserts what ``apot_torch`` does instead, and why, in its docstring:

* ``b = 0`` / ``k = 0``: refused with ``ValueError`` at construction; the
  prototype built the observer and raised ``AssertionError`` in
  ``calculate_qparams``.
* ``gradcheck`` of the fake quant: a straight-through estimator is not the
  derivative of its step-function forward, so ``gradcheck`` must fail (the
  prototype's backward raised before ``gradcheck`` could compare anything);
  the backward is checked against ``clamp`` instead.
* equal levels of the signed table: the prototype's unstable ``torch.sort``
  left their order open; apot keeps the lower code first
  (``test_signed_equal_levels_order_difference``, beside the ported
  ``test_calculate_qparams_signed``, which checks only uniqueness).
* the prototype's ``test_forward`` of ``APoTFakeQuantize`` passes a second
  argument that its own ``forward(X)`` does not take (a ``TypeError`` on the
  prototype too); ported with ``forward(X)``.

Also here: the prototype's statistics-as-assignment idiom
(``obs.min_val = torch.tensor([0.0])``) with 1-element and 0-d values, the
``apot_utils`` functions and ``quant_levels_visualization``.

``PORTED`` lists every prototype test and how it is ported; ``python -m
pytest tests/torch/test_prototype_compat.py -q`` runs them (the count:
``test_ported_inventory``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.ao.quantization.observer import MinMaxObserver
from torch.autograd import gradcheck

import apot_torch as at
from apot_torch.apot_utils import apot_to_float, float_to_apot, quant_dequant_util
from apot_torch.fake_quantize_module import APoTFakeQuantize
from apot_torch.observer import APoTObserver
from apot_torch.quantizer import APoTQuantizer, TensorAPoT, dequantize_APoT, quantize_APoT

#: prototype file -> {prototype test: "same" | "difference"}
PORTED = {
    "test_nonuniform_observer.py": {
        "test_calculate_qparams_invalid": "difference",
        "test_calculate_qparams_2terms": "same",
        "test_calculate_qparams_3terms": "same",
        "test_calculate_qparams_signed": "same",
        "test_calculate_qparams_k1": "same",
        "test_forward": "same",
    },
    "test_quantizer.py": {
        "test_quantize_APoT_rand_k1": "same",
        "test_quantize_APoT_k2": "same",
        "test_dequantize_quantize_rand_b4": "same",
        "test_dequantize_quantize_rand_b6": "same",
        "test_dequantize_dim": "same",
        "test_q_apot_alpha": "same",
    },
    "test_fake_quantize.py": {
        "test_fake_calc_qparams": "same",
        "test_forward": "difference",
        "test_forward_exception": "same",
        "test_backward": "difference",
    },
    "test_linear.py": {"test_linear_APoT_k1": "same", "test_linear_APoT_k2": "same"},
    "test_quantized_tensor.py": {"test_int_repr": "same"},
}

SEEDS = range(8)


def _rand(seed: int, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def _size(seed: int, lo: int = 1, hi: int = 20) -> int:
    return int(torch.randint(lo, hi + 1, (), generator=torch.Generator().manual_seed(1000 + seed)))


def _observer_with(b: int, k: int, min_val, max_val) -> APoTObserver:
    obs = APoTObserver(b=b, k=k)
    obs.min_val = torch.tensor(min_val)
    obs.max_val = torch.tensor(max_val)
    return obs


def _expected_gamma(n: int) -> float:
    return 1 / sum(2.0**-i for i in range(n))


# --------------------------------------------------------------------------
# test_nonuniform_observer.py


def test_observer_calculate_qparams_invalid_difference():
    """Prototype: ``APoTObserver(b=0, k=0)`` builds, ``calculate_qparams``
    raises ``AssertionError``. apot refuses the configuration when it is made
    (docs/numerics.md section 1), naming the bad value."""
    with pytest.raises(ValueError, match="b=0|k=0|b must|k must"):
        APoTObserver(b=0, k=0)
    with pytest.raises(ValueError, match="k"):
        APoTObserver(b=4, k=0)


@pytest.mark.parametrize("b, k, signed, size",
                         [(4, 2, False, 16), (6, 2, False, 64), (4, 2, True, 49), (6, 1, False, 64)],
                         ids=["2terms", "3terms", "signed", "k1"])
def test_observer_calculate_qparams(b, k, signed, size):
    """test_calculate_qparams_2terms / _3terms / _signed / _k1, with the
    statistics assigned as 1-element tensors (the prototype's idiom)."""
    obs = _observer_with(b, k, [0.0], [1.0])
    alpha, gamma, quantization_levels, level_indices = obs.calculate_qparams(signed=signed)
    assert alpha == torch.max(-torch.tensor([0.0]), torch.tensor([1.0]))
    assert gamma == _expected_gamma(b // k)
    assert len(quantization_levels) == size
    assert len(level_indices) == size
    assert len(set(level_indices.tolist())) == len(level_indices)
    if signed:
        values = quantization_levels.tolist()
        assert all(-v in values for v in values)


def test_signed_equal_levels_order_difference():
    """The prototype ordered the levels with ``torch.sort`` (unstable), so
    among equal levels of the signed table (49 combinations, 39 values for
    b=4, k=2) the order of the codes was unspecified. apot sorts by the exact
    sums, stably: equal levels keep the lower code first (numerics 3, 7)."""
    obs = _observer_with(4, 2, [0.0], [1.0])
    _, _, levels, indices = obs.calculate_qparams(signed=True)
    values, idx = levels.tolist(), indices.tolist()
    assert len(set(values)) == 39
    runs = 0
    for p in range(1, len(values)):
        if values[p] == values[p - 1]:
            runs += 1
            assert idx[p] > idx[p - 1]
    assert runs == 49 - 39


def test_observer_forward():
    obs = APoTObserver(b=4, k=2)
    x = torch.tensor([0.0, -100.23, -37.18, 3.42, 8.93, 9.21, 87.92])
    out = obs.forward(x)
    alpha, _, _, _ = obs.calculate_qparams(signed=True)
    assert out is x
    assert alpha == torch.max(-torch.min(x), torch.max(x))
    assert float(alpha) == np.float32(100.23)


# --------------------------------------------------------------------------
# test_quantizer.py


@pytest.mark.parametrize("seed", SEEDS)
def test_quantize_APoT_rand_k1(seed):  # noqa: N802 (prototype name)
    """k = 1 is uniform: the codes equal ``quantize_per_tensor`` with the
    MinMaxObserver's qparams (quint8)."""
    x = 1000 * _rand(seed, _size(seed))
    obs = APoTObserver(b=8, k=1)
    obs(x)
    qtensor = quantize_APoT(x, *obs.calculate_qparams(signed=False))
    uniform = MinMaxObserver()
    uniform(x)
    scale, zero_point = uniform.calculate_qparams()
    expected = torch.quantize_per_tensor(x, scale, zero_point, torch.quint8).int_repr()
    assert torch.equal(qtensor.data.int(), expected.int())


def test_quantize_APoT_k2():  # noqa: N802
    x = torch.tensor([0, 0.0215, 0.1692, 0.385, 1, 0.0391])
    obs = APoTObserver(b=4, k=2)
    obs.forward(x)
    qtensor = quantize_APoT(x, *obs.calculate_qparams(signed=False))
    # nearest of 0, 1/48, 1/24, 1/16, 1/12, 1/8, 1/6, 3/16, 1/4, 1/3, 3/8, ...
    # (codes 0, 3, 12, 15, 2, 14, 8, 11, 10, 1, 13, ...)
    assert torch.equal(qtensor.data.int(), torch.tensor([0, 3, 8, 13, 5, 12], dtype=torch.int32))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("b, k", [(4, 2), (12, 4)], ids=["b4", "b6"])
def test_dequantize_quantize_rand(b, k, seed):
    """test_dequantize_quantize_rand_b4 / _b6: quantize, dequantize and
    quantize again gives the same codes."""
    x = 1000 * _rand(seed, _size(seed))
    obs = APoTObserver(b, k)
    obs.forward(x)
    qparams = obs.calculate_qparams(signed=False)
    original = quantize_APoT(x, *qparams)
    codes = torch.clone(original.data).int()
    again = quantize_APoT(dequantize_APoT(original), *qparams)
    assert torch.equal(codes, again.data.int())


@pytest.mark.parametrize("seed", SEEDS)
def test_dequantize_dim(seed):
    shape = tuple(_size(seed * 3 + i) for i in range(3))
    x = 1000 * _rand(seed, *shape)
    obs = APoTObserver(4, 2)
    obs.forward(x)
    original = quantize_APoT(x, *obs.calculate_qparams(signed=False))
    assert dequantize_APoT(original).size() == original.data.size() == shape


def test_q_apot_alpha():
    with pytest.raises(NotImplementedError):
        APoTQuantizer.q_apot_alpha(object())  # the prototype calls it unbound, with the TestCase


# --------------------------------------------------------------------------
# test_fake_quantize.py


def test_fake_calc_qparams():
    fake = APoTFakeQuantize(b=4, k=2)
    fake.activation_post_process.min_val = torch.tensor([0.0])
    fake.activation_post_process.max_val = torch.tensor([1.0])
    alpha, gamma, quantization_levels, level_indices = fake.calculate_qparams(signed=False)
    expected = _observer_with(4, 2, [0.0], [1.0]).calculate_qparams(signed=False)
    assert alpha == expected[0]
    assert torch.equal(gamma, expected[1])
    assert torch.equal(quantization_levels, expected[2])
    assert torch.equal(level_indices, expected[3])
    assert float(gamma) == np.float32(2 / 3)


@pytest.mark.parametrize("seed", SEEDS)
def test_fake_quantize_forward_difference(seed):
    """The prototype's test calls ``apot_fake.forward(X, False)``; its own
    ``forward(X)`` takes no second argument (a TypeError there too), so this
    port calls ``forward(X)``. Same assertion: equal to quantize, dequantize."""
    x = 1000 * _rand(seed, 20)
    obs = APoTObserver(b=4, k=2)
    obs.forward(x)
    qparams = obs.calculate_qparams(signed=False)
    fake = APoTFakeQuantize(b=4, k=2)
    fake.enable_observer()
    fake.enable_fake_quant()
    y = fake.forward(torch.clone(x))
    assert torch.equal(y, dequantize_APoT(quantize_APoT(x, *qparams)))
    with pytest.raises(TypeError):
        fake.forward(torch.clone(x), False)


def test_fake_quantize_forward_exception():
    fake = APoTFakeQuantize(b=4, k=2)
    fake.disable_observer()
    fake.enable_fake_quant()
    with pytest.raises(RuntimeError, match="no qparams"):
        fake.forward(1000 * _rand(0, 20))


def test_fake_quantize_backward_difference():
    """The prototype gradchecks ``fake_quantize_function`` (its backward
    raised before any comparison). A straight-through estimator is not the
    derivative of its step-function forward, so gradcheck must fail here;
    what the backward is, the derivative of ``clamp(x, -alpha, alpha)``, does
    pass gradcheck (docs/numerics.md section 6)."""
    x = torch.randn(20, dtype=torch.double, generator=torch.Generator().manual_seed(5), requires_grad=True)
    obs = APoTObserver(b=4, k=2)
    obs(x)
    alpha, gamma, levels, indices = obs.calculate_qparams(signed=False)
    with pytest.raises(Exception, match="Jacobian mismatch"):
        gradcheck(at.fake_quantize_function.apply, (x, alpha, gamma, levels, indices), atol=1e-4)

    class Clamp(torch.autograd.Function):  # forward clamp, backward the fake quant's
        @staticmethod
        def forward(ctx, v):
            ctx.save_for_backward(v)
            return v.clamp(-float(alpha), float(alpha))

        @staticmethod
        def backward(ctx, dy):
            (v,) = ctx.saved_tensors
            with torch.enable_grad():
                leaf = v.detach().requires_grad_(True)
                out = at.fake_quantize_function.apply(leaf, alpha, gamma, levels, indices)
                (dx,) = torch.autograd.grad(out, leaf, dy)
            return dx

    away = x.detach().clone()
    away[(away.abs() - float(alpha)).abs() < 1e-3] += 0.01  # no finite difference across +-alpha
    assert gradcheck(Clamp.apply, (away.requires_grad_(True),), atol=1e-6)


# --------------------------------------------------------------------------
# test_linear.py


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k, shape", [(1, (4, 4)), (2, (5, 3))], ids=["k1", "k2"])
def test_linear_APoT(k, shape, seed):  # noqa: N802
    """test_linear_APoT_k1 / _k2: equal to ``nn.Linear`` whose weight is the
    codes as floats (the prototype makes a ``Linear(4, 4)`` and replaces its
    weight, so its shape is the codes')."""
    g = torch.Generator().manual_seed(seed)
    weight = 1000 * torch.rand(*shape, generator=g)
    activation = torch.randint(0, 255, shape, generator=g, dtype=torch.float)
    layer = at.LinearAPoT(weight, 8, k)
    result = layer(activation)
    fp = torch.nn.Linear(4, 4, bias=False)
    fp.weight = torch.nn.Parameter(layer.weight.type(torch.FloatTensor))
    assert torch.equal(result, fp(activation).data)


# --------------------------------------------------------------------------
# test_quantized_tensor.py


def test_int_repr():
    x = torch.tensor([0, 0.0215, 0.1692, 0.385, 1, 0.0391])
    obs = APoTObserver(b=4, k=2)
    obs.forward(x)
    qparams = obs.calculate_qparams(signed=False)
    qtensor = quantize_APoT(x, *qparams)
    assert isinstance(qtensor, TensorAPoT)
    assert torch.equal(qtensor.int_repr().int(), torch.tensor([0, 3, 8, 13, 5, 12], dtype=torch.int32))


# --------------------------------------------------------------------------
# beyond the prototype's tests: its idioms and names


def test_ported_inventory():
    assert sum(len(v) for v in PORTED.values()) == 19
    assert [n for v in PORTED.values() for n, how in v.items() if how == "difference"] == [
        "test_calculate_qparams_invalid", "test_forward", "test_backward"
    ]


@pytest.mark.parametrize("assign", [torch.tensor, lambda v: torch.tensor(v).reshape(()),
                                    lambda v: torch.tensor(v, dtype=torch.float64),
                                    lambda v: torch.tensor(v).reshape(1, 1)],
                         ids=["1-element", "0-d", "float64", "1x1"])
def test_one_element_statistics_act_as_scalars(assign):
    """1-element statistics give the 0-d qparams; quantizing with them works
    (it used to raise inside torch.searchsorted)."""
    obs = APoTObserver(b=4, k=2)
    lo, hi = (
        assign([-0.5]) if assign is torch.tensor else assign(-0.5),
        assign([1.0]) if assign is torch.tensor else assign(1.0),
    )
    obs.min_val, obs.max_val = lo, hi
    assert obs.min_val.shape == () and obs.min_val.dtype == torch.float32
    assert obs.min_val.data_ptr() != lo.data_ptr()
    alpha, gamma, levels, indices = obs.calculate_qparams(signed=False)
    assert alpha.shape == gamma.shape == () and levels.shape == (16,)
    x = torch.tensor([0.25, -3.0, 0.9])
    assert at.quantize_APoT(x, *obs.calculate_qparams(signed=False)).int_repr().tolist() == [10, 0, 5]
    obs(torch.tensor([-7.0]))
    assert float(obs.min_val) == -7.0
    assert lo.reshape(-1).tolist() == [-0.5]  # the caller's tensor is untouched
    assert set(obs.state_dict()) == {"min_val", "max_val"}


def test_one_element_qparams_act_as_scalars():
    """qparams of shapes ``(1,)`` and ``(1, N)`` (the prototype's) quantize,
    dequantize and fake-quantize exactly as the 0-d ones do, gradient included."""
    obs = APoTObserver(b=4, k=2)
    obs(torch.tensor([-1.0, 2.0]))
    qp = obs.calculate_qparams(signed=False)
    wide = (qp[0].reshape(1), qp[1].reshape(1), qp[2].reshape(1, -1), qp[3])
    x = torch.linspace(-3, 3, 101)
    assert torch.equal(at.quantize_APoT(x, *wide).int_repr(), at.quantize_APoT(x, *qp).int_repr())
    assert torch.equal(at.quant_dequant_APoT(x, *wide), at.quant_dequant_APoT(x, *qp))
    for xs in (x, torch.tensor(0.7)):
        a, b = xs.clone().requires_grad_(True), xs.clone().requires_grad_(True)
        ya, yb = at.fake_quantize_function.apply(a, *wide), at.fake_quantize_function.apply(b, *qp)
        ya.sum().backward()
        yb.sum().backward()
        assert ya.shape == yb.shape == xs.shape and torch.equal(ya, yb) and torch.equal(a.grad, b.grad)


def test_apot_utils_follow_the_prototype_scan():
    """float_to_apot / quant_dequant_util / apot_to_float against the
    prototype's strict-``<`` scan, written out here, on every level,
    midpoint and its float32 neighbours."""
    obs = _observer_with(4, 2, [0.0], [1.0])
    alpha, _, levels, indices = obs.calculate_qparams(signed=False)
    lv = levels.numpy()
    mids = (lv[:-1] + lv[1:]) / 2
    xs = np.concatenate(
        [lv, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf), [0.3, 0.99]]
    ).astype(np.float32)

    def scan(x):  # the prototype's loop, in float32
        best, best_delta = 0, np.inf
        for p, level in enumerate(lv):
            delta = abs(np.float32(level) - np.float32(x))
            if delta < best_delta:
                best, best_delta = p, delta
        return best

    for x in xs:
        p = scan(x)
        assert int(float_to_apot(float(x), levels, indices, alpha)) == int(indices[p])
        assert float(quant_dequant_util(float(x), levels, indices)) == lv[p]
        assert float(apot_to_float(int(indices[p]), levels, indices)) == lv[p]
    tensor = torch.from_numpy(xs.reshape(3, -1) if xs.size % 3 == 0 else xs)
    codes = float_to_apot(tensor, levels, indices, alpha)
    assert codes.shape == tensor.shape and codes.dtype == torch.int32
    assert torch.equal(apot_to_float(codes, levels, indices), quant_dequant_util(tensor, levels, indices))
    assert tensor.numpy().tobytes() == (xs.reshape(tensor.shape)).tobytes()  # input untouched


def test_apot_utils_documented_differences():
    """Beyond +-alpha the prototype's ``float_to_apot`` returned the float
    +-alpha as a code; apot clips, then rounds (the top or bottom code). An
    unknown code is NaN in ``apot_to_float`` (the prototype: ValueError from
    list.index), as in ``dequantize``."""
    obs = _observer_with(4, 2, [0.0], [1.0])
    alpha, _, levels, indices = obs.calculate_qparams(signed=False)
    assert int(float_to_apot(5.0, levels, indices, alpha)) == int(indices[-1]) == 5
    assert int(float_to_apot(-5.0, levels, indices, alpha)) == int(indices[0]) == 0
    out = apot_to_float(torch.tensor([16, -1, 2**40]), levels, indices)
    assert torch.isnan(out).all()
    with pytest.raises(TypeError, match="integer codes"):
        apot_to_float(torch.tensor([1.0]), levels, indices)
    with pytest.raises(TypeError, match="real number"):
        float_to_apot(1j, levels, indices, alpha)


def test_quant_levels_visualization(monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    obs = _observer_with(4, 2, [0.0], [1.0])
    figure = obs.quant_levels_visualization(signed=False)
    (line,) = figure.axes[0].lines
    xs, ys = line.get_xdata(), line.get_ydata()
    assert shown == [True] and len(xs) == 1000
    assert xs[0] == 0.0 and xs[-1] == np.float32(0.999)
    _, _, levels, _ = obs.calculate_qparams(signed=False)
    assert set(np.float32(ys).tolist()) <= set(levels.tolist())
    assert ys[0] == 0.0 and ys[-1] == 1.0 and np.all(np.diff(ys) >= 0)
    plt.close(figure)
    with pytest.raises(RuntimeError, match="not observed"):
        APoTObserver(4, 2).quant_levels_visualization()
