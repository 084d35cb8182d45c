"""The static APoT level table, shared by ``apot_jax`` and ``apot_torch``.

Everything here depends only on ``(b, k, signed)`` and is computed once on the
host with exact integer arithmetic (numpy + Python ints), so both frameworks
start from the very same bits. See ``docs/numerics.md`` sections 1 and 3.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

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


def _term_sets(k: int, n: int, signed: bool) -> list[list[int]]:
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

    sorted_base = base_sum[perm].astype(np.float64)
    mantissa, exponent = np.frexp(sorted_base)  # mantissa in [0.5, 1)
    mantissa = np.where(sorted_base == 0, sorted_base, mantissa * 2.0)  # keeps -0.0
    exponent = np.where(sorted_base == 0, 0, exponent - 1)

    arrays = [base_sum, perm, mantissa.astype(np.float32), exponent.astype(np.int32)]
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
    width ``k`` (``k`` must divide ``m``); the level set is its mirror image
    joined at the single zero, so it has exactly ``2**b - 1`` distinct levels
    (for alpha large enough that no level flushes to zero), symmetric about 0.
    See ``docs/numerics.md`` section 9.

    Attributes:
      b, k: the configuration; ``magnitude``: the unsigned ``(b - 1, k)`` table.
      code_by_position: ``(2**b - 1,)`` int32, the signed code of each sorted
        level: ``-c`` for the negative level of magnitude code ``c``, ``+c``
        for the non-negative ones (0 is the code of the zero level).
      nan_code: ``-2**(b - 1)``, the one ``b``-bit two's complement integer
        that is not a level's code; ``quantize`` returns it for NaN.
    """

    b: int
    k: int
    magnitude: LevelTable
    code_by_position: np.ndarray
    nan_code: int

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


def sign_magnitude_table(b: int, k: int) -> SignMagnitudeTable:
    """The sign-magnitude table of ``(b, k)``, cached.

    Raises:
      ValueError: ``b < 2``, ``k`` not dividing ``b - 1``, or a magnitude
        table ``level_table`` refuses.
    """
    validate_bits(b, 1)
    validate_bits(k, 1)
    if b < 2:
        raise ValueError(f"a sign-magnitude APoT scheme needs b >= 2 (one sign bit), got b={b}")
    if (b - 1) % k != 0:
        raise ValueError(f"sign-magnitude APoT needs k to divide the b - 1 magnitude bits, got b={b}, k={k}")
    return _build_sign_magnitude_table(int(b), int(k))


@functools.lru_cache(maxsize=None)
def _build_sign_magnitude_table(b: int, k: int) -> SignMagnitudeTable:
    magnitude = level_table(b - 1, k, False)
    codes = magnitude.level_indices  # ascending magnitudes; codes[0] == 0 is the zero level
    code_by_position = np.concatenate([-codes[:0:-1], codes]).astype(np.int32)
    code_by_position.setflags(write=False)
    return SignMagnitudeTable(b=b, k=k, magnitude=magnitude, code_by_position=code_by_position, nan_code=-(2 ** (b - 1)))


def fit_alpha_grid(top: np.ndarray, candidates: int, what: str) -> np.ndarray:
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
    top = np.asarray(top, np.float32)
    if not (top > 0).all():
        raise ValueError(f"fit_alpha needs a positive {what} in x")
    fractions = np.arange(1, int(candidates) + 1, dtype=np.float32) / np.float32(candidates)
    return fractions[:, None] * top[None, :]
