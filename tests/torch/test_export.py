"""apot_torch.export: exported Linear and Conv2d weights (integer codes plus
alpha/gamma) give the fake-quant weight and the fake-quant layer's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apot_torch import export, paper


@pytest.mark.parametrize("b, k, per_channel", [(3, 2, False), (2, 1, True), (5, 2, True)])
def test_export_matches_the_fake_quant_layer(b, k, per_channel):
    rng = np.random.default_rng(b)
    weight = torch.from_numpy(rng.normal(size=(6, 20)).astype(np.float32) * 0.1)
    alpha = torch.from_numpy(rng.uniform(0.8, 2.5, 6 if per_channel else ()).astype(np.float32))
    bias = torch.from_numpy(rng.normal(size=6).astype(np.float32))
    fq = paper.paper_weight_quant(weight, alpha, b=b, k=k, channel_axis=0 if per_channel else None)
    exported = export.export_weight(weight, alpha, b=b, k=k, per_channel=per_channel, bias=bias)
    assert exported.codes.dtype == torch.int8 and exported.code_bytes() == -(-120 * b // 8)
    assert torch.equal(export.dequantize_weight(exported), fq)
    x = torch.from_numpy(rng.normal(size=(3, 20)).astype(np.float32))
    assert torch.equal(export.linear_from_codes(x, exported), torch.nn.functional.linear(x, fq, bias))
    x_int = torch.from_numpy(rng.integers(-50, 50, size=(3, 20)))
    integer, d = export.integer_weights(exported)
    assert torch.equal(export.shift_add_matmul(x_int, exported), x_int @ integer.T)
    with pytest.raises(ValueError, match="NaN"):
        export.export_weight(weight.index_put((torch.tensor(0), torch.tensor(0)), torch.tensor(float("nan"))),
                             alpha, b=b, k=k, normalize=False, per_channel=per_channel)  # fmt: skip


@pytest.mark.parametrize("per_channel", [False, True])
def test_conv_export_matches_the_fake_quant_conv(per_channel):
    rng = np.random.default_rng(8)
    weight = torch.from_numpy(rng.normal(size=(4, 3, 3, 3)).astype(np.float32) * 0.2)
    alpha = torch.from_numpy(rng.uniform(0.8, 2.5, 4 if per_channel else ()).astype(np.float32))
    bias = torch.from_numpy(rng.normal(size=4).astype(np.float32))
    fq = paper.paper_weight_quant(weight, alpha, b=3, k=2, channel_axis=0 if per_channel else None)
    exported = export.export_weight(weight, alpha, b=3, k=2, per_channel=per_channel, bias=bias)
    assert exported.codes.shape == (4, 3, 3, 3) and exported.codes.dtype == torch.int8
    assert tuple(exported.scale.shape) == ((4, 1, 1, 1) if per_channel else (1, 1, 1, 1))
    assert torch.equal(export.dequantize_weight(exported), fq)
    x = torch.from_numpy(rng.normal(size=(2, 3, 6, 6)).astype(np.float32))
    expected = torch.nn.functional.conv2d(x, fq, bias, stride=2, padding=1)
    assert torch.equal(export.conv_from_codes(x, exported, stride=2, padding=1), expected)
    with pytest.raises(ValueError, match="2-D"):
        export.linear_from_codes(x, exported)
    with pytest.raises(ValueError, match="3-D to 5-D"):
        export.conv_from_codes(x, export.export_weight(weight[:, :, 0, 0], alpha, b=3, k=2, per_channel=per_channel))
