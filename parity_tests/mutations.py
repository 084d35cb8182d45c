"""One-ulp mutations of the numerics, as a pytest plugin, for the mutation check.

``APOT_MUTATION=<name> python -m pytest -p parity_tests.mutations ...`` runs
the tests with one result of one numeric area moved by one ulp (one element,
``nextafter`` towards ``+inf``), by wrapping a function at run time: no source
file is changed, so nothing has to be restored and nobody else working in the
checkout sees it. Without ``APOT_MUTATION`` (or with ``none``) the plugin does
nothing. ``parity_tests/mutation_check.py`` runs every mutation against the
tests of its area and reports how many fail.

Mutations (:data:`MUTATIONS`): name -> (area, what moves by one ulp).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

#: name -> (area, description)
MUTATIONS: dict[str, tuple[str, str]] = {
    "core": ("core", "apot_torch.quant_dequant_APoT: the first finite nonzero output element"),
    "core-jax": ("core", "apot_jax.quantizer.quant_dequant: the first output element that is a nonzero number"),
    "observer": ("observer", "apot_torch.APoTObserver.forward: the running max_val after every batch"),
    "modules": ("modules", "apot_torch.APoTFakeQuantize.forward: the first finite nonzero output element"),
    "paper-alpha-grad": ("paper recipe", "apot_torch.paper.learnable_fake_quantize_function.backward: grad of alpha"),
    "paper-levels": ("paper recipe", "apot_torch.paper.sign_magnitude_qparams: the highest level"),
    "export": ("export", "apot_torch.export.export_weight: the exported gamma"),
    "training": ("training", "apot_jax.train.make_train_step: the first element of the first parameter after a step"),
}


def _nudge_torch(t: Any) -> Any:
    """A copy of tensor ``t`` with its first finite nonzero element one ulp up."""
    import torch

    out = t.detach().clone()
    flat = out.reshape(-1)
    ok = torch.isfinite(flat) & (flat != 0)
    if bool(ok.any()):
        i = int(torch.nonzero(ok)[0])
        flat[i] = torch.nextafter(flat[i], torch.tensor(float("inf"), dtype=flat.dtype, device=flat.device))
    if t.requires_grad:  # keep the graph: t + (exact one-ulp difference)
        return t + (out - t.detach()).detach()
    return out


def _nudge_jax(a: Any) -> Any:
    import jax.numpy as jnp

    flat = a.reshape(-1)
    ok = jnp.isfinite(flat) & (flat != 0)
    i = jnp.argmax(ok)
    moved = jnp.nextafter(flat[i], jnp.asarray(jnp.inf, flat.dtype))
    return flat.at[i].set(jnp.where(ok[i], moved, flat[i])).reshape(a.shape)


def _wrap(owner: Any, name: str, after: Callable[[Any], Any]) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        return after(original(*args, **kwargs))

    setattr(owner, name, wrapped)


def apply(name: str) -> None:
    """Install mutation ``name`` (``KeyError`` for an unknown one)."""
    if name not in MUTATIONS:
        raise KeyError(f"unknown mutation {name!r}; choose from {', '.join(MUTATIONS)}")
    if name == "core":
        import apot_torch

        _wrap(apot_torch, "quant_dequant_APoT", _nudge_torch)
    elif name == "core-jax":
        import apot_jax
        import apot_jax.quantizer as q

        _wrap(q, "quant_dequant", _nudge_jax)
        apot_jax.quant_dequant = q.quant_dequant
    elif name == "observer":
        import torch

        from apot_torch.observer import APoTObserver

        original = APoTObserver.forward

        def forward(self, x_orig):
            out = original(self, x_orig)
            if bool(torch.isfinite(self.max_val)) and float(self.max_val) != 0:
                self.max_val.copy_(_nudge_torch(self.max_val))
            return out

        APoTObserver.forward = forward
    elif name == "modules":
        from apot_torch.fake_quantize_module import APoTFakeQuantize

        _wrap(APoTFakeQuantize, "forward", _nudge_torch)
    elif name == "paper-alpha-grad":
        from apot_torch.paper import learnable_fake_quantize_function as f

        original = f.backward

        def backward(ctx, grad_output):
            grads = list(original(ctx, grad_output))
            if grads[1] is not None:
                grads[1] = _nudge_torch(grads[1])
            return tuple(grads)

        f.backward = staticmethod(backward)
    elif name == "paper-levels":
        import apot_torch
        import apot_torch.export
        import apot_torch.paper as p

        def levels_up(qp):
            levels = qp.quantization_levels.clone()
            levels[..., -1] = _nudge_torch(levels[..., -1])
            return qp._replace(quantization_levels=levels)

        _wrap(p, "sign_magnitude_qparams", levels_up)
        apot_torch.sign_magnitude_qparams = p.sign_magnitude_qparams
    elif name == "export":
        import dataclasses

        import apot_torch
        import apot_torch.export as e

        _wrap(e, "export_weight", lambda ex: dataclasses.replace(ex, gamma=_nudge_torch(ex.gamma)))
        apot_torch.export_weight = e.export_weight
    elif name == "training":
        import jax

        import apot_jax.train as t

        original = t.make_train_step

        @functools.wraps(original)
        def make_train_step(*args, **kwargs):
            step = original(*args, **kwargs)

            def mutated(state, x, y):
                new, metrics = step(state, x, y)
                leaves, tree = jax.tree_util.tree_flatten(new.params)
                leaves[0] = _nudge_jax(leaves[0])
                return new.replace(params=jax.tree_util.tree_unflatten(tree, leaves)), metrics

            return mutated

        t.make_train_step = make_train_step


def pytest_configure(config) -> None:
    name = os.environ.get("APOT_MUTATION", "none")
    if name != "none":
        apply(name)
        config.addinivalue_line("markers", f"apot_mutation_{name.replace('-', '_')}: mutation in effect")


def pytest_report_header(config) -> str:
    name = os.environ.get("APOT_MUTATION", "none")
    return f"apot mutation: {name}" + (f" ({MUTATIONS[name][1]})" if name in MUTATIONS else "")
