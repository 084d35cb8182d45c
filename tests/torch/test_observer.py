"""apot_torch.observer: APoTObserver's statistics and ``calculate_qparams``
(the worked example, zero signs, NaN policy, bad configurations, CUDA equals
CPU) and the configuration each module records in its ``state_dict``."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import apot_torch as at
from tests.helpers import bits
from tests.reference import reference_qparams
from tests.torch.helpers import observed, qparams, requires_cuda


@pytest.mark.parametrize("mn,mx", [(0.0, 0.0), (-0.0, -0.0), (0.0, 1e-40), (-1e-39, 0.0)])
def test_alpha_of_zero_statistics_is_positive_zero(mn, mx):
    alpha, gamma, levels, _ = qparams(mn, mx, 4, 2)
    assert bits(alpha) == bits(np.float32(0.0))
    assert (bits(levels.numpy()) == 0).all()


def test_observer_qparams_match_reference():
    rng = np.random.default_rng(3)
    for b, k, signed in [(4, 2, False), (4, 2, True), (8, 2, False), (6, 3, True)]:
        obs = at.APoTObserver(b=b, k=k)
        data = rng.normal(size=(3, 500)).astype(np.float32)
        for row in data:
            obs(torch.from_numpy(row))
        ref = reference_qparams(float(data.min()), float(data.max()), b, k, signed)
        qp = obs.calculate_qparams(signed)
        for got, want in zip(qp[:3], ref[:3]):
            np.testing.assert_array_equal(bits(got), bits(want))
        np.testing.assert_array_equal(qp[3].numpy(), ref[3])


def test_worked_example():
    alpha, gamma, levels, indices = qparams(-1.0, 1.0, 4, 2)
    expected = np.array(
        [0, 1 / 48, 1 / 24, 1 / 16, 1 / 12, 1 / 8, 1 / 6, 3 / 16, 1 / 4, 1 / 3, 3 / 8, 1 / 2, 2 / 3, 11 / 16, 3 / 4, 1],
        dtype=np.float32,
    )
    assert float(alpha) == 1.0
    assert bits(gamma) == bits(np.float32(2 / 3))
    np.testing.assert_array_equal(bits(levels), bits(expected))
    assert indices.tolist() == [0, 3, 12, 15, 2, 14, 8, 11, 10, 1, 13, 9, 4, 7, 6, 5]
    # 23/32, exactly midway between 11/16 and 3/4, ties to the lower level;
    # the next float32 up goes up; beyond alpha clips to 1, negatives go to 0
    mid = np.float32(23 / 32)
    x = torch.tensor([mid, np.nextafter(mid, np.float32(1)), 0.9, 7.0, -0.5])
    np.testing.assert_array_equal(
        bits(at.quant_dequant_APoT(x, alpha, gamma, levels, indices)), bits(expected[[13, 14, 15, 15, 0]])
    )
    assert at.quantize_APoT(x, alpha, gamma, levels, indices).int_repr().tolist() == [7, 6, 5, 5, 0]


def test_unobserved_qparams_give_nan_not_numbers():
    qp = qparams(float("inf"), float("-inf"), 4, 2)
    assert qp[0] == -float("inf") and torch.isnan(qp[1]) and torch.isnan(qp[2]).all()
    assert torch.isnan(at.quant_dequant_APoT(torch.ones(3), *qp)).all()
    assert (at.quantize_APoT(torch.ones(3), *qp).int_repr() == at.NAN_CODE).all()
    with pytest.raises(RuntimeError, match="not observed"):
        at.APoTObserver(b=4, k=2).calculate_qparams(signed=False)


def test_observer_statistics():
    obs = at.APoTObserver(b=4, k=2)
    assert set(obs.state_dict()) == {"min_val", "max_val"}
    assert obs.min_val == float("inf") and obs.max_val == -float("inf")
    out = obs(torch.tensor([1.0, -2.0, float("nan"), float("inf"), -float("inf"), 1e-45]))
    assert out.shape == (6,)
    assert obs.min_val == -2.0 and obs.max_val == 1.0
    obs(torch.empty(0))
    obs(torch.tensor([float("nan"), float("inf")]))
    assert obs.min_val == -2.0 and obs.max_val == 1.0
    obs(torch.tensor([3.0], dtype=torch.bfloat16))
    assert obs.max_val.dtype == torch.float32 and obs.max_val == 3.0
    # subnormals count as zero
    tiny = at.APoTObserver(b=4, k=2)
    tiny(torch.tensor([1e-45, -1e-40]))
    assert tiny.min_val == 0.0 and tiny.max_val == 0.0
    fresh = at.APoTObserver(b=4, k=2)
    fresh.load_state_dict(obs.state_dict())
    np.testing.assert_array_equal(bits(fresh.calculate_qparams(False)[2]), bits(obs.calculate_qparams(False)[2]))


def test_observer_all_non_finite_input_keeps_it_unobserved():
    obs = at.APoTObserver(b=4, k=2)
    obs(torch.tensor([float("nan"), float("inf")]))
    with pytest.raises(RuntimeError, match="not observed"):
        obs.calculate_qparams(signed=False)


@pytest.mark.parametrize(
    "b,k,message",
    [(4, 3, "multiple"), (4, 0, ">= 1"), (0, 1, ">= 1"), (-2, 1, ">= 1"), (4.0, 2, "integer"), (32, 1, "limit"),
     (16, 2, None), (8, 8, None)],
)
def test_invalid_configurations(b, k, message):
    if message is None:
        assert at.calculate_qparams(torch.tensor(-1.0), torch.tensor(1.0), b, k)[2].numel() == 2**b
        at.APoTObserver(b=b, k=k)
        return
    with pytest.raises(ValueError, match=message):
        at.calculate_qparams(torch.tensor(-1.0), torch.tensor(1.0), b, k)
    with pytest.raises(ValueError, match=message):
        at.APoTObserver(b=b, k=k)


def test_oversized_signed_table_is_refused():
    with pytest.raises(ValueError, match="limit"):
        at.calculate_qparams(torch.tensor(-1.0), torch.tensor(1.0), 12, 2, signed=True)  # 7**6 > 2**16


@pytest.mark.gpu
@requires_cuda
def test_cuda_observer_matches_cpu():
    x = torch.randn(10000, generator=torch.Generator().manual_seed(5))
    cpu, gpu = at.APoTObserver(b=8, k=2), at.APoTObserver(b=8, k=2).cuda()
    cpu(x)
    gpu(x.cuda())
    for c, g in zip(cpu.calculate_qparams(True), gpu.calculate_qparams(True)):
        assert torch.equal(c, g.cpu())


def test_observer_statistics_carry_no_sign_of_zero():
    obs = at.APoTObserver(4, 2)
    obs(torch.tensor([0.0, -0.0, 1.0, -1e-40]))
    assert bits(obs.min_val) == bits(np.float32(0.0))
    obs = at.APoTObserver(4, 2)
    obs(torch.tensor([-0.0, -3.0]))
    assert bits(obs.max_val) == bits(np.float32(0.0))


@pytest.mark.parametrize("other, named", [
    (dict(b=8, k=2), "b=4 (this module: 8)"),
    (dict(b=4, k=1), "k=2 (this module: 1)"),
    (dict(b=4, k=4), "k=2 (this module: 4)"),
    (dict(b=4, k=2, signed=True), "signed=False (this module: True)"),
])  # fmt: skip
def test_torch_state_dict_of_another_configuration_is_refused(other, named):
    import io

    sd = observed(at.APoTFakeQuantize(b=4, k=2)).state_dict()
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
    sd = dict(observed(at.APoTFakeQuantize(b=4, k=2)).state_dict())
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
    sd = dict(observed(at.APoTFakeQuantize(b=4, k=2)).state_dict())
    fresh = at.APoTFakeQuantize(b=4, k=2)
    with pytest.raises(RuntimeError, match='Missing key.*"gamma"'):
        fresh.load_state_dict({k: v for k, v in sd.items() if k != "gamma"})
    with pytest.raises(RuntimeError, match="size mismatch for quantization_levels"):
        fresh.load_state_dict(dict(observed(at.APoTFakeQuantize(b=4, k=2, signed=True)).state_dict()))
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

    sd = observed(SignMagnitudeFakeQuantize(3, 2)).state_dict()
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


def test_a_table_over_the_size_limit_is_refused():
    with pytest.raises(ValueError, match="limit"):
        at.APoTObserver(b=17, k=1)
