"""The notebooks in ``notebooks/``.

* Committed without outputs (no outputs, no execution counts, no widget
  state) and valid nbformat v4 with a ``parameters`` cell; no kernel needed.
* Executed headless end to end (``@pytest.mark.notebook``) with
  ``APOT_NOTEBOOK_SMALL=1`` on the CPU, in a kernel that runs *this*
  interpreter (a kernel spec written to a temporary ``JUPYTER_PATH``, so a
  fresh ``pip install -e '.[all]'`` needs no ``ipykernel install``). A cell
  error fails the test, and the notebooks ``assert`` their checked results
  (bitwise agreement, accuracy floors, level counts), so a wrong result fails
  it too. The kernel gets eight host CPU devices (like the rest of the test
  suite), so the QAT notebook takes its data-parallel path.
* The validation notebook is run a second time with torch made unimportable
  and a golden file corrupted: it must print that it skips the live part and
  then fail its verdict.

Executed notebooks are kept in memory only; nothing is written back to
``notebooks/``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = ("apot_qat_tpu.ipynb", "cross_framework_validation.ipynb")
KERNEL_NAME = "apot-notebook-test"
CELL_TIMEOUT = 600  # seconds per cell; the whole small run takes about two minutes
PROBE = "APOT_KERNEL_PROBE "
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load_json(name: str) -> dict:
    return json.loads((NOTEBOOK_DIR / name).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------
# committed form (no kernel)


def test_expected_notebooks_exist():
    present = {p.name for p in NOTEBOOK_DIR.glob("*.ipynb")}
    assert set(NOTEBOOKS) <= present, f"missing: {set(NOTEBOOKS) - present}"


def _strip_outputs_module():
    sys.path.insert(0, str(NOTEBOOK_DIR))
    try:
        import strip_outputs
    finally:
        sys.path.remove(str(NOTEBOOK_DIR))
    return strip_outputs


@pytest.mark.parametrize("path", sorted(NOTEBOOK_DIR.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path):
    nbformat = pytest.importorskip("nbformat")
    dirty = _strip_outputs_module().leftovers(nbformat.read(path, as_version=4))
    assert not dirty, f"{path.name}: {'; '.join(dirty)}; run `python notebooks/strip_outputs.py` before committing"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_v4_with_parameters_cell(name):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = code[0]
    assert "parameters" in first.metadata.get("tags", []), "the first code cell is the parameter cell"
    for variable in ("APOT_NOTEBOOK_SMALL", "APOT_PIP_SPEC", "APOT_FIGURE_DIR"):
        assert variable in first.source
    # the install cell only installs when apot_jax cannot be imported
    install = code[1].source
    assert "import apot_jax" in install and "except ImportError" in install and "APOT_PIP_SPEC" in install
    assert "github.com" not in "".join(c.source for c in nb.cells), "no invented repository address"
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    assert markdown[0].source.startswith("# ") and len(markdown) >= 5
    assert nb.metadata.kernelspec.name == "python3"


def test_strip_outputs_helper(tmp_path, capsys):
    nbformat = pytest.importorskip("nbformat")
    strip_outputs = _strip_outputs_module()
    path = tmp_path / "dirty.ipynb"
    nb = nbformat.read(NOTEBOOK_DIR / NOTEBOOKS[1], as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    cell.execution_count = 3
    nbformat.write(nb, path)
    assert strip_outputs.main(["--check", str(path)]) == 1
    assert "1 output(s)" in capsys.readouterr().out
    assert strip_outputs.main([str(path)]) == 0
    assert strip_outputs.main(["--check", str(path)]) == 0
    stripped = nbformat.read(path, as_version=4)
    nbformat.validate(stripped)
    assert strip_outputs.leftovers(stripped) == []
    assert [c.source for c in stripped.cells] == [c.source for c in nb.cells]  # only outputs removed


# --------------------------------------------------------------------------
# headless execution


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernel spec for this interpreter and the kernel's environment."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    base = tmp_path_factory.mktemp("jupyter")
    spec_dir = base / "data" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "apot tests (this interpreter)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_force_host_platform_device_count" not in xla_flags:
        xla_flags = f"{xla_flags} --xla_force_host_platform_device_count=8".strip()
    env = {
        "JUPYTER_PATH": os.pathsep.join([str(base / "data"), *filter(None, [os.environ.get("JUPYTER_PATH")])]),
        "IPYTHONDIR": str(base / "ipython"),  # no user profile or startup files
        "APOT_NOTEBOOK_SMALL": "1",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags,
        "APOT_PIP_SPEC": "",  # never pip install during the tests
        "APOT_GOLDEN_DIR": "",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield env


def _execute(name: str, workdir: Path, expect_error: bool = False):
    """Run a notebook (plus a probe cell) in the test kernel; returns it with
    its outputs, and with ``expect_error`` also the ``CellExecutionError``
    (``None`` if every cell ran)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "import json as _j, sys as _s, jax as _jax\n"
            f"print({PROBE!r} + _j.dumps({{'executable': _s.executable, 'prefix': _s.prefix, 'small': SMALL,"
            " 'backend': _jax.default_backend(), 'devices': _jax.device_count()}))"
        )
    )
    client = NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT,
        startup_timeout=120,
        allow_errors=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    if not expect_error:
        client.execute()  # a CellExecutionError (with the cell and traceback) fails the test
        return nb
    try:
        client.execute()
    except CellExecutionError as exc:
        return nb, exc
    return nb, None


