"""The examples in the docstrings run (``doctest``), and the headline APIs
have one."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("apot_common", "apot_jax", "apot_torch", "apot_parity")
#: Modules whose import needs an optional extra (skipped with the reason if absent).
OPTIONAL = {"apot_jax.qwix": "qwix", "apot_torch.torchao": "torchao", "apot_torch.pt2e": "torchao"}

#: The headline APIs: each must carry a runnable example.
HEADLINE = (
    "apot_common.config",
    "apot_jax.observer.calculate_qparams",
    "apot_jax.quantizer.quantize",
    "apot_jax.fake_quantize_function.fake_quantize",
    "apot_jax.fake_quantize_module.linen_from_config",
    "apot_jax.nnx",
    "apot_jax.linen",
    "apot_jax.qwix",
    "apot_torch.fake_quantize_module.from_config",
    "apot_torch.qconfig.qconfig",
    "apot_parity",
)


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        pkg = importlib.import_module(package)
        found = pkgutil.walk_packages(pkg.__path__, package + ".")
        names += [m.name for m in found if not m.name.endswith("__main__")]
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name], reason=f"{name} needs the {OPTIONAL[name]} extra")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


@pytest.mark.parametrize("name", HEADLINE)
def test_headline_api_has_an_example(name):
    module_name, _, attr = name.rpartition(".")
    try:
        obj = importlib.import_module(name)
    except ImportError:
        if module_name in OPTIONAL:
            pytest.importorskip(OPTIONAL[module_name])
        obj = getattr(importlib.import_module(module_name), attr)
    tests = doctest.DocTestFinder(recurse=False).find(obj)
    assert any(t.examples for t in tests), f"{name} has no docstring example"
