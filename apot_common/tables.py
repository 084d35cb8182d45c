"""The static APoT level tables, shared by ``apot_jax`` and ``apot_torch``.

Everything here depends only on ``(b, k, signed)`` (the prototype's tables)
or on ``(B, additive)`` (the paper's own level sets, :func:`paper_level_table`)
and is computed once on the host with exact integer / rational arithmetic
(numpy + Python ints and fractions), so both frameworks start from the very
same bits. See ``docs/numerics.md`` sections 1, 3 and 9.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Union

import numpy as np
import numpy.typing as npt

#: Largest number of combinations (levels) a table may have. 2**16 covers every
#: unsigned configuration up to b = 16; the prototype-compatible signed tables
#: grow as (2**(k+1) - 1)**n and hit this first.
MAX_LEVELS = 2**16

#: Largest exponent a term may have: beyond this the terms are far below the
#: float32 range and the exact sums would be megabit integers.
MAX_TERM_EXPONENT = 1024

#: Smallest normal float32; anything smaller in magnitude counts as zero.
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def validate_bits(b: int, k: int) -> int:
    """Check ``(b, k)`` and return ``n = b // k`` (raises ``ValueError``)."""
    for name, value in (("b", b), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if b % k != 0:
        raise ValueError(f"b must be a multiple of k, got b={b}, k={k}")
    return int(b) // int(k)


def check_table_size(b: int, k: int, signed: bool) -> int:
    """``n = b // k`` of a valid ``(b, k)`` whose table has at most
    :data:`MAX_LEVELS` combinations; ``ValueError`` otherwise.

    Decided on ``k`` and ``n`` before any power is formed, so a huge ``b`` or
    ``k`` is refused at once (no megabit integer, no 4,000-digit message).
    """
    n = validate_bits(b, k)
    limit_bits = MAX_LEVELS.bit_length() - 1  # 16
    per_term = f"(2**({k}+1) - 1)" if signed else f"(2**{k})"
    # every term set has at least 2**k (> 2**16 for k > 16) and at least 2
    # choices (> 2**16 combinations for n > 16): refuse without computing
    if int(k) > limit_bits or n > limit_bits:
        raise ValueError(
            f"APoT table for b={b}, k={k}, signed={bool(signed)} has {per_term}**{n} levels, more than the "
            f"limit of {MAX_LEVELS} (choose a smaller b or k)"
        )
    count = num_combinations(b, k, signed)
    if count > MAX_LEVELS:
        raise ValueError(
            f"APoT table for b={b}, k={k}, signed={bool(signed)} has {count} levels; "
            f"the limit is {MAX_LEVELS} (choose a smaller b or k)"
        )
    return n


def num_combinations(b: int, k: int, signed: bool) -> int:
    """Number of level combinations (codes) of the ``(b, k, signed)`` table."""
    n = validate_bits(b, k)
    per_term = 2 ** (k + 1) - 1 if signed else 2**k
    return per_term**n


def _round_to_float32(numerator: int, exponent: int) -> float:
    """``numerator * 2**-exponent`` rounded to float32, ties to even.

    Results below the normal range are flushed to a zero of the same sign
    (numerics doc, 3).
    """
    if numerator == 0:
        return 0.0
    sign = -1.0 if numerator < 0 else 1.0
    m = abs(numerator)
    shift = m.bit_length() - 24
    if shift > 0:
        q, rem = m >> shift, m & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and q & 1):
            q += 1
        m, exponent = q, exponent - shift
    # m fits in 25 bits and 2**-exponent is a power of two: the product is exact
    # in float64 and, being a 24-bit mantissa, exactly representable in float32.
    value = float(m) * 2.0 ** (-exponent)
    if value < FLOAT32_TINY:
        return sign * 0.0
    return sign * value


