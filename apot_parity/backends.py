"""Which parity backends exist here, and the binding of each.

Backends: ``jax-cpu``, ``jax-gpu``, ``jax-tpu`` (``jax.devices``),
``torch-cpu``, ``torch-cuda``. An absent backend comes with the reason, so
the suite and ``python -m apot_parity`` report it as skipped instead of
failing. Neither framework is imported at module level: the golden checker
runs on a Colab TPU where torch is absent.
"""

from __future__ import annotations

import dataclasses
import functools

#: Every backend the suite knows, in report order.
ALL_BACKENDS = ("jax-cpu", "jax-gpu", "jax-tpu", "torch-cpu", "torch-cuda")


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    """One backend: whether it is usable here and, if not, why."""

    name: str
    available: bool
    reason: str = ""


def _jax_status(platform: str) -> BackendStatus:
    name = f"jax-{platform}"
    try:
        import jax
    except ImportError as exc:
        return BackendStatus(name, False, f"jax is not installed ({exc})")
    try:
        devices = jax.devices(platform)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return BackendStatus(name, False, f"no JAX {platform} backend: {first_line}")
    if not devices:
        return BackendStatus(name, False, f"no JAX {platform} device")
    return BackendStatus(name, True, f"{len(devices)} device(s), using {devices[0]}")


def _torch_status(device: str) -> BackendStatus:
    name = f"torch-{device}"
    try:
        import torch
    except ImportError as exc:
        return BackendStatus(name, False, f"torch is not installed ({exc})")
    if device == "cuda" and not torch.cuda.is_available():
        return BackendStatus(name, False, "torch.cuda.is_available() is False")
    return BackendStatus(name, True, f"torch {torch.__version__}")


@functools.lru_cache(maxsize=None)
def backend_status(name: str) -> BackendStatus:
    """Availability of one backend name from :data:`ALL_BACKENDS`."""
    if name not in ALL_BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(ALL_BACKENDS)}")
    framework, device = name.split("-", 1)
    return _jax_status(device) if framework == "jax" else _torch_status(device)


def parse_backends(spec: str | None) -> tuple[str, ...]:
    """``"jax-cpu,torch-cpu"`` -> tuple of names; ``None``/``"all"`` -> all.

    Also accepts ``jax`` / ``torch`` for every backend of that framework.
    """
    if spec is None or spec.strip() in ("", "all"):
        return ALL_BACKENDS
    names: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item in ("jax", "torch"):
            names += [b for b in ALL_BACKENDS if b.startswith(item + "-")]
        elif item in ALL_BACKENDS:
            names.append(item)
        else:
            raise ValueError(f"unknown backend {item!r}; choose from {', '.join(ALL_BACKENDS)}, jax, torch, all")
    return tuple(dict.fromkeys(names))


def make_binding(name: str):
    """The binding of an available backend name (``ValueError`` if absent)."""
    status = backend_status(name)
    if not status.available:
        raise ValueError(f"backend {name} is not available: {status.reason}")
    framework, device = name.split("-", 1)
    return _jax_binding(device) if framework == "jax" else _torch_binding(device)


@functools.lru_cache(maxsize=None)
def _jax_binding(platform: str):
    from apot_parity.bindings import JaxBinding

    return JaxBinding(platform)


@functools.lru_cache(maxsize=None)
def _torch_binding(device: str):
    from apot_parity.bindings import TorchBinding

    return TorchBinding(device)


__all__ = ["ALL_BACKENDS", "BackendStatus", "backend_status", "make_binding", "parse_backends"]
