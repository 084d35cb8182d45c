"""apot_jax.levels: gamma is the correctly rounded quotient and the signed
levels stay finite near the float32 limit (against ``tests/reference.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import apot_jax as aj
from tests.helpers import bits
from tests.reference import reference_qparams


def test_gamma_correctly_rounded_on_many_alphas():
    """XLA's division is not IEEE; gamma must still be the exact quotient."""
    from fractions import Fraction

    from apot_jax.levels import gamma
    from tests.reference import round_rational_to_float32

    rng = np.random.default_rng(7)
    alphas = np.concatenate([
        rng.uniform(0, 10, 20000).astype(np.float32),
        np.exp(rng.uniform(-80, 80, 5000)).astype(np.float32),
        (np.arange(1, 2001, dtype=np.float32) * np.float32(3)),
    ])
    for n in (1, 2, 3, 4, 8):
        p_sum = 2 - 2.0 ** (1 - n)
        got = np.asarray(jax.jit(lambda a, p_sum=p_sum: gamma(a, p_sum))(alphas))
        pick = rng.choice(alphas.size, 3000, replace=False)
        exact = np.array(
            [round_rational_to_float32(Fraction(float(alphas[i])) / (2 - Fraction(2) ** (1 - n))) for i in pick],
            np.float32,
        )
        np.testing.assert_array_equal(bits(got[pick]), bits(exact), err_msg=f"n={n}")


@pytest.mark.parametrize("b,k", [(4, 2), (6, 3), (8, 2), (8, 4)])
def test_signed_levels_near_float32_max_do_not_overflow(b, k):
    fmax = float(np.finfo(np.float32).max)
    _, _, ref_levels, _ = reference_qparams(0.0, fmax, b, k, True)
    assert np.isfinite(ref_levels).all()
    qp = aj.calculate_qparams(jnp.float32(0.0), jnp.float32(fmax), b=b, k=k, signed=True)
    np.testing.assert_array_equal(bits(qp.quantization_levels), bits(ref_levels))
