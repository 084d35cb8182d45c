"""APoT fake quant for PT2E quantization-aware training (``prepare_qat_pt2e``).

:class:`APoTQuantizer` annotates the weights of
``aten.linear`` / ``aten.conv2d`` (and their inputs, when asked) with
apot_torch's eager fake quants, so the prepared program trains exactly as
the eager modules do. :func:`convert` gives a copy of the prepared graph
that computes from integer weight codes (exportable again). Ops other than
linear/conv2d stay float; a graph with neither is a ``ValueError``.

Not re-exported at the package top level: ``apot_torch.APoTQuantizer`` is
the prototype's quantizer class.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
from torch import Tensor
from torch.ao.quantization.fake_quantize import FakeQuantizeBase

from apot_torch.torchao import APoTFakeQuantizeConfig, FrozenAPoTActivation, _CodesWeight

try:
    from torchao.quantization.pt2e.observer import _with_args
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer
except ImportError as error:  # pragma: no cover
    raise ImportError("apot_torch.pt2e needs torchao: pip install 'apot[torchao]'") from error

_OPS = (torch.ops.aten.linear.default, torch.ops.aten.conv2d.default)


class PT2EAPoTFakeQuantize(FakeQuantizeBase):
    """An apot_torch fake quant behind the constructor PT2E calls: it takes
    (and ignores) the ``QuantizationSpec`` keywords (``dtype``,
    ``quant_min``, ``quant_max``, ``qscheme``, ``is_dynamic``)."""

    def __init__(self, *, config: APoTFakeQuantizeConfig, channels: int | None = None, **spec_kwargs) -> None:
        super().__init__()
        if not isinstance(config, APoTFakeQuantizeConfig):
            raise ValueError(f"config must be an APoTFakeQuantizeConfig, got {type(config).__name__}")
        self.fake_quant = config.make(channels=channels)

    # torchao's own partial wrapper: PT2E's prepare inspects it
    with_args: Any = classmethod(_with_args)  # torchao ships no types

    def forward(self, X: Tensor) -> Tensor:  # noqa: N803
        return self.fake_quant(X)

    @torch.jit.unused
    def calculate_qparams(self):  # type: ignore[override]
        return self.fake_quant.calculate_qparams()


def _layer_name(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        kind = getattr(kind, "__name__", str(kind).rsplit(".", 1)[-1].strip("'>"))
        return f"layer {path!r} ({kind}, node {node.name!r})"
    return f"node {node.name!r} ({node.target})"


def _check_weight(node: torch.fx.Node, weight: torch.fx.Node, config: APoTFakeQuantizeConfig) -> None:
    value = weight.meta.get("val")
    if value is None:
        raise ValueError(f"{_layer_name(node)}: the weight has no traced value; export the model with torch.export")
    if value.dtype != torch.float32:
        raise ValueError(f"{_layer_name(node)}: APoT QAT needs a float32 weight, got {value.dtype}")
    if config.normalize:
        per = value[0].numel() if config.per_channel else value.numel()
        if per < 2:
            raise ValueError(
                f"{_layer_name(node)}: weight normalization needs at least 2 weight elements per "
                f"{'output channel' if config.per_channel else 'tensor'}, got {per}"
            )


class APoTQuantizer(Quantizer):
    """PT2E quantizer: APoT fake quant of linear/conv2d weights (``weight``)
    and, optionally, their inputs (``activation``, per tensor)."""

    def __init__(self, weight: APoTFakeQuantizeConfig, activation: APoTFakeQuantizeConfig | None = None) -> None:
        super().__init__()
        if not isinstance(weight, APoTFakeQuantizeConfig):
            raise ValueError(f"weight must be an APoTFakeQuantizeConfig, got {type(weight).__name__}")
        if activation is not None and (
            not isinstance(activation, APoTFakeQuantizeConfig) or activation.per_channel or activation.normalize
        ):
            raise ValueError("activation must be a per-tensor APoTFakeQuantizeConfig without normalization, or None")
        self.weight, self.activation = weight, activation

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        """Annotate every ``aten.linear`` / ``aten.conv2d`` (other ops stay
        float, as with PT2E's other quantizers).

        Raises:
          ValueError: naming the layer, for a weight these fake quants cannot
            run (not float32; normalization with fewer than 2 elements per
            statistic); or when the graph has no linear/conv2d at all.
        """
        found = False
        for node in model.graph.nodes:
            if node.op != "call_function" or node.target not in _OPS:
                continue
            found = True
            x, w = node.args[0], node.args[1]
            _check_weight(node, w, self.weight)
            channels = int(w.meta["val"].shape[0])
            spec = {
                w: QuantizationSpec(torch.int8, PT2EAPoTFakeQuantize.with_args(config=self.weight, channels=channels))
            }
            if self.activation is not None:
                spec[x] = QuantizationSpec(torch.uint8, PT2EAPoTFakeQuantize.with_args(config=self.activation))
            node.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=spec, _annotated=True)
        if not found:
            ops = sorted({str(n.target) for n in model.graph.nodes if n.op == "call_function"})
            raise ValueError(
                "APoTQuantizer found nothing to quantize: it handles aten.linear and aten.conv2d, "
                f"the graph has {', '.join(ops) or 'no operators'}"
            )
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        return None


def convert(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of a ``prepare_qat_pt2e`` graph with APoT weights as integer
    codes and frozen input quantizers (``model`` is not modified).

    Raises:
      ValueError: no APoT fake quant in the graph (not prepared with
        :class:`APoTQuantizer`), or one without qparams yet.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    found = False
    for node in list(graph.nodes):
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), PT2EAPoTFakeQuantize):
            continue
        found = True
        fq = cast(PT2EAPoTFakeQuantize, model.get_submodule(node.target)).fake_quant  # checked above
        source = node.args[0]
        name = f"{node.target}_apot"
        if source.op == "get_attr":
            weight = model.get_parameter(source.target)
            model.add_submodule(name, _CodesWeight(weight, fq, f"weight {source.target!r}"))
            with graph.inserting_before(node):
                new = graph.call_module(name, ())
        else:
            model.add_submodule(name, FrozenAPoTActivation.from_fake_quant(fq, f"input of {node.name!r}"))
            with graph.inserting_before(node):
                new = graph.call_module(name, (source,))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        model.delete_submodule(node.target)
    if not found:
        raise ValueError(
            "the graph has no APoT fake quant: prepare it with prepare_qat_pt2e(model, APoTQuantizer(...))"
        )
    graph.eliminate_dead_code()
    used = {n.target for n in graph.nodes if n.op == "get_attr"}
    for param_name, _ in list(model.named_parameters()):
        if param_name not in used:
            owner, _, leaf = param_name.rpartition(".")
            delattr(model.get_submodule(owner) if owner else model, leaf)
    model.recompile()
    return model


__all__ = ["APoTQuantizer", "PT2EAPoTFakeQuantize", "convert"]
