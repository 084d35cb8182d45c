"""apot_torch.linear: LinearAPoT's shift-add equals the prototype's loop
definition and the dense product, its codes and qparams are the quantizer's,
and its errors (including int64 overflow) are named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import apot_torch as at
from tests.helpers import bits
from tests.reference import reference_qparams, reference_quantize
from tests.torch.helpers import data

# torch.ao.quantization warns that it is deprecated; that must not fail a run.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def prototype_shift_add(codes_t: list[list[int]], activation: list[list[float]], k: int) -> list[list[int]]:
    """The prototype's LinearAPoT.matmul, loops and bin() strings included."""

    def decompose(code: int) -> list[str]:
        digits = bin(code)[2:]
        return [digits[i : i + k] for i in range(0, len(digits), k)]

    def bitshift_mul(blocks: list[str], r: int) -> int:
        product, place = 0, 0
        for block in reversed(blocks):
            for digit in reversed(block):
                if int(digit):
                    product += r << place
                place += 1
        return product

    rows, inner, cols = len(activation), len(codes_t), len(codes_t[0])
    result = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        for j in range(cols):
            for kk in range(inner):
                result[i][j] += bitshift_mul(decompose(codes_t[kk][j]), int(activation[i][kk]))
    return result


@pytest.mark.parametrize("b,k", [(8, 1), (8, 2), (4, 2), (6, 3), (4, 4)])
def test_linear_equals_loop_shift_add(b, k):
    g = torch.Generator().manual_seed(b * 10 + k)
    weight = torch.randn(5, 7, generator=g)
    activation = torch.randint(-255, 256, (4, 7), generator=g).to(torch.float32) + 0.7 * torch.rand(4, 7, generator=g)
    layer = at.LinearAPoT(weight, b, k)
    expected = prototype_shift_add(layer.weight_transposed.tolist(), activation.tolist(), k)
    decomposed = layer.decompose_APoT(layer.weight_transposed)
    assert layer.matmul(decomposed, activation.trunc().to(torch.int64)).tolist() == expected
    out = layer(activation)
    assert out.dtype == torch.float32 and out.tolist() == expected  # all below 2**24: exact


def test_linear_pieces_match_the_prototype_definitions():
    layer = at.LinearAPoT(data(6, 6, seed=30), 8, 2)
    codes = torch.arange(256)
    blocks = layer.decompose_APoT(codes)
    assert blocks.shape == (256, 4)
    assert blocks[0b10_01_11_00].tolist() == [2, 1, 3, 0]
    assert torch.equal((blocks * torch.tensor([64, 16, 4, 1])).sum(-1), codes)
    r = torch.tensor([-7, 0, 3, 255])
    products = layer.bitshift_mul(blocks[:, None, :], r)
    assert torch.equal(products, codes[:, None] * r)


def test_linear_codes_and_qparams_are_the_quantizer_s():
    weight = data(8, 3, seed=31, scale=5.0)
    layer = at.LinearAPoT(weight, 4, 2)
    alpha, gamma, levels, indices = reference_qparams(float(weight.min()), float(weight.max()), 4, 2, False)
    codes, _ = reference_quantize(weight.numpy(), alpha, levels, indices)
    assert layer.weight.dtype == torch.int32 and layer.weight.shape == (8, 3)
    np.testing.assert_array_equal(layer.weight.reshape(-1).numpy(), codes)
    np.testing.assert_array_equal(bits(layer.quantization_levels), bits(levels))
    assert set(layer.state_dict()) == {"alpha", "gamma", "quantization_levels", "level_indices", "weight"}


def test_linear_prototype_test_case():
    """The prototype's own test: equal to nn.Linear with the codes as weight."""
    g = torch.Generator().manual_seed(32)
    weight = 1000 * torch.rand(5, 3, generator=g)
    activation = torch.randint(0, 255, (5, 3), generator=g, dtype=torch.float32)
    layer = at.LinearAPoT(weight, 8, 2)
    assert torch.equal(layer(activation), F.linear(activation, layer.weight.to(torch.float32)))


def test_linear_large_equals_dense():
    g = torch.Generator().manual_seed(33)
    in_features = 300
    weight = torch.randn(200, in_features, generator=g)
    activation = torch.randint(0, 256, (64, in_features), generator=g).to(torch.float32)
    layer = at.LinearAPoT(weight, 8, 2)
    out = layer(activation)
    # float64 sums of these integers are exact: the shift-add result is exact
    exact = F.linear(activation.double(), layer.weight.double())
    assert torch.equal(out, exact.to(torch.float32))
    # float32 dense: every term is >= 0, so the relative error of the sum is at
    # most in_features * 2**-24 (recursive summation bound), plus our rounding
    dense = F.linear(activation, layer.weight.to(torch.float32))
    torch.testing.assert_close(out, dense, rtol=(in_features + 1) * 2**-24, atol=0)


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*are deprecated")
def test_linear_quantized_activation():
    layer = at.LinearAPoT(data(4, 6, seed=34), 8, 2)
    act = torch.randint(0, 200, (3, 6), generator=torch.Generator().manual_seed(35)).to(torch.float32)
    q = torch.quantize_per_tensor(act, scale=1.0, zero_point=0, dtype=torch.quint8)
    assert torch.equal(layer(q), layer(act))


def test_linear_errors():
    with pytest.raises(ValueError, match="2-D weight"):
        at.LinearAPoT(torch.ones(3), 4, 2)
    with pytest.raises(ValueError, match="multiple"):
        at.LinearAPoT(torch.ones(2, 2), 4, 3)
    with pytest.raises(ValueError, match="NaN"):
        at.LinearAPoT(torch.tensor([[1.0, float("nan")]]), 4, 2)
    layer = at.LinearAPoT(data(2, 3, seed=36), 4, 2)
    with pytest.raises(ValueError, match="2-D activation"):
        layer(torch.ones(3))
    with pytest.raises(ValueError, match="finite"):
        layer(torch.tensor([[1.0, float("inf"), 0.0]]))
    with pytest.raises(ValueError, match="too large"):
        layer(torch.full((1, 3), 2.0**52))
    with pytest.raises(NotImplementedError):
        at.LinearAPoT.from_reference(None, None, None, None, None)


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


def test_a_table_over_the_size_limit_is_refused():
    with pytest.raises(ValueError, match="limit"):
        at.LinearAPoT(torch.rand(2, 2), 10**6, 1)
