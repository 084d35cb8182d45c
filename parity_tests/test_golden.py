"""The golden vectors: checked on every JAX backend, reproducible bit for
bit, equal to the brute-force reference, and checkable without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from apot_parity import backend_status, compare_elementwise, compare_qparams, compare_state, golden
from parity_tests import expected

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_golden_checker(backend, parity):
    results = golden.check_golden(backend.name)
    parity.add_results(results)
    parity.assert_ok()
    cases = {r.case for r in results}
    # every configuration x statistics, the gamma/levels sweeps and the streams
    assert sum(c.startswith("element ") for c in cases) == len(golden.CONFIGS) * len(golden.STATS)
    assert sum(c.startswith("qparams ") for c in cases) == 8 + len(golden.LEVEL_CONFIGS)
    assert sum(c.startswith("observer ") for c in cases) == len(golden.observer_streams())
    assert parity.comparisons > 800_000


def test_golden_files_are_compact_and_deterministic():
    total = 0
    for name in golden.FILES:
        path = golden.GOLDEN_DIR / name
        total += path.stat().st_size
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                assert info.compress_type == zipfile.ZIP_STORED
                assert info.date_time == (1980, 1, 1, 0, 0, 0)
    assert total < 2_000_000


def test_golden_regenerates_bit_for_bit(tmp_path):
    status = backend_status("torch-cpu")
    if not status.available:
        pytest.skip(f"regenerating needs torch on the CPU: {status.reason}")
    golden.generate(tmp_path)
    for name in golden.FILES:
        new, old = golden.load_npz(tmp_path / name), golden.load_npz(golden.GOLDEN_DIR / name)
        assert sorted(new) == sorted(old), name
        for key in old:
            assert new[key].dtype == old[key].dtype and new[key].shape == old[key].shape, (name, key)
            assert new[key].tobytes() == old[key].tobytes(), f"{name}:{key} differs from the committed file"
        assert (tmp_path / name).read_bytes() == (golden.GOLDEN_DIR / name).read_bytes(), name
    manifest = tmp_path / golden.MANIFEST
    assert manifest.read_bytes() == (golden.GOLDEN_DIR / golden.MANIFEST).read_bytes()


def test_golden_equals_brute_force_reference(parity):
    """The committed torch results equal the independent reference."""
    cases, g = golden.stored_element_cases()
    config_row = {(b, k, bool(s)): j for j, (b, k, s) in enumerate(g["config"].tolist())}
    masks = {n: np.unpackbits(g[f"{n}_mask"]).astype(bool) for n in ("float32", "bfloat16", "float16")}
    for i, case in enumerate(cases):
        ref_qp = expected.qparams(*case.config, float(case.min_val), float(case.max_val))
        lo, hi = g["level_offsets"][i], g["level_offsets"][i + 1]
        c = config_row[case.config]
        idx = g["level_indices"][g["index_offsets"][c] : g["index_offsets"][c + 1]]
        stored_qp = golden.QParams(g["alpha"][i], g["gamma"][i], g["levels"][lo:hi], idx)
        comps = compare_qparams(stored_qp, ref_qp)
        for name, (x, dy) in case.inputs.items():
            a, b = g[f"{name}_offsets"][i], g[f"{name}_offsets"][i + 1]
            stored = golden.expected_elementwise(x, dy, g[f"{name}_codes"][a:b], masks[name][a:b],
                                                 stored_qp.levels, stored_qp.indices)
            comps += compare_elementwise(f"{name}/", stored, expected.elementwise(x, dy, ref_qp))
        parity.record("golden-file", case.key, comps)
    for s, (batches, states) in enumerate(golden.stored_observer_streams()):
        ref = expected.observer_states(batches)
        parity.record("golden-file", f"observer stream={s}", [
            compare_state("min_val", np.array([m for m, _ in states]), np.array([m for m, _ in ref])),
            compare_state("max_val", np.array([m for _, m in states]), np.array([m for _, m in ref])),
        ])
    parity.assert_ok()
    assert len(cases) == len(golden.CONFIGS) * len(golden.STATS)


def test_checker_runs_without_torch():
    """What a Colab TPU runs: torch made unimportable, the checker still works."""
    if not backend_status("jax-cpu").available:
        pytest.skip("needs jax on the CPU")
    code = (
        "import sys, json\n"
        "sys.modules['torch'] = None\n"
        "from apot_parity.golden import check_golden\n"
        "r = check_golden('jax-cpu', configs=[(4, 2, False), (3, 3, True)])\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules if sys.modules[m])\n"
        "print(json.dumps([x.status for x in r]))\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    statuses = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(statuses) >= 2 * 7 * 8
    assert set(statuses) == {"pass"}, statuses


def test_checker_detects_a_corrupted_file(tmp_path):
    """Flip one stored code: the checker must report exactly that case."""
    if not backend_status("jax-cpu").available:
        pytest.skip("needs jax on the CPU")
    arrays = golden.load_npz(golden.GOLDEN_DIR / "elements.npz")
    cases, _ = golden.stored_element_cases()
    i = next(j for j, c in enumerate(cases) if c.config == (4, 2, False) and c.stats_index == 1)
    pos = int(arrays["float32_offsets"][i]) + 3
    arrays["float32_codes"] = arrays["float32_codes"].copy()
    arrays["float32_codes"][pos] = (arrays["float32_codes"][pos] + 1) % 16
    golden.write_npz(tmp_path / "elements.npz", arrays)
    for name in ("qparams.npz", "observer.npz"):
        (tmp_path / name).write_bytes((golden.GOLDEN_DIR / name).read_bytes())
    golden.write_manifest(tmp_path)  # a consistent, regenerated-looking set: the comparison must catch it
    results = golden.check_golden("jax-cpu", tmp_path, configs=[(4, 2, False)])
    failed = [(r.case, r.check) for r in results if r.status == "fail"]
    assert ("element b=4 k=2 unsigned stats=1", "float32/codes") in failed
    assert len(failed) == 3  # codes, quant_dequant and fake_quant of that element


def _copy_golden(tmp_path: Path) -> Path:
    for name in (*golden.FILES, golden.MANIFEST):
        (tmp_path / name).write_bytes((golden.GOLDEN_DIR / name).read_bytes())
    return tmp_path


@pytest.mark.parametrize("damage", ["truncated", "edited", "no manifest", "missing file", "fewer cases"])
def test_damaged_golden_file_fails_before_any_check(tmp_path, damage):
    """A truncated, edited or partial file must not pass with fewer checks."""
    directory = _copy_golden(tmp_path)
    path = directory / "elements.npz"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "edited":
        data = bytearray(path.read_bytes())
        data[-100] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "no manifest":
        (directory / golden.MANIFEST).unlink()
    elif damage == "missing file":
        path.unlink()
    else:  # a consistent digest, but the manifest promises more cases
        manifest = json.loads((directory / golden.MANIFEST).read_text())
        manifest["elements.npz"]["cases"] += 1
        (directory / golden.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(golden.GoldenFileError, match="elements.npz|manifest.json"):
        golden.stored_element_cases(directory)


def test_committed_manifest_matches_the_files():
    manifest = json.loads((golden.GOLDEN_DIR / golden.MANIFEST).read_text())
    assert sorted(manifest) == sorted(golden.FILES)
    assert manifest["elements.npz"]["cases"] == len(golden.CONFIGS) * len(golden.STATS)
    assert manifest["observer.npz"]["cases"] == len(golden.observer_streams())
    assert manifest["qparams.npz"]["cases"] == 8 + len(golden.LEVEL_CONFIGS)


def test_python_m_apot_parity_refuses_a_damaged_file(tmp_path):
    """``python -m apot_parity`` (torch blocked, as on a Colab TPU) exits 1
    naming the damaged file before comparing anything."""
    if not backend_status("jax-cpu").available:
        pytest.skip("needs jax on the CPU")
    directory = _copy_golden(tmp_path)
    path = directory / "qparams.npz"
    path.write_bytes(path.read_bytes()[:-10])
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    blocked = ("import runpy, sys; sys.modules['torch'] = None; sys.argv[0] = 'apot_parity'; "
               "runpy.run_module('apot_parity', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", blocked, "--backends", "jax-cpu", "--golden-dir", str(directory)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, (out.stdout[-2000:], out.stderr[-2000:])
    assert "qparams.npz is damaged" in out.stderr
    assert "==" not in out.stdout  # no table: nothing was compared