@dataclass(frozen=True)
class LevelTable:
    """Static level table of one ``(b, k, signed)`` configuration.

    Attributes:
      b, k, n, signed: the configuration (``n = b // k`` additive terms).
      p_sum: ``2 - 2**(1 - n)``, the sum of the largest term of each P_i.
      base_sum: ``(N,)`` float32, the exact sum of combination ``c`` rounded
        to float32 (ties to even), indexed by the APoT code ``c``.
      level_indices: ``(N,)`` int32, the codes in ascending order of their
        exact sums (stable: equal sums keep the lower code first).
      sorted_mantissa, sorted_exponent: ``(N,)`` float32 / int32 with
        ``base_sum[level_indices] == sorted_mantissa * 2**sorted_exponent``,
        ``|sorted_mantissa|`` in ``[1, 2)`` (or 0). Levels are formed from these
        so that the gamma product never leaves the normal float32 range.
    """

    b: int
    k: int
    n: int
    signed: bool
    p_sum: float
    base_sum: np.ndarray
    level_indices: np.ndarray
    sorted_mantissa: np.ndarray
    sorted_exponent: np.ndarray

    @property
    def num_levels(self) -> int:
        return int(self.base_sum.shape[0])


def _term_sets(k: int, n: int, signed: bool) -> list[list[tuple[str, int]]]:
    """P_i as exponents: ``e`` stands for ``2**-e``, ``-e - 1`` for ``-2**-e``.

    Encoded as signed integers over a common denominator later; here we only
    keep the prototype's ordering.
    """
    sets = []
    for i in range(n):
        exps = [i + j * n for j in range(2**k - 1)]
        if signed:
            # Descending: largest positive first, zero in the middle.
            terms = [("+", e) for e in exps] + [("0", 0)] + [("-", e) for e in reversed(exps)]
        else:
            terms = [("0", 0)] + [("+", e) for e in exps]
        sets.append(terms)
    return sets


def level_table(b: int, k: int, signed: bool = False) -> LevelTable:
    """The static level table of ``(b, k, signed)``, built once and cached.

    Raises:
      ValueError: invalid ``(b, k)``, or a table larger than ``MAX_LEVELS``
        combinations or with terms finer than ``2**-MAX_TERM_EXPONENT``.
    """
    # before the cache: 4.0 must not hit the entry of 4, and a huge b is
    # refused before anything is computed
    check_table_size(b, k, signed)
    return _build_level_table(int(b), int(k), bool(signed))


@functools.lru_cache(maxsize=None)
def _build_level_table(b: int, k: int, signed: bool) -> LevelTable:
    n = b // k
    count = num_combinations(b, k, signed)
    if count > MAX_LEVELS:
        raise ValueError(
            f"APoT table for b={b}, k={k}, signed={signed} has {count} levels; "
            f"the limit is {MAX_LEVELS} (choose a smaller b or k)"
        )
    denom_exp = n * (2**k - 1) - 1  # largest exponent of any term
    if denom_exp > MAX_TERM_EXPONENT:
        raise ValueError(
            f"APoT terms for b={b}, k={k} go down to 2**-{denom_exp}, beyond the "
            f"supported 2**-{MAX_TERM_EXPONENT} (choose a smaller k)"
        )

    def as_int(term: tuple[str, int]) -> int:
        kind, e = term
        if kind == "0":
            return 0
        value = 1 << (denom_exp - e)
        return value if kind == "+" else -value

    int_sets = [[as_int(t) for t in terms] for terms in _term_sets(k, n, signed)]
    exact = [sum(combo) for combo in itertools.product(*int_sets)]
    base_sum = np.array([_round_to_float32(s, denom_exp) for s in exact], dtype=np.float32)
    # Python's sort is stable: equal exact sums keep the lower code first.
    perm = np.array(sorted(range(count), key=exact.__getitem__), dtype=np.int32)

    mantissa, exponent = _mantissa_exponent(base_sum[perm])
    arrays = [base_sum, perm, mantissa, exponent]
    for a in arrays:
        a.setflags(write=False)
    return LevelTable(
        b=b,
        k=k,
        n=n,
        signed=signed,
        p_sum=2.0 - 2.0 ** (1 - n),
        base_sum=arrays[0],
        level_indices=arrays[1],
        sorted_mantissa=arrays[2],
        sorted_exponent=arrays[3],
    )