def _stream_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "text/plain" in out.get("data", {}):
                parts.append(out["data"]["text/plain"])
    return "".join(parts)


def _images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def _probe(nb) -> dict:
    for line in _stream_text(nb).splitlines():
        if line.startswith(PROBE):
            return json.loads(line[len(PROBE) :])
    raise AssertionError("probe cell printed nothing")


def _check_kernel(probe: dict) -> None:
    # The kernel is this interpreter (the venv's python), in small mode, on the CPU.
    assert probe["executable"] == sys.executable and probe["prefix"] == sys.prefix
    assert probe["small"] is True and probe["backend"] == "cpu"


def _check_png(path: Path) -> None:
    assert path.is_file(), f"{path} not written"
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000


@pytest.mark.notebook
def test_qat_notebook_executes(kernel_env, monkeypatch, tmp_path):
    figures = tmp_path / "figures"
    monkeypatch.setenv("APOT_FIGURE_DIR", str(figures))
    nb = _execute("apot_qat_tpu.ipynb", tmp_path)
    probe = _probe(nb)
    _check_kernel(probe)
    text = _stream_text(nb)
    assert probe["devices"] == 8
    assert "using the CPU: data parallel over 8 devices" in text
    assert "(data parallel)" in text and "reach 75 % test accuracy on the CPU" in text
    for variant in ("float", "apot 4-bit", "apot 3-bit", "apot 2-bit", "uniform 2-bit"):
        assert f"{variant}: test accuracy" in text
    assert _images(nb) == 3
    for name in ("apot_levels_vs_uniform.png", "apot_qat_learning_curves.png", "apot_qat_accuracy_per_bits.png"):
        _check_png(figures / name)
    assert not list(NOTEBOOK_DIR.glob("*.png")), "the notebook wrote files next to itself"


@pytest.mark.notebook
def test_validation_notebook_executes(kernel_env, monkeypatch, tmp_path):
    figures = tmp_path / "figures"
    monkeypatch.setenv("APOT_FIGURE_DIR", str(figures))
    nb = _execute("cross_framework_validation.ipynb", tmp_path)
    _check_kernel(_probe(nb))
    text = _stream_text(nb)
    assert "golden vectors vs jax-cpu:" in text and ", 0 mismatches" in text
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "torch is not installed here: skipping the live comparison" in text
    else:
        assert "jax-cpu vs torch-cpu, live:" in text
        assert "live comparisons with apot_torch on jax-cpu" in text
    assert "bitwise equal:" in text
    assert _images(nb) == 1
    _check_png(figures / "cross_framework_differences.png")


@pytest.mark.notebook
def test_validation_notebook_without_torch_fails_on_a_wrong_golden_value(kernel_env, monkeypatch, tmp_path):
    """torch unimportable: the live part is skipped with a message. One
    golden alpha changed: the verdict cell must fail."""
    import numpy as np

    from apot_parity import golden

    hidden = tmp_path / "hide_torch" / "torch"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('torch hidden by tests/test_notebooks.py')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hidden.parent), os.environ.get("PYTHONPATH")])))

    corrupt = tmp_path / "golden"
    shutil.copytree(golden.GOLDEN_DIR, corrupt)
    with np.load(corrupt / "elements.npz") as f:
        arrays = dict(f)
    alpha = arrays["alpha"]
    in_subset = np.array([(b, k, s) == (4, 2, 0) for b, k, s, _ in arrays["case"].tolist()])  # in the small subset
    i = int(np.flatnonzero(in_subset & np.isfinite(alpha) & (alpha > 0))[0])
    alpha[i] = np.nextafter(alpha[i], np.float32(np.inf))  # one ulp off
    np.savez(corrupt / "elements.npz", **arrays)
    # a consistent manifest: the file is intact, one value in it is wrong (a
    # damaged file is refused before any check: parity_tests/test_golden.py)
    golden.write_manifest(corrupt)
    monkeypatch.setenv("APOT_GOLDEN_DIR", str(corrupt))

    nb, error = _execute("cross_framework_validation.ipynb", tmp_path, expect_error=True)
    assert error is not None, "the verdict passed with a wrong golden value"
    assert "AssertionError" in str(error) and "not bitwise equal" in str(error)
    text = _stream_text(nb)
    assert "torch is not installed here: skipping the live comparison with apot_torch" in text
    assert "golden vectors vs jax-cpu:" in text and ", 1 mismatches" in text
    assert "MISMATCH golden element b=4 k=2 unsigned" in text and "alpha" in text
