"""Golden vectors: the torch reference's results, checkable with JAX alone.

``python -m apot_parity generate`` runs ``apot_torch`` on the CPU over a
fixed set of cases and writes three compact, uncompressed ``.npz`` files and
their ``manifest.json`` (each file's SHA-256 and case count) to
``apot_parity/golden/``:

* ``elements.npz``: for every ``(b, k)`` with ``b <= 8`` and ``k | b``, signed
  and unsigned, and seven statistics (ordinary, odd, a level product that
  rounds across the normal float32 range for k = 8, tiny, huge, all zero and
  unobserved): alpha, gamma, the levels and level indices, and for float32
  inputs (and bfloat16/float16 inputs for one of the statistics) the codes
  and the fake-quant gradient mask. The inputs are adversarial: levels and
  midpoints with their neighbours, +-alpha and beyond, zeros, subnormals,
  infinities, NaN and pseudo-random values at several scales.
* ``qparams.npz``: gamma for 512 statistics per ``n = b // k`` (every float32
  magnitude range, subnormal, zero, infinite, NaN and unobserved), and the
  levels of four configurations for 32 statistics each.
* ``observer.npz``: streams of batches (float32, bfloat16, float16; empty
  batches, NaN/inf mixed in, subnormals, both signs of zero) and the
  observer state after each.

``quant_dequant`` and the fake-quant output are stored implicitly: they are
``level(code)`` rounded to the input dtype (NaN for code -1), and the input
gradient is ``where(mask, dy, 0)`` for the fixed ``dy`` of :func:`dy_pattern`.
The generator asserts that torch's own outputs equal these, so the files
hold torch's results exactly.

Everything is deterministic: the inputs come from exact arithmetic and a
fixed splitmix64 stream (not numpy's generators, whose streams may change
between versions), and the files are written with fixed zip metadata, so
regenerating reproduces them byte for byte (``parity_tests`` checks it).

:func:`check_golden` validates one backend against the files and returns
:class:`apot_parity.compare.Result` records; a file whose digest or case
count differs from the manifest (truncated, partial, edited) raises
:class:`GoldenFileError` before anything is compared. For a JAX backend it
never imports torch: this is what runs on a Colab TPU (see
``docs/parity.md``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from apot_common.tables import level_table, round_fraction_to_float32
from apot_parity.backends import make_binding
from apot_parity.compare import Comparison, Result, compare, compare_elementwise, compare_qparams, compare_state
from apot_parity.records import DTYPE_NAMES, Elementwise, QParams, numpy_dtype

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
FILES = ("elements.npz", "qparams.npz", "observer.npz")
MANIFEST = "manifest.json"

#: Every (b, k, signed) with b <= 8 and k | b.
CONFIGS = tuple(
    (b, k, s) for b in range(1, 9) for k in range(1, b + 1) if b % k == 0 for s in (False, True)
)


def parse_configs(spec: str) -> tuple[tuple[int, int, bool], ...]:
    """``"4:2:s,3:1:u"`` -> ``((4, 2, True), (3, 1, False))``: ``b:k:`` then
    ``s`` (signed) or ``u`` (unsigned), comma-separated.

    >>> parse_configs("4:2:s, 8:1:u")
    ((4, 2, True), (8, 1, False))

    Raises:
      ValueError: an item is not ``b:k:s`` / ``b:k:u`` with integers, or
        none is given. Whether a stored case exists is checked by the
        checker, against the files it reads.
    """
    configs = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        fields = item.split(":")
        if len(fields) != 3 or fields[2] not in ("s", "u") or not all(f.isdigit() for f in fields[:2]):
            raise ValueError(f"config {item!r} is not b:k:s or b:k:u (for example 4:2:s)")
        configs.append((int(fields[0]), int(fields[1]), fields[2] == "s"))
    if not configs:
        raise ValueError(f"no config in {spec!r}; give b:k:s or b:k:u items, comma-separated")
    return tuple(dict.fromkeys(configs))


#: (min_val, max_val) of the element cases; float32 values.
STATS = (
    (-1.0, 1.0),
    (-0.3, 0.7371),
    (0.0, 0.5 - 2**-25),  # k = 8: a level product rounds across 2**-126
    (-1e-30, 3e-31),  # tiny alpha
    (-3e37, 2.0),  # huge alpha
    (0.0, 0.0),  # alpha = 0: every level is a zero
    (float("inf"), float("-inf")),  # unobserved: NaN qparams, code -1
)

#: Statistics (index into STATS) whose cases also have bf16 and f16 inputs.
LOW_PRECISION_STATS = (1,)

_F32 = np.float32


# --------------------------------------------------------------------------
# deterministic inputs


def _splitmix64(seed: int, n: int) -> np.ndarray:
    """``n`` uint64 values of the splitmix64 sequence from ``seed`` (fixed forever)."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed & (2**64 - 1)) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def uniform(seed: int, n: int) -> np.ndarray:
    """``n`` float64 in ``[0, 1)`` (53 random bits each), deterministic."""
    return (_splitmix64(seed, n) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def exact_levels(b: int, k: int, signed: bool, min_val: float, max_val: float) -> tuple[np.float32, np.ndarray]:
    """``(alpha, levels)`` by exact arithmetic (numerics 4), independent of
    both frameworks; used to place the adversarial inputs. NaN levels when
    unobserved."""
    table = level_table(b, k, signed)
    alpha = np.maximum(-_F32(min_val), _F32(max_val)).astype(_F32)
    if not np.isfinite(alpha) or alpha < 0:
        return alpha, np.full(table.num_levels, np.nan, _F32)
    a = Fraction(0) if alpha < np.finfo(_F32).tiny else Fraction(float(alpha))
    gamma = _F32(round_fraction_to_float32(a / Fraction(2 - Fraction(2) ** (1 - table.n))))
    g = Fraction(float(gamma))
    levels = [_F32(round_fraction_to_float32(g * Fraction(float(s)))) for s in table.base_sum[table.level_indices]]
    return alpha, np.array(levels, _F32)


def _seed(*parts: int) -> int:
    s = 0
    for p in parts:
        s = (s * 1_000_003 + int(p)) & (2**63 - 1)
    return s


def float32_inputs(alpha, levels, seed: int, max_levels: int = 40, n_random: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Adversarial float32 inputs for one qparams: ``(x, base)``.

    ``base`` holds the distinct levels (evenly thinned to ``max_levels``), the
    midpoints above them, and ``+-alpha``, ``1.5 alpha``, ``-3 alpha``; ``x``
    has ``base``, its float32 neighbours (1 and 2 ulp each way), ``-base``,
    zeros, subnormals, +-tiny, +-inf, NaN, +-1e30 and pseudo-random values in
    ``[-1.2 alpha, 1.2 alpha]``, around ``1e-3 alpha`` and log-uniform over the
    whole float32 range.
    """
    levels = np.asarray(levels, _F32)
    uniq = np.unique(levels[np.isfinite(levels)])
    mids = ((uniq[:-1].astype(np.float64) + uniq[1:].astype(np.float64)) / 2).astype(_F32)
    if uniq.size > max_levels:
        pick = np.unique(np.round(np.linspace(0, uniq.size - 1, max_levels)).astype(np.int64))
        uniq, mids = uniq[pick], mids[pick[pick < mids.size]]
    a = _F32(alpha) if np.isfinite(alpha) and alpha > 0 else _F32(1)
    base = np.concatenate([uniq, mids, np.array([a, -a, a * _F32(1.5), -a * _F32(3)], _F32)]).astype(_F32)
    inf = _F32(np.inf)
    up1 = np.nextafter(base, inf)
    up2 = np.nextafter(up1, inf)
    dn1 = np.nextafter(base, -inf)
    dn2 = np.nextafter(dn1, -inf)
    tiny = np.finfo(_F32).tiny
    special = np.array(
        [0.0, -0.0, tiny, -tiny, tiny / 2, -tiny / 2, np.nextafter(_F32(0), _F32(1)),
         np.nextafter(tiny, _F32(0)), np.inf, -np.inf, np.nan, 1e30, -1e30],
        dtype=_F32,
    )
    u = uniform(seed, n_random + n_random // 2 + n_random // 4)
    wide = ((u[:n_random] * 2.4 - 1.2) * float(a)).astype(_F32)
    small = ((u[n_random : n_random + n_random // 4] * 2 - 1) * float(a) * 1e-3).astype(_F32)
    v = u[n_random + n_random // 4 :]
    mags = 2.0 ** (v * 276 - 149)  # 2**-149 .. 2**127
    signs = np.where(uniform(seed + 1, v.size) < 0.5, -1.0, 1.0)
    logu = (signs * mags).astype(_F32)
    x = np.concatenate([base, up1, up2, dn1, dn2, -base, special, wide, small, logu]).astype(_F32)
    return x, base


def _low_precision_key_step(a: np.ndarray, step: int) -> np.ndarray:
    """``a`` (16-bit float dtype) moved ``step`` units in the last place."""
    bits = a.view(np.int16).astype(np.int32)
    key = np.where(bits >= 0, bits, -(bits & 0x7FFF)) + step
    out = np.where(key >= 0, key, (-key) | 0x8000).astype(np.uint16)
    return out.view(a.dtype)


def low_precision_inputs(alpha, levels, dtype: str, seed: int) -> np.ndarray:
    """Adversarial inputs in a 16-bit dtype: the float32 set rounded to it,
    plus the dtype's own neighbours (1 ulp each way) of the rounded base."""
    dt = numpy_dtype(dtype)
    x32, base = float32_inputs(alpha, levels, seed, max_levels=24, n_random=48)
    with np.errstate(over="ignore"):  # 1e30 etc. become inf in float16: intended
        x = x32.astype(dt)
        b = base.astype(dt)
    b = b[np.isfinite(b.astype(_F32))]
    return np.concatenate([x, _low_precision_key_step(b, 1), _low_precision_key_step(b, -1)]).astype(dt)


def dy_pattern(n: int, dtype) -> np.ndarray:
    """The output cotangent of the gradient checks: ``+-(1 + j/8)``, exact in
    every dtype and never zero."""
    i = np.arange(n)
    dy = (1 + (i % 8) / 8) * np.where(i % 3 == 0, -1.0, 1.0)
    return dy.astype(np.float32).astype(dtype)


@dataclasses.dataclass
class ElementCase:
    """One (configuration, statistics) case with inputs per dtype."""

    config: tuple[int, int, bool]
    stats_index: int
    min_val: np.float32
    max_val: np.float32
    inputs: dict  # dtype name -> (x, dy), flat

    @property
    def key(self) -> str:
        b, k, s = self.config
        return f"element b={b} k={k} {'signed' if s else 'unsigned'} stats={self.stats_index}"


def build_element_cases() -> list[ElementCase]:
    """The element cases, inputs built from scratch (what the generator uses)."""
    cases = []
    for b, k, s in CONFIGS:
        for si, (mn, mx) in enumerate(STATS):
            alpha, levels = exact_levels(b, k, s, mn, mx)
            seed = _seed(b, k, s, si)
            x32, _ = float32_inputs(alpha, levels, seed)
            inputs = {"float32": (x32, dy_pattern(x32.size, _F32))}
            if si in LOW_PRECISION_STATS:
                for j, name in enumerate(("bfloat16", "float16")):
                    x = low_precision_inputs(alpha, levels, name, _seed(seed, 7 + j))
                    inputs[name] = (x, dy_pattern(x.size, x.dtype))
            cases.append(ElementCase((b, k, s), si, _F32(mn), _F32(mx), inputs))
    return cases


# --------------------------------------------------------------------------
# file format


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Uncompressed ``.npz`` with fixed metadata: identical bytes for identical arrays."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), version=(1, 0), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


class GoldenFileError(ValueError):
    """A golden file is missing, damaged or does not match its manifest."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _case_count(name: str, arrays: dict[str, np.ndarray]) -> int:
    """Cases a golden file holds: element cases, qparams rows, observer streams."""
    if name == "elements.npz":
        return int(arrays["case"].shape[0])
    if name == "qparams.npz":
        return int(arrays["gamma"].shape[0] + arrays["level_config"].shape[0])
    return int(arrays["stream_offsets"].size - 1)


def write_manifest(directory: Path) -> Path:
    """``manifest.json``: SHA-256 and case count of each file in :data:`FILES`."""
    entries = {}
    for name in FILES:
        path = directory / name
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        entries[name] = {"sha256": _sha256(path), "cases": _case_count(name, arrays)}
    path = directory / MANIFEST
    path.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one golden file, after checking it against the manifest
    beside it (digest, then case count).

    Raises:
      GoldenFileError: the manifest or the file is missing, the file's digest
        differs from the manifest's (truncated, partial or edited), or it
        holds another number of cases.
    """
    path = Path(path)
    manifest_path = path.parent / MANIFEST
    try:
        entry = json.loads(manifest_path.read_text(encoding="utf-8"))[path.name]
    except FileNotFoundError:
        raise GoldenFileError(f"{manifest_path} is missing: golden files are checked against it") from None
    except (KeyError, ValueError) as exc:
        raise GoldenFileError(f"{manifest_path} has no valid entry for {path.name} ({exc!r})") from None
    if not path.is_file():
        raise GoldenFileError(f"golden file {path} is missing")
    digest = _sha256(path)
    if digest != entry["sha256"]:
        raise GoldenFileError(f"golden file {path} is damaged or was changed: SHA-256 {digest[:16]}... "
                              f"!= manifest {entry['sha256'][:16]}... (regenerate with python -m apot_parity generate)")
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    count = _case_count(path.name, arrays)
    if count != entry["cases"]:
        raise GoldenFileError(f"golden file {path} holds {count} cases, the manifest says {entry['cases']}")
    return arrays


def _storage(x: np.ndarray) -> np.ndarray:
    """float32 as is; 16-bit floats as their uint16 bits (portable npy)."""
    return x.view(np.uint16) if x.dtype.itemsize == 2 else x


def _offsets(sizes: Iterable[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(list(sizes), dtype=np.int64)]).astype(np.int64)


def expected_elementwise(x: np.ndarray, dy: np.ndarray, codes: np.ndarray, mask: np.ndarray,
                         levels: np.ndarray, indices: np.ndarray) -> Elementwise:
    """Expand stored ``codes``/``mask`` into the full expected results."""
    n = levels.size
    by_code = np.empty(n, _F32)
    by_code[indices.astype(np.int64)] = levels
    codes = codes.astype(np.int32)
    valid = (codes >= 0) & (codes < n)
    values = np.where(valid, by_code[np.clip(codes, 0, max(n - 1, 0))], _F32(np.nan)).astype(_F32)
    y = values.astype(x.dtype)
    grad = np.where(mask, dy, np.zeros_like(dy)).astype(x.dtype)
    return Elementwise(codes, y, y, grad)


# --------------------------------------------------------------------------
# generator (torch)


class GenerationError(AssertionError):
    """torch's output is not what the compact encoding can hold."""


def _assert_same(what: str, c: Comparison) -> None:
    if not c.ok:
        raise GenerationError(f"{what}: {c.detail}")


def _generate_elements(torch_binding) -> dict[str, np.ndarray]:
    cases = build_element_cases()
    indices: dict[tuple[int, int, bool], np.ndarray]  # level_indices of each (b, k, signed)
    rows, alphas, gammas, levels, indices = [], [], [], [], {}
    per_dtype: dict[str, dict[str, list]] = {d: {"x": [], "codes": [], "mask": [], "sizes": []} for d in DTYPE_NAMES}
    for case in cases:
        b, k, s = case.config
        qp, outs = torch_binding.evaluate(b, k, s, case.min_val, case.max_val, case.inputs)
        rows.append([b, k, int(s), case.stats_index])
        alphas.append(_F32(qp.alpha))
        gammas.append(_F32(qp.gamma))
        levels.append(np.asarray(qp.levels, _F32))
        idx = np.asarray(qp.indices).astype(np.int16)
        if (b, k, s) in indices:  # static per configuration: stored once
            _assert_same(f"{case.key} level_indices", compare("level_indices", idx, indices[(b, k, s)]))
        indices[(b, k, s)] = idx
        for name in DTYPE_NAMES:
            store = per_dtype[name]
            if name not in case.inputs:
                store["sizes"].append(0)
                continue
            x, dy = case.inputs[name]
            out = outs[name]
            mask = out.grad != 0
            expected = expected_elementwise(x, dy, out.codes, mask, levels[-1], idx)
            for c in compare_elementwise(f"{case.key} {name}/", out, expected):
                _assert_same("torch output vs compact encoding", c)
            store["x"].append(_storage(x))
            store["codes"].append(out.codes.astype(np.int16))
            store["mask"].append(mask)
            store["sizes"].append(x.size)
    arrays: dict[str, np.ndarray] = {
        "case": np.array(rows, np.int16),
        "stats": np.array(STATS, _F32),
        "alpha": np.array(alphas, _F32),
        "gamma": np.array(gammas, _F32),
        "level_offsets": _offsets(lv.size for lv in levels),
        "levels": np.concatenate(levels),
        "config": np.array(CONFIGS, np.int16),
        "index_offsets": _offsets(indices[c].size for c in CONFIGS),
        "level_indices": np.concatenate([indices[c] for c in CONFIGS]),
    }
    for name, store in per_dtype.items():
        arrays[f"{name}_offsets"] = _offsets(store["sizes"])
        arrays[f"{name}_x"] = np.concatenate(store["x"])
        arrays[f"{name}_codes"] = np.concatenate(store["codes"])
        arrays[f"{name}_mask"] = np.packbits(np.concatenate(store["mask"]))
    return arrays


#: Configurations whose levels are stored for many statistics: k = 8 (level
#: products that flush), k = 4 (sums not exact in float32), the signed table
#: with duplicates, and k = 3.
LEVEL_CONFIGS = ((8, 8, False), (8, 4, False), (4, 2, True), (6, 3, False))
GAMMA_STATS = 512
LEVEL_STATS = 32


def qparams_stats(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (min_val, max_val) pairs over every float32 magnitude, plus
    special values (zeros, subnormals, the extremes, inf, NaN, unobserved)."""
    tiny = np.finfo(_F32).tiny
    fmax = np.finfo(_F32).max
    special = [
        (-1.0, 1.0), (0.0, 0.0), (-0.0, 0.0), (0.0, tiny), (-tiny, 0.0), (0.0, tiny / 2), (-tiny / 4, 1e-45),
        (0.0, np.nextafter(tiny, _F32(1))), (-fmax, 0.0), (0.0, fmax), (0.0, np.inf), (-np.inf, 0.0),
        (np.nan, 1.0), (0.0, np.nan), (np.inf, -np.inf), (3.0, 2.0), (-2.0, -3.0), (1.5, 1.5),
    ]
    u = uniform(seed, 3 * n)
    mags = 2.0 ** (u[:n] * 253 - 126)  # normal range, 2**-126 .. 2**127
    mantissa_bits = (_splitmix64(seed + 5, n) & np.uint64(0x7FFFFF)).astype(np.uint32)
    alpha = mags.astype(_F32)
    alpha = ((alpha.view(np.uint32) & np.uint32(0xFF800000)) | mantissa_bits).view(_F32)
    other = (alpha.astype(np.float64) * u[n : 2 * n]).astype(_F32)
    neg = u[2 * n :] < 0.5  # alpha from -min_val or from max_val
    mins = np.where(neg, -alpha, -other).astype(_F32)
    maxs = np.where(neg, other, alpha).astype(_F32)
    sp = np.array(special, _F32)
    return (np.concatenate([sp[:, 0], mins])[:n].astype(_F32), np.concatenate([sp[:, 1], maxs])[:n].astype(_F32))


def _generate_qparams(torch_binding) -> dict[str, np.ndarray]:
    arrays: dict[str, list] = {"gamma_min": [], "gamma_max": [], "gamma_alpha": [], "gamma": []}
    for n in range(1, 9):
        mn, mx = qparams_stats(GAMMA_STATS, _seed(17, n))
        qp = torch_binding.qparams(mn, mx, n, 1, False)
        for key, value in (("gamma_min", mn), ("gamma_max", mx), ("gamma_alpha", qp.alpha), ("gamma", qp.gamma)):
            arrays[key].append(np.asarray(value, _F32))
    out = {key: np.stack(v) for key, v in arrays.items()}
    lv_min, lv_max, lv_alpha, lv_gamma, lv_levels = [], [], [], [], []
    for b, k, s in LEVEL_CONFIGS:
        mn, mx = qparams_stats(LEVEL_STATS, _seed(23, b, k, s))
        qp = torch_binding.qparams(mn, mx, b, k, s)
        lv_min.append(mn)
        lv_max.append(mx)
        lv_alpha.append(np.asarray(qp.alpha, _F32))
        lv_gamma.append(np.asarray(qp.gamma, _F32))
        lv_levels.append(np.asarray(qp.levels, _F32).ravel())
    out.update(
        level_config=np.array(LEVEL_CONFIGS, np.int16),
        level_min=np.stack(lv_min),
        level_max=np.stack(lv_max),
        level_alpha=np.stack(lv_alpha),
        level_gamma=np.stack(lv_gamma),
        level_offsets=_offsets(lv.size for lv in lv_levels),
        levels=np.concatenate(lv_levels),
    )
    return out


def observer_streams() -> list[list[np.ndarray]]:
    """Batch streams for the observer: float32/bf16/f16 batches (values stored
    as float32, exact in their dtype), empty batches, NaN/inf mixed in,
    subnormals, and both signs of zero as the running min or max (zeros and
    subnormals are observed as +0.0, docs/numerics.md section 2)."""
    bf16, f16 = numpy_dtype("bfloat16"), numpy_dtype("float16")
    tiny = np.finfo(_F32).tiny

    def rand(seed, n, scale, dtype=_F32):
        return ((uniform(seed, n) * 2 - 1) * scale).astype(_F32).astype(dtype)

    def with_specials(a, seed):
        a = a.copy()
        pos = (uniform(seed, 3) * a.size).astype(np.int64)
        a[pos[0]], a[pos[1]], a[pos[2]] = np.nan, np.inf, -np.inf
        return a

    e32 = np.zeros(0, _F32)
    return [
        [rand(1, 7, 1.0), with_specials(rand(2, 64, 3.0), 3), rand(4, 1, 0.1), with_specials(rand(5, 33, 40.0), 6),
         e32, rand(7, 128, 0.01)],
        [e32, np.array([np.nan, np.nan], _F32), np.array([np.inf, -np.inf, np.nan], _F32), e32,
         np.array([0.75], _F32), with_specials(rand(8, 16, 100.0), 9)],
        [rand(10, 12, 2.0, bf16), with_specials(rand(11, 40, 7.0, bf16), 12),
         np.array([np.inf, np.nan], bf16), rand(13, 5, 300.0, bf16)],
        [rand(14, 12, 2.0, f16), with_specials(rand(15, 40, 7.0, f16), 16),
         np.array([-np.inf, 65504.0, -65504.0], f16), rand(17, 9, 1e-3, f16)],
        [np.array([1e-40, 0.5], _F32), np.array([-1e-40, -3.0, 5.0], _F32),
         np.array([tiny, -tiny, tiny / 2], _F32), rand(18, 20, 1.0, bf16), rand(19, 20, 1.0, f16)],
        [np.array([-0.0], _F32), np.array([-1e-41, -2e-39], _F32), np.array([0.25], _F32), e32],
        [np.array([1e-42], _F32), np.array([3e38, -3e38], _F32), np.array([np.finfo(_F32).max], _F32)],
        [np.array([-0.0, 0.0, -0.0], _F32), np.array([-2.0, 0.0, -0.0], _F32),
         np.array([-1e-40, 1e-40, -0.0], _F32), np.array([-0.0, 3.0], bf16), np.array([0.0, -0.0], f16)],
    ]


_DTYPE_CODE = {"float32": 0, "bfloat16": 1, "float16": 2}
_CODE_DTYPE = {v: k for k, v in _DTYPE_CODE.items()}


def _generate_observer(torch_binding) -> dict[str, np.ndarray]:
    values, sizes, dtypes, stream_sizes, after_min, after_max = [], [], [], [], [], []
    for stream in observer_streams():
        states = torch_binding.observe_stream(stream)
        stream_sizes.append(len(stream))
        for batch, (mn, mx) in zip(stream, states):
            values.append(np.asarray(batch).astype(_F32))
            sizes.append(batch.size)
            dtypes.append(_DTYPE_CODE[batch.dtype.name])
            after_min.append(_F32(mn))
            after_max.append(_F32(mx))
    return {
        "batch_offsets": _offsets(sizes),
        "batch_dtype": np.array(dtypes, np.int8),
        "batch_values": np.concatenate(values),
        "stream_offsets": _offsets(stream_sizes),
        "after_min": np.array(after_min, _F32),
        "after_max": np.array(after_max, _F32),
    }


def generate(directory: Path | str = GOLDEN_DIR) -> list[Path]:
    """Compute the golden vectors with ``apot_torch`` on the CPU and write
    them with their manifest; returns the paths written."""
    from apot_parity.bindings import TorchBinding

    binding = TorchBinding("cpu")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    produced = {
        "elements.npz": _generate_elements(binding),
        "qparams.npz": _generate_qparams(binding),
        "observer.npz": _generate_observer(binding),
    }
    paths = []
    for name, arrays in produced.items():
        path = directory / name
        write_npz(path, arrays)
        paths.append(path)
    paths.append(write_manifest(directory))
    return paths


# --------------------------------------------------------------------------
# checker (for a JAX backend: never imports torch)


def stored_element_cases(directory: Path | str = GOLDEN_DIR) -> tuple[list[ElementCase], dict]:
    """The element cases as stored (inputs read back from the file), and the
    raw arrays."""
    g = load_npz(Path(directory) / "elements.npz")
    stats = g["stats"]
    cases = []
    for i, (b, k, s, si) in enumerate(g["case"].tolist()):
        inputs = {}
        for name in DTYPE_NAMES:
            lo, hi = g[f"{name}_offsets"][i], g[f"{name}_offsets"][i + 1]
            if hi > lo:
                x = g[f"{name}_x"][lo:hi].view(numpy_dtype(name))
                inputs[name] = (x, dy_pattern(x.size, x.dtype))
        cases.append(ElementCase((b, k, bool(s)), si, stats[si, 0], stats[si, 1], inputs))
    return cases, g


def element_cases(directory: Path | str = GOLDEN_DIR) -> list[ElementCase]:
    """The stored element cases (inputs from the committed file)."""
    return stored_element_cases(directory)[0]


class UnknownConfigError(ValueError):
    """A requested ``(b, k, signed)`` has no stored golden case."""


def select_configs(configs: Iterable[tuple[int, int, bool]] | None,
                   directory: Path | str = GOLDEN_DIR) -> frozenset[tuple[int, int, bool]] | None:
    """``configs`` as a set of ``(b, k, signed)``, each checked to have stored
    element cases in ``directory`` (``None``: no restriction).

    Raises:
      UnknownConfigError: a configuration has no stored case.
    """
    if configs is None:
        return None
    select = frozenset((int(b), int(k), bool(s)) for b, k, s in configs)
    unknown = select - {case.config for case in element_cases(directory)}
    if unknown:
        raise UnknownConfigError(f"no golden case for configs {sorted(unknown)}")
    return select


def _check_elements(binding, directory: Path, select) -> list[Result]:
    cases, g = stored_element_cases(directory)
    results = []
    masks = {name: np.unpackbits(g[f"{name}_mask"]).astype(bool) for name in DTYPE_NAMES}
    config_row = {(b, k, bool(s)): j for j, (b, k, s) in enumerate(g["config"].tolist())}
    for i, case in enumerate(cases):
        if select is not None and case.config not in select:
            continue
        lo, hi = g["level_offsets"][i], g["level_offsets"][i + 1]
        c = config_row[case.config]
        indices = g["level_indices"][g["index_offsets"][c] : g["index_offsets"][c + 1]]
        expected_qp = QParams(g["alpha"][i], g["gamma"][i], g["levels"][lo:hi], indices)
        qp, outs = binding.evaluate(*case.config, case.min_val, case.max_val, case.inputs)
        comps = compare_qparams(qp, expected_qp)
        for name, (x, dy) in case.inputs.items():
            a, b = g[f"{name}_offsets"][i], g[f"{name}_offsets"][i + 1]
            expected = expected_elementwise(x, dy, g[f"{name}_codes"][a:b], masks[name][a:b],
                                            expected_qp.levels, expected_qp.indices)
            comps += compare_elementwise(f"{name}/", outs[name], expected)
        results += [Result.from_comparison(binding.name, case.key, c, "golden") for c in comps]
    return results


def _check_qparams(binding, directory: Path, select) -> list[Result]:
    g = load_npz(Path(directory) / "qparams.npz")
    results = []
    for n in range(1, 9):
        if select is not None and (n, 1, False) not in select:
            continue
        qp = binding.qparams(g["gamma_min"][n - 1], g["gamma_max"][n - 1], n, 1, False)
        for c in compare_qparams(qp, QParams(g["gamma_alpha"][n - 1], g["gamma"][n - 1], qp.levels, qp.indices))[:2]:
            results.append(Result.from_comparison(binding.name, f"qparams gamma n={n}", c, "golden"))
    for i, (b, k, s) in enumerate(g["level_config"].tolist()):
        if select is not None and (b, k, bool(s)) not in select:
            continue
        qp = binding.qparams(g["level_min"][i], g["level_max"][i], b, k, bool(s))
        lo, hi = g["level_offsets"][i], g["level_offsets"][i + 1]
        table = level_table(b, k, bool(s))
        expected = QParams(g["level_alpha"][i], g["level_gamma"][i],
                           g["levels"][lo:hi].reshape(np.shape(qp.levels)), table.level_indices)
        comps = compare_qparams(qp, expected)
        key = f"qparams levels b={b} k={k} {'signed' if s else 'unsigned'}"
        results += [Result.from_comparison(binding.name, key, c, "golden") for c in comps]
    return results


def stored_observer_streams(directory: Path | str = GOLDEN_DIR):
    """``[(batches, expected [(min, max)] per batch)]`` from ``observer.npz``."""
    g = load_npz(Path(directory) / "observer.npz")
    batches = [
        g["batch_values"][g["batch_offsets"][i] : g["batch_offsets"][i + 1]].astype(
            numpy_dtype(_CODE_DTYPE[int(g["batch_dtype"][i])]))
        for i in range(g["batch_dtype"].size)
    ]
    streams = []
    so = g["stream_offsets"]
    for s in range(so.size - 1):
        idx = range(so[s], so[s + 1])
        streams.append(([batches[i] for i in idx], [(g["after_min"][i], g["after_max"][i]) for i in idx]))
    return streams


def _check_observer(binding, directory: Path) -> list[Result]:
    results = []
    for s, (batches, expected) in enumerate(stored_observer_streams(directory)):
        states = binding.observe_stream(batches)
        got_min = np.array([_F32(m) for m, _ in states], _F32)
        got_max = np.array([_F32(m) for _, m in states], _F32)
        exp_min = np.array([m for m, _ in expected], _F32)
        exp_max = np.array([m for _, m in expected], _F32)
        for c in (compare_state("min_val", got_min, exp_min), compare_state("max_val", got_max, exp_max)):
            results.append(Result.from_comparison(binding.name, f"observer stream={s}", c, "golden"))
    return results


def check_golden(backend: str | None = None, directory: Path | str = GOLDEN_DIR,
                 configs: Sequence[tuple[int, int, bool]] | None = None) -> list[Result]:
    """Validate one backend against the golden files.

    Args:
      backend: ``"jax-cpu"``, ``"jax-gpu"``, ``"jax-tpu"`` (or just the JAX
        platform name), or ``"torch-cpu"`` / ``"torch-cuda"``; ``None`` is
        JAX's default backend.
      directory: where the ``.npz`` files are (default: the packaged ones).
      configs: restrict the element and qparams cases to these ``(b, k,
        signed)`` (default: all); the observer streams, which have no
        configuration, are always checked.

    Returns:
      One :class:`apot_parity.compare.Result` per comparison; ``status`` is
      ``"pass"`` for bitwise equality (NaN matches NaN) and ``"fail"``
      otherwise.

    Raises:
      GoldenFileError: a file is missing or does not match the manifest.
      UnknownConfigError: ``configs`` names a configuration with no stored
        case (a ``ValueError``).

    Imports torch only when a torch backend is asked for: a JAX backend is
    checked with JAX and numpy alone.
    """
    if backend is None:
        import jax

        backend = f"jax-{jax.default_backend()}"
    if not backend.startswith(("jax-", "torch-")):
        backend = f"jax-{backend}"
    binding = make_binding(backend)
    directory = Path(directory)
    select = select_configs(configs, directory)
    results = _check_qparams(binding, directory, select)
    results += _check_elements(binding, directory, select)
    return results + _check_observer(binding, directory)


__all__ = ["CONFIGS", "GOLDEN_DIR", "GoldenFileError", "check_golden", "element_cases", "generate",
           "UnknownConfigError", "parse_configs", "select_configs", "stored_element_cases",
           "stored_observer_streams"]