def _mantissa_exponent(sorted_base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mantissa, exponent)``, float32 / int32 like ``sorted_base`` (float32),
    with ``sorted_base == mantissa * 2**exponent``, ``|mantissa|`` in ``[1, 2)``
    (zeros, either sign, give mantissa ``+-0`` and exponent 0)."""
    sorted_base = np.asarray(sorted_base).astype(np.float64)
    mantissa, exponent = np.frexp(sorted_base)  # mantissa in [0.5, 1)
    mantissa = np.where(sorted_base == 0, sorted_base, mantissa * 2.0)  # keeps -0.0
    exponent = np.where(sorted_base == 0, 0, exponent - 1)
    return mantissa.astype(np.float32), exponent.astype(np.int32)


# --------------------------------------------------------------------------
# the paper's own level sets (yhhhli/APoT_Quantization, build_power_value)

#: Level sets the paper functions (``apot_jax.paper``, ``apot_torch.paper``)
#: take as ``level_set=``: ``"apot"``, the prototype's ``(b, k)`` tables
#: (section 3); ``"paper"``, the paper code's additive sets
#: ``build_power_value(B, additive=True)``; ``"paper-pot"``, its plain
#: powers-of-two sets ``build_power_value(B, additive=False)``.
LevelSet = Literal["apot", "paper", "paper-pot"]
LEVEL_SETS: tuple[str, ...] = ("apot", "paper", "paper-pot")

#: ``B`` that ``build_power_value(B, additive=True)`` supports (for any other
#: ``B`` it builds the set ``{0}`` and divides by its max, 0: NaN levels).
PAPER_ADDITIVE_BITS: tuple[int, ...] = (2, 3, 4, 5, 6)

#: Largest ``B`` of the non-additive sets: their levels are ``2**-j`` for
#: ``j = 0..2**B - 2`` (normalised), and beyond ``B = 7`` (``2**-126``, the
#: smallest normal float32) they flush to zero (section 4) and collide.
PAPER_POT_MAX_BITS = 7

#: The additive sets' terms as exponents, ``e`` standing for ``2**-e``:
#: ``(base_a, base_b, base_c)`` without their common leading 0, as the loops
#: of ``build_power_value`` append them (B = 3 and 5 put the last round's
#: largest term in the next list, so its levels are not a product of equal
#: term sets).
_PAPER_ADDITIVE_EXPONENTS: dict[int, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    2: ((1, 2, 3), (), ()),
    3: ((1, 2, 4), (3,), ()),
    4: ((1, 3, 5), (2, 4, 6), ()),
    5: ((1, 3, 6), (2, 4, 7), (5,)),
    6: ((1, 4, 7), (2, 5, 8), (3, 6, 9)),
}


def check_level_set(level_set: str) -> str:
    """``level_set`` itself if it is one of :data:`LEVEL_SETS`, else ``ValueError``."""
    if not isinstance(level_set, str) or level_set not in LEVEL_SETS:
        raise ValueError(f"level_set must be one of {', '.join(map(repr, LEVEL_SETS))}, got {level_set!r}")
    return level_set


def round_fraction_to_float32(value: Fraction) -> float:
    """The rational ``value`` rounded to float32 (24-bit mantissa, ties to
    even), as a Python float; results below the normal float32 range are
    flushed to a zero of the same sign (section 4), like the APoT tables."""
    value = Fraction(value)
    if value == 0:
        return 0.0
    sign = -1.0 if value < 0 else 1.0
    p, q = abs(value.numerator), value.denominator
    # t = floor(log2(p / q))
    t = p.bit_length() - q.bit_length()
    if (p << max(-t, 0)) < (q << max(t, 0)):
        t -= 1
    e = 23 - t  # p / q * 2**e in [2**23, 2**24)
    num, den = (p << e, q) if e >= 0 else (p, q << -e)
    m, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and m & 1):
        m += 1  # m == 2**24 is still exact
    result = float(m) * 2.0 ** (-e)  # exact: a 25-bit integer times a power of two
    if result < FLOAT32_TINY:
        return sign * 0.0
    return sign * result


def paper_terms(b: int, additive: bool = True) -> tuple[list[Fraction], list[Fraction], list[Fraction]]:
    """``(base_a, base_b, base_c)`` of the paper code's ``build_power_value(b,
    additive)`` as exact fractions, each starting with 0; its levels are the
    set of sums ``a + b + c``, divided by their max.

    Raises:
      ValueError: ``b`` not an integer, or outside :data:`PAPER_ADDITIVE_BITS`
        (additive) / ``1..PAPER_POT_MAX_BITS`` (non-additive).
    """
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
        raise ValueError(f"B must be an integer, got {b!r}")
    b = int(b)
    if additive:
        if b not in _PAPER_ADDITIVE_EXPONENTS:
            raise ValueError(
                f"the paper's additive level sets (build_power_value(B, additive=True)) exist for B in "
                f"{PAPER_ADDITIVE_BITS[0]}..{PAPER_ADDITIVE_BITS[-1]}, got B={b} "
                f"(its code builds {{0}} / 0 = NaN there)"
            )
        exponents = _PAPER_ADDITIVE_EXPONENTS[b]
    else:
        if not 1 <= b <= PAPER_POT_MAX_BITS:
            raise ValueError(
                f"the paper's non-additive level sets (build_power_value(B, additive=False)) are supported for B in "
                f"1..{PAPER_POT_MAX_BITS}, got B={b} (beyond, levels 2**-j fall below the float32 normal range, "
                "flush to zero and collide)"
            )
        exponents = (tuple(range(1, 2**b)), (), ())
    a, b_, c = ([Fraction(0)] + [Fraction(1, 2**e) for e in es] for es in exponents)
    return a, b_, c


@dataclass(frozen=True)
class PaperLevelTable:
    """Static table of one of the paper's level sets, ``build_power_value(b, additive)``.

    Used wherever an unsigned :class:`LevelTable` is (the levels of a clipping
    value ``alpha`` are ``gamma * base_sum[level_indices]`` with ``gamma =
    alpha / p_sum = alpha``), and as the magnitude of a sign-magnitude table.

    Attributes:
      b: the paper's ``B``: ``2**b`` levels; additive: ``build_power_value``'s flag.
      values: the exact levels, ascending, as fractions: the distinct sums of
        :func:`paper_terms` divided by the largest (``values[-1] == 1``).
      base_sum: ``(N,)`` float32, ``values`` each rounded to float32 (ties to
        even), indexed by code: a level's code is its ascending position.
      level_indices: ``(N,)`` int32 ``arange(N)`` (the codes in ascending order).
      sorted_mantissa, sorted_exponent: as :class:`LevelTable`.
      p_sum: 1.0, the largest level (so gamma is alpha itself).
      k: 0 (the paper's sets have no APoT base width); signed: False.
    """

    b: int
    additive: bool
    values: tuple[Fraction, ...]
    base_sum: np.ndarray
    level_indices: np.ndarray
    sorted_mantissa: np.ndarray
    sorted_exponent: np.ndarray
    p_sum: float = 1.0
    k: int = 0
    signed: bool = False

    @property
    def num_levels(self) -> int:
        return int(self.base_sum.shape[0])

    @property
    def level_set(self) -> str:
        """``"paper"`` (additive) or ``"paper-pot"``."""
        return "paper" if self.additive else "paper-pot"


#: Either kind of unsigned table: what ``levels.levels`` and the lookups take.
UnsignedTable = Union[LevelTable, PaperLevelTable]


def paper_level_table(b: int, additive: bool = True) -> PaperLevelTable:
    """The paper's level set ``build_power_value(b, additive)`` as a table, cached.

    Raises:
      ValueError: a ``b`` the paper's code does not support (see :func:`paper_terms`).
    """
    paper_terms(b, additive)  # ValueError before the cache
    return _build_paper_level_table(int(b), bool(additive))


@functools.lru_cache(maxsize=None)
def _build_paper_level_table(b: int, additive: bool) -> PaperLevelTable:
    sums = sorted({a + b_ + c for a, b_, c in itertools.product(*paper_terms(b, additive))})  # a set, as the paper
    top = sums[-1]
    values = tuple(s / top for s in sums)
    if len(values) != 2**b:  # every supported set has distinct sums
        raise AssertionError(f"build_power_value({b}, {additive}) gave {len(values)} levels, not {2**b}")
    base_sum = np.array([round_fraction_to_float32(v) for v in values], dtype=np.float32)
    if len(set(base_sum.tolist())) != len(values):
        raise AssertionError(f"build_power_value({b}, {additive}) has levels equal in float32")
    level_indices = np.arange(len(values), dtype=np.int32)
    mantissa, exponent = _mantissa_exponent(base_sum)
    for arr in (base_sum, level_indices, mantissa, exponent):
        arr.setflags(write=False)
    return PaperLevelTable(
        b=b,
        additive=additive,
        values=values,
        base_sum=base_sum,
        level_indices=level_indices,
        sorted_mantissa=mantissa,
        sorted_exponent=exponent,
    )


def unsigned_table(b: int, k: int, level_set: LevelSet = "apot") -> UnsignedTable:
    """The unsigned table of a ``b``-bit activation scheme: ``level_table(b, k)``
    for ``"apot"``, the paper's ``build_power_value(b)`` (``"paper"``; ``b`` in
    2..6) or ``build_power_value(b, additive=False)`` (``"paper-pot"``; ``b``
    in 1..7), where ``k`` is not used.

    Raises:
      ValueError: a bad ``level_set``, or a ``(b, k)`` / ``b`` it does not support.
    """
    if check_level_set(level_set) == "apot":
        return level_table(b, k, False)
    return paper_level_table(b, level_set == "paper")


def grid_size(num_levels: int) -> int:
    """Number of cells of the rounding grid (see ``docs/numerics.md``, 5).

    A power of two >= 32 per level: enough for at most one distinct decision
    threshold per cell whenever the level spacing allows it (every k <= 2 up to
    b = 8, signed or not); when it does not, the quantizers fall back to a
    binary search, so this only affects speed, never results.
    """
    return int(min(2**16, max(64, 1 << int(np.ceil(np.log2(32 * num_levels))))))


@dataclass(frozen=True)
class SignMagnitudeTable:
    """Static table of the true b-bit signed (sign-magnitude) APoT scheme.

    The magnitude is the unsigned APoT table of ``m = b - 1`` bits with base
    width ``k`` (``k`` must divide ``m``), or with ``level_set="paper"`` /
    ``"paper-pot"`` the paper's set ``build_power_value(b - 1)`` (see
    :func:`sign_magnitude_table`); the level set is its mirror image joined
    at the single zero, so it has exactly ``2**b - 1`` distinct levels (for
    alpha large enough that no level flushes to zero), symmetric about 0.
    See ``docs/numerics.md`` section 9.

    Attributes:
      b, k: the configuration (``k = 0`` for the paper's sets, which have no
        base width); ``magnitude``: the unsigned ``(b - 1)``-bit table.
      code_by_position: ``(2**b - 1,)`` int32, the signed code of each sorted
        level: ``-c`` for the negative level of magnitude code ``c``, ``+c``
        for the non-negative ones (0 is the code of the zero level).
      nan_code: ``-2**(b - 1)``, the one ``b``-bit two's complement integer
        that is not a level's code; ``quantize`` returns it for NaN.
      level_set: ``"apot"``, ``"paper"`` or ``"paper-pot"``.
    """

    b: int
    k: int
    magnitude: UnsignedTable
    code_by_position: np.ndarray
    nan_code: int
    level_set: LevelSet = "apot"

    @property
    def num_levels(self) -> int:
        return int(self.code_by_position.shape[0])

    @property
    def p_sum(self) -> float:
        return self.magnitude.p_sum


def export_code_dtype(b: int) -> np.dtype:
    """Narrowest signed integer dtype holding every ``b``-bit sign-magnitude
    code (``|code| < 2**(b-1)``) and its NaN code ``-2**(b-1)``: int8 for
    ``b <= 8``, int16 for ``b <= 16``, else int32."""
    return np.dtype(np.int8 if b <= 8 else np.int16 if b <= 16 else np.int32)


def check_export_codes(codes: np.ndarray, b: int) -> None:
    """``ValueError`` naming the first code outside ``(-2**(b-1), 2**(b-1))``
    (the NaN code ``-2**(b-1)`` included): the integer paths of an export
    have no NaN to give, so they refuse. ``codes``: any integer array."""
    half = 2 ** (int(b) - 1)
    flat = np.asarray(codes).reshape(-1)
    bad = np.nonzero((flat <= -half) | (flat >= half))[0]
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"code {int(flat[i])} at flat position {i} is outside (-{half}, {half}) for b={b} "
                         f"(-{half} is the NaN code)")


def default_magnitude_k(b: int) -> int:
    """Default base width of a ``b``-bit sign-magnitude scheme: 2 where it
    divides the ``b - 1`` magnitude bits (the paper's 3-bit weights are
    ``{0, 1/4, 1/2, 1}`` with sign), else 1 (``b = 2``: ternary)."""
    return 2 if (b - 1) % 2 == 0 else 1


def sign_magnitude_table(b: int, k: int, level_set: LevelSet = "apot") -> SignMagnitudeTable:
    """The sign-magnitude table of ``(b, k)``, cached.

    ``level_set="apot"``: the magnitude is ``level_table(b - 1, k)``.
    ``"paper"``: the magnitude is the paper's ``build_power_value(b - 1)``
    (its ``QuantConv2d`` weights, ``b`` in 3..7), and for ``b = 2`` the
    ternary magnitude ``{0, 1}`` (the paper quantizes 2-bit weights to
    ``{-alpha, 0, alpha}``, uniformly); ``"paper-pot"``:
    ``build_power_value(b - 1, additive=False)``, ``b`` in 2..8. ``k`` is
    not used by the paper's sets (the table has ``k = 0``).

    Raises:
      ValueError: ``b < 2``; ``"apot"``: ``k`` not dividing ``b - 1``, or a
        magnitude table ``level_table`` refuses; the paper's sets: a ``b``
        outside the ranges above; a bad ``level_set``.
    """
    check_level_set(level_set)
    validate_bits(b, 1)
    if b < 2:
        raise ValueError(f"a sign-magnitude APoT scheme needs b >= 2 (one sign bit), got b={b}")
    if level_set != "apot":
        top = 1 + (max(PAPER_ADDITIVE_BITS) if level_set == "paper" else PAPER_POT_MAX_BITS)
        if b > top:
            raise ValueError(
                f"the paper's {level_set!r} sign-magnitude weights (sign + build_power_value(b - 1)) exist for b in "
                f"2..{top}, got b={b}"
            )
        return _build_sign_magnitude_table(int(b), 0, level_set)
    validate_bits(k, 1)
    if (b - 1) % k != 0:
        raise ValueError(f"sign-magnitude APoT needs k to divide the b - 1 magnitude bits, got b={b}, k={k}")
    return _build_sign_magnitude_table(int(b), int(k), "apot")


@functools.lru_cache(maxsize=None)
def _build_sign_magnitude_table(b: int, k: int, level_set: LevelSet) -> SignMagnitudeTable:
    if level_set == "apot":
        magnitude: UnsignedTable = level_table(b - 1, k, False)
    elif b == 2:  # the paper's 2-bit weights: ternary, build_power_value(1, additive=False) == {0, 1}
        magnitude = paper_level_table(1, additive=False)
    else:
        magnitude = paper_level_table(b - 1, additive=level_set == "paper")
    codes = magnitude.level_indices  # ascending magnitudes; codes[0] == 0 is the zero level
    code_by_position = np.concatenate([-codes[:0:-1], codes]).astype(np.int32)
    code_by_position.setflags(write=False)
    return SignMagnitudeTable(
        b=b, k=k, magnitude=magnitude, code_by_position=code_by_position, nan_code=-(2 ** (b - 1)),
        level_set=level_set,
    )


def fit_alpha_grid(top: npt.ArrayLike, candidates: int, what: str) -> np.ndarray:
    """The candidate alphas of ``fit_alpha`` (``docs/numerics.md`` 9.6):
    ``fl(fl(i / candidates) * top)`` for ``i = 1..candidates``, shape
    ``(candidates, C)`` float32 for ``top`` of shape ``(C,)``.

    On the host in numpy so both frameworks get the same bits: XLA rewrites a
    division by a constant into a multiplication by its rounded reciprocal,
    and torch on CUDA divides by a scalar the same way.

    Raises:
      ValueError: ``candidates < 1``, or some ``top`` not positive (``what``
        names the quantity, e.g. ``"magnitude"``).
    """
    if int(candidates) < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    top32 = np.asarray(top, np.float32)
    if not (top32 > 0).all():
        raise ValueError(f"fit_alpha needs a positive {what} in x")
    fractions = np.arange(1, int(candidates) + 1, dtype=np.float32) / np.float32(candidates)
    return fractions[:, None] * top32[None, :]


__all__ = [
    "FLOAT32_TINY",
    "LEVEL_SETS",
    "MAX_LEVELS",
    "MAX_TERM_EXPONENT",
    "PAPER_ADDITIVE_BITS",
    "PAPER_POT_MAX_BITS",
    "LevelSet",
    "LevelTable",
    "PaperLevelTable",
    "SignMagnitudeTable",
    "UnsignedTable",
    "check_export_codes",
    "check_level_set",
    "check_table_size",
    "default_magnitude_k",
    "export_code_dtype",
    "fit_alpha_grid",
    "grid_size",
    "level_table",
    "num_combinations",
    "paper_level_table",
    "paper_terms",
    "round_fraction_to_float32",
    "sign_magnitude_table",
    "unsigned_table",
    "validate_bits",
]
