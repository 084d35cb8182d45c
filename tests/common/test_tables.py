"""apot_common.tables: the APoT, sign-magnitude and paper level tables, their
size guard and the export code dtypes.

The paper's sets are checked against ``tests/reference_paper.py``'s
transcription of the paper code's ``build_power_value`` (plain loops with
fractions, written independently of the table of exponents in
``apot_common.tables``) and its float32 rounding (nearest of three float32
candidates by exact comparison, ties to the even mantissa).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from apot_common.tables import (
    LEVEL_SETS,
    check_export_codes,
    export_code_dtype,
    level_table,
    paper_level_table,
    sign_magnitude_table,
    unsigned_table,
)
from tests.reference_paper import PAPER_ADDITIVE_BITS, build_power_value, build_power_value_sums, nearest_float32

POT_BITS = [1, 2, 3, 4, 5, 6, 7]

TINY = np.finfo(np.float32).tiny


def paper_float32_code(B: int, additive: bool) -> np.ndarray:
    """The paper's own float32 steps, literally: ``torch.Tensor(list(set(values)))``
    of the float64 sums (exact dyadics), then ``values.mul(1.0 /
    torch.max(values))``; sorted."""
    torch = pytest.importorskip("torch", reason="the paper's own float32 steps are torch code")
    values = torch.Tensor(list({float(v) for v in build_power_value_sums(B, additive)}))
    values = values.mul(1.0 / torch.max(values))
    return np.sort(values.numpy())


@pytest.mark.parametrize(
    "B, additive", [(B, True) for B in PAPER_ADDITIVE_BITS] + [(B, False) for B in POT_BITS]
)
def test_table_equals_transcription(B, additive):
    expected = build_power_value(B, additive)
    table = paper_level_table(B, additive)
    assert list(table.values) == expected
    assert table.num_levels == len(expected) == 2**B
    want = np.array([nearest_float32(v) for v in expected], np.float32)
    assert table.base_sum.dtype == np.float32
    np.testing.assert_array_equal(table.base_sum.view(np.int32), want.view(np.int32))
    np.testing.assert_array_equal(table.level_indices, np.arange(2**B, dtype=np.int32))
    assert table.level_indices.dtype == np.int32
    rebuilt = table.sorted_mantissa.astype(np.float64) * 2.0 ** table.sorted_exponent.astype(np.float64)
    np.testing.assert_array_equal(rebuilt, table.base_sum.astype(np.float64))
    assert table.p_sum == 1.0 and table.base_sum[-1] == 1.0 and table.base_sum[0] == 0.0
    assert (np.diff(table.base_sum) > 0).all() and (table.base_sum[1:] >= TINY).all()
    assert table.level_set == ("paper" if additive else "paper-pot")
    assert unsigned_table(B, 1, table.level_set) is table


def test_known_values():
    # build_power_value(3): a in {0, 1/2, 1/4, 1/16}, b in {0, 1/8}, max 5/8
    assert paper_level_table(3).values == tuple(Fraction(n, 10) for n in (0, 1, 2, 3, 4, 6, 8, 10))
    # build_power_value(4) is the prototype's unsigned (4, 2) table (numerics 3's worked example)
    apot = unsigned_table(4, 2, "apot")
    np.testing.assert_array_equal(
        paper_level_table(4).base_sum, apot.base_sum[apot.level_indices] / np.float32(apot.p_sum)
    )
    assert paper_level_table(2).values == (0, Fraction(1, 4), Fraction(1, 2), 1)
    assert paper_level_table(1, additive=False).values == (0, 1)


@pytest.mark.parametrize("B, additive", [(B, True) for B in PAPER_ADDITIVE_BITS] + [(B, False) for B in POT_BITS])
def test_paper_own_float32_steps_within_one_ulp(B, additive):
    """The paper's code rounds twice (float32 sums times ``fl(1 / max)``);
    ours is correctly rounded. Measured: they differ by one ulp in 5 of the
    32 levels of B = 5 and 20 of the 64 of B = 6, nowhere else."""
    theirs = paper_float32_code(B, additive)
    ours = paper_level_table(B, additive).base_sum
    ulps = np.abs(theirs.view(np.int32).astype(np.int64) - ours.view(np.int32).astype(np.int64))
    assert ulps.max() <= 1
    assert int((ulps != 0).sum()) == ({5: 5, 6: 20}.get(B, 0) if additive else 0)


@pytest.mark.parametrize("B", [0, 1, 7, 8, -2])
def test_unsupported_additive_bits(B):
    with pytest.raises(ValueError, match="additive"):
        paper_level_table(B)


@pytest.mark.parametrize("B", [0, 8, 16])
def test_unsupported_pot_bits(B):
    with pytest.raises(ValueError, match="non-additive"):
        paper_level_table(B, additive=False)


@pytest.mark.parametrize("bad", [3.0, True, "3"])
def test_non_integer_bits(bad):
    with pytest.raises(ValueError, match="integer"):
        paper_level_table(bad)


def test_sign_magnitude_tables():
    for b in range(3, 8):
        t = sign_magnitude_table(b, 99, "paper")  # k is not used
        assert t.magnitude is paper_level_table(b - 1) and t.k == 0 and t.level_set == "paper"
        n = 2 ** (b - 1)
        np.testing.assert_array_equal(t.code_by_position, np.arange(-(n - 1), n, dtype=np.int32))
        assert t.nan_code == -n and t.num_levels == 2**b - 1
    for b in range(2, 9):
        assert sign_magnitude_table(b, 1, "paper-pot").magnitude is paper_level_table(b - 1, additive=False)
    ternary = sign_magnitude_table(2, 1, "paper")  # the paper's 2-bit weights: {-alpha, 0, alpha}
    assert ternary.magnitude.values == (0, 1)
    for b, level_set in ((8, "paper"), (9, "paper-pot"), (1, "paper")):
        with pytest.raises(ValueError, match="b"):
            sign_magnitude_table(b, 1, level_set)
    with pytest.raises(ValueError, match="level_set"):
        sign_magnitude_table(3, 2, "Paper")
    with pytest.raises(ValueError, match="build_power_value"):
        unsigned_table(7, 1, "paper")
    assert LEVEL_SETS == ("apot", "paper", "paper-pot")


@pytest.mark.parametrize("b, k, signed", [(14000, 1, False), (10**9, 10**9, False), (2**40, 2, True), (20, 1, False),
                                          (10**12 + 1, 10**12, False)])
def test_huge_tables_are_refused_at_once_with_a_short_message(b, k, signed):
    # an unguarded table of these sizes would not fit in memory, let alone finish
    with pytest.raises(ValueError, match="limit of 65536|limit is 65536") as info:
        if b == 10**12 + 1:
            sign_magnitude_table(b, k)
        else:
            level_table(b, k, signed)
    assert len(str(info.value)) < 200, str(info.value)
    assert f"b={b}" in str(info.value) or f"b={b - 1}" in str(info.value)


def test_table_limit_itself():
    assert level_table(16, 1).num_levels == 2**16  # the largest unsigned table
    with pytest.raises(ValueError, match="117649 levels"):
        level_table(12, 2, True)


@pytest.mark.parametrize("b, dtype", [(2, np.int8), (8, np.int8), (9, np.int16), (16, np.int16), (17, np.int32)])
def test_export_code_dtype_holds_every_code(b, dtype):
    assert export_code_dtype(b) == np.dtype(dtype)
    info = np.iinfo(dtype)
    assert info.min <= -(2 ** (b - 1)) and 2 ** (b - 1) - 1 <= info.max


def test_check_export_codes_names_the_code():
    check_export_codes(np.array([-3, 3]), 3)
    with pytest.raises(ValueError, match="code -4 at flat position 1"):
        check_export_codes(np.array([0, -4]), 3)


def test_level_table_is_cached_and_read_only():
    assert level_table(8, 2) is level_table(8, 2)
    with pytest.raises(ValueError):
        level_table(8, 2).base_sum[0] = 1.0
