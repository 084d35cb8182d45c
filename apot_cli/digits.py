"""The digits job of ``apot qat``: data, models, quantization recipes.

Application code on top of the library (``apot_jax.layers`` for the models,
``apot_jax.train`` for the steps and checkpoints, ``apot_jax.paper`` for the
least-squares alphas, ``apot_jax.export`` for the exported model);
``apot_cli/qat.py`` parses and checks the arguments, builds a :class:`Job`
and its :class:`Row` list, and prints what :func:`run_job` returns. The
notebook ``notebooks/apot_qat_tpu.ipynb`` is the same job and imports from
here.

* :func:`load_digits_split`, :func:`epoch_batches`: scikit-learn's bundled
  8x8 digits (no download), a fixed stratified split, shuffled full batches.
* :class:`QuantConfig`: how a model is quantized (bits, recipe, level set,
  the paper's 8-bit first and last layers).
* :class:`MLP` (``64 -> hidden... -> 10``) and :class:`CNN` (two 3x3
  convolutions on the 8x8 image, then a dense classifier), of
  :class:`~apot_jax.layers.APoTDense` / :class:`~apot_jax.layers.APoTConv`
  layers; :func:`plain_model`: the same networks of ``nn.Dense`` /
  ``nn.Conv`` (same layer names) for the Qwix provider.
* :func:`fit_paper_alphas`, :func:`fit_activation_alphas`: the paper
  recipe's starting alphas by least squares (parameter surgery keyed on the
  models' layer names).
* :func:`run_job`: trains the rows of a :class:`Job` (float first, then
  each quantized row from trained weights), times their steps and exports
  the first paper model (:func:`export_summary`); :func:`optimizer` is a
  row's optax transformation.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from apot_common.tables import LevelSet, default_magnitude_k, level_table, sign_magnitude_table, unsigned_table
from apot_jax import paper
from apot_jax.fake_quantize_module import uniform_quantizer
from apot_jax.layers import PAPER, APoTConv, APoTDense

#: Default APoT base bit-width per total bits: k = 2 where it divides b; for
#: 3 bits k = 1 (three additive terms; k = 3 would leave pure powers of two,
#: which are very coarse near alpha).
DEFAULT_K = {1: 1, 2: 2, 3: 1, 4: 2, 5: 1, 6: 2, 8: 2}

#: The paper keeps the first and last layers at 8 bits (uniform).
FIRST_LAST_BITS = 8

#: The models ``apot qat --model`` trains.
MODELS = ("mlp", "cnn")

# --------------------------------------------------------------------------
# Data


def load_digits_split(test_size: float = 0.25, split_seed: int = 0) -> tuple[np.ndarray, ...]:
    """The bundled 8x8 digits, split once (stratified, fixed seed).

    Returns:
      ``(x_train, y_train, x_test, y_test)``: ``x`` float32 ``(n, 64)`` in
      ``[0, 1]`` (pixel counts 0..16 divided by 16; row-major 8x8 images),
      ``y`` int32 ``(n,)`` in ``0..9``; 1347 training and 450 test samples
      with the defaults.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=split_seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def epoch_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled full batches of one epoch (the remainder is dropped, so every
    batch has the same shape and the step compiles once). The order depends
    only on ``(seed, epoch)``, so a resumed run sees the same batches."""
    order = np.random.default_rng([seed, epoch]).permutation(len(x))
    for start in range(0, len(x) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def time_step(
    step_fn: Callable[..., tuple[Any, Any]], state: Any, x: jax.Array, y: jax.Array, steps: int
) -> float:
    """Seconds per step over ``steps`` chained steps (already compiled)."""
    jax.block_until_ready(step_fn(state, x, y))
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, x, y)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - t0) / steps


# --------------------------------------------------------------------------
# Quantization config


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """How a digits model is quantized.

    Attributes:
      bits: total bits, or ``None`` for the float model.
      k: APoT base bit-width (``bits % k == 0``) of the activations, and of
        the weights in the prototype recipe (unused by ``level_set="paper"``).
      quantize: ``"weights"``, ``"activations"`` or ``"both"``.
      scheme: ``"apot"`` or ``"uniform"``.
      signed_weights: signed weight table (else every negative weight is 0);
        prototype recipe only.
      recipe: ``"prototype"`` (observer-based alpha, the tables above) or
        ``"paper"``: weights with the paper's recipe (``apot_jax.paper``:
        sign-magnitude ``bits``-bit levels, learnable alpha, weight
        normalization). Needs ``scheme="apot"``.
      weight_k: paper recipe with ``level_set="apot"``: base width of the
        ``bits - 1`` magnitude bits (``None``: 2 where it divides
        ``bits - 1``, else 1).
      per_channel: paper recipe: one alpha per output feature.
      learn_activation_alpha: paper recipe: the activations' alpha is learnt
        too (``input_quant="apot-paper"``, 9.2's unsigned scheme over the
        level set below) instead of observed (the prototype's unsigned
        ``(bits, k)`` APoT table).
      level_set: paper recipe: ``"apot"`` (apot's ``(b, k)`` tables: weights
        sign + ``(bits - 1, weight_k)``, learnt activations ``(bits, k)``) or
        ``"paper"`` / ``"paper-pot"``: the paper code's own
        ``build_power_value`` sets (``docs/numerics.md`` 9.8: weights sign +
        ``build_power_value(bits - 1)``, learnt activations
        ``build_power_value(bits)``; at 3 bits the activations are 0, .1,
        .2, .3, .4, .6, .8, 1 times alpha, not an APoT ``(3, k)`` table).
      first_last_bits: ``None`` (every layer at ``bits``) or the bits of the
        first and last layers, as the paper (8): their weights uniform
        symmetric at that width (observed alpha), the first layer's input
        float (the pixels) and the last layer's input uniform unsigned at
        that width.

    Raises:
      ValueError: an unknown ``quantize``/``scheme``/``recipe``/``level_set``,
        or a bit width out of range for the quantizers it selects (``bits``,
        ``k``, ``weight_k``, ``first_last_bits``; named in the message),
        checked at construction.
    """

    bits: int | None = None
    k: int = 2
    quantize: str = "both"
    scheme: str = "apot"
    signed_weights: bool = True
    recipe: str = "prototype"
    weight_k: int | None = None
    per_channel: bool = False
    learn_activation_alpha: bool = False
    level_set: LevelSet = "apot"
    first_last_bits: int | None = None

    def __post_init__(self) -> None:
        if self.quantize not in ("weights", "activations", "both"):
            raise ValueError(f"quantize must be weights, activations or both, got {self.quantize!r}")
        if self.scheme not in ("apot", "uniform"):
            raise ValueError(f"scheme must be apot or uniform, got {self.scheme!r}")
        if self.recipe not in ("prototype", "paper"):
            raise ValueError(f"recipe must be prototype or paper, got {self.recipe!r}")
        if self.recipe == "paper" and self.scheme != "apot":
            raise ValueError("the paper recipe is an APoT recipe (scheme='apot')")
        if self.learn_activation_alpha and self.recipe != "paper":
            raise ValueError("learn_activation_alpha is part of the paper recipe (recipe='paper')")
        if self.level_set not in ("apot", "paper", "paper-pot"):
            raise ValueError(f"level_set must be apot, paper or paper-pot, got {self.level_set!r}")
        if self.level_set != "apot" and self.recipe != "paper":
            raise ValueError("level_set='paper'/'paper-pot' is part of the paper recipe (recipe='paper')")
        self._check_bits()

    def _check_bits(self) -> None:
        """Every bit width this config uses is in range for its quantizer
        (``ValueError`` naming the value, before any model is built)."""
        for name, value in (("k", self.k), ("weight_k", self.weight_k), ("first_last_bits", self.first_last_bits)):
            if value is None and name != "k":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"QuantConfig.{name} must be an integer >= 1, got {value!r}")
        if self.bits is None:
            return
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)) or self.bits < 1:
            raise ValueError(f"QuantConfig.bits must be None or an integer >= 1, got {self.bits!r}")
        if self.recipe == "paper":
            sign_magnitude_table(self.bits, cast(int, self.magnitude_k), self.level_set)  # an int: bits is set
        elif self.weight_quant == "apot":
            level_table(self.bits, self.k, self.signed_weights)
        elif self.weight_quant == "uniform":
            uniform_quantizer(self.bits, self.signed_weights)
        if self.input_quant == PAPER:
            unsigned_table(self.bits, self.k, self.level_set)
        elif self.input_quant == "apot":
            level_table(self.bits, self.k, False)
        elif self.input_quant == "uniform":
            uniform_quantizer(self.bits, False)
        if self.first_last_bits is not None:
            uniform_quantizer(self.first_last_bits, True)

    @property
    def magnitude_k(self) -> int | None:
        """Paper recipe: the weights' magnitude base width (None for float)."""
        if self.weight_k is not None or self.bits is None:
            return self.weight_k
        return default_magnitude_k(self.bits)

    @property
    def weight_quant(self) -> str | None:
        if self.bits is None or self.quantize not in ("weights", "both"):
            return None
        return PAPER if self.recipe == "paper" else self.scheme

    @property
    def input_quant(self) -> str | None:
        if self.bits is None or self.quantize not in ("activations", "both"):
            return None
        return PAPER if self.learn_activation_alpha else self.scheme

    def layer_kwargs(self, i: int, n: int, quantize_input: bool = False, codes: bool = False) -> dict[str, Any]:
        """The quantization fields of layer ``i`` of ``n`` (an ``APoTDense`` /
        ``APoTConv``): the first and last at ``first_last_bits`` (uniform)
        when set, the network input float unless ``quantize_input``; with
        ``codes`` the ``bits``-bit paper weights are off (the kernel is given
        dequantized from the export's codes)."""
        bits = self.bits if self.bits is not None else 4  # unused when float
        k = self.k if self.bits is not None else 2
        edge = self.bits is not None and self.first_last_bits is not None and i in (0, n - 1)
        if edge:
            weight_quant = "uniform" if self.weight_quant else None
            input_quant = "uniform" if (self.input_quant and i > 0) else None
            return dict(b=self.first_last_bits, k=1, weight_quant=weight_quant, input_quant=input_quant,
                        signed_weights=True)  # fmt: skip
        input_quant = self.input_quant if (i > 0 or quantize_input) else None
        weight_quant = None if (codes and self.weight_quant == PAPER) else self.weight_quant
        return dict(b=bits, k=k, weight_quant=weight_quant, input_quant=input_quant,
                    signed_weights=self.signed_weights,
                    weight_k=self.magnitude_k if self.recipe == "paper" else None,
                    per_channel=self.per_channel, level_set=self.level_set)  # fmt: skip


# --------------------------------------------------------------------------
# Models


class MLP(nn.Module):
    """``64 -> hidden... -> num_classes`` with ReLU; every layer an ``APoTDense``
    named ``dense0, dense1, ...``.

    With quantized activations, the input of every layer after the first (the
    ReLU outputs, non-negative) is fake-quantized with the unsigned table.
    The network input (the data: pixel counts 0..16, already 17 levels) is
    quantized too only if ``quantize_input``; at 4 bits, APoT levels are
    coarse near alpha, where most stroke pixels lie, and cost about a point
    of accuracy on digits. ``codes``: see :meth:`QuantConfig.layer_kwargs`.

    ``__call__(x)``: ``x`` float32 ``(batch, 64)`` -> logits float32
    ``(batch, num_classes)``.
    """

    hidden: Sequence[int] = (512, 512)
    num_classes: int = 10
    quant: QuantConfig = QuantConfig()
    quantize_input: bool = False
    codes: bool = False

    def layer_names(self) -> list[str]:
        return [f"dense{i}" for i in range(len(self.hidden) + 1)]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        widths = tuple(self.hidden) + (self.num_classes,)
        for i, width in enumerate(widths):
            kw = self.quant.layer_kwargs(i, len(widths), self.quantize_input, self.codes)
            x = APoTDense(width, **kw, name=f"dense{i}")(x)
            if i < len(widths) - 1:
                x = nn.relu(x)
        return x


class CNN(nn.Module):
    """A small CNN on the 8x8 digits: ``conv0`` (3x3, ``channels[0]``, SAME),
    ReLU, ``conv1`` (3x3, ``channels[1]``, stride 2: 4x4), ReLU, flatten,
    ``dense0`` to ``num_classes``; every layer an ``APoTConv`` / ``APoTDense``,
    quantized as :class:`MLP`'s layers.

    ``__call__(x)``: ``x`` float32 ``(batch, 64)`` (row-major 8x8 images) ->
    logits float32 ``(batch, num_classes)``.
    """

    channels: Sequence[int] = (16, 32)
    num_classes: int = 10
    quant: QuantConfig = QuantConfig()
    quantize_input: bool = False
    codes: bool = False

    def layer_names(self) -> list[str]:
        return [f"conv{i}" for i in range(len(self.channels))] + ["dense0"]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n = len(self.channels) + 1
        x = x.reshape(x.shape[0], 8, 8, 1)
        for i, ch in enumerate(self.channels):
            kw = self.quant.layer_kwargs(i, n, self.quantize_input, self.codes)
            x = nn.relu(APoTConv(ch, (3, 3), strides=1 if i == 0 else 2, **kw, name=f"conv{i}")(x))
        x = x.reshape(x.shape[0], -1)
        kw = self.quant.layer_kwargs(n - 1, n, self.quantize_input, self.codes)
        return APoTDense(self.num_classes, **kw, name="dense0")(x)


def make_model(name: str, quant: QuantConfig, *, hidden: Sequence[int] = (512, 512),
               channels: Sequence[int] = (16, 32), quantize_input: bool = False, codes: bool = False) -> nn.Module:
    """``"mlp"`` -> :class:`MLP`, ``"cnn"`` -> :class:`CNN`."""
    if name == "mlp":
        return MLP(hidden=tuple(hidden), quant=quant, quantize_input=quantize_input, codes=codes)
    if name == "cnn":
        return CNN(channels=tuple(channels), quant=quant, quantize_input=quantize_input, codes=codes)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def plain_model(name: str, *, hidden: Sequence[int] = (512, 512), channels: Sequence[int] = (16, 32)) -> nn.Module:
    """The same network as :func:`make_model` of unmodified ``nn.Dense`` /
    ``nn.Conv`` layers with the same names (so the float weights load as
    they are), for ``qwix.quantize_model``."""
    if name == "mlp":
        widths = tuple(hidden) + (10,)

        class PlainMLP(nn.Module):
            @nn.compact
            def __call__(self, x):
                for i, width in enumerate(widths):
                    x = nn.Dense(width, name=f"dense{i}")(x)
                    if i < len(widths) - 1:
                        x = nn.relu(x)
                return x

        return PlainMLP()
    if name == "cnn":
        chans = tuple(channels)

        class PlainCNN(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = x.reshape(x.shape[0], 8, 8, 1)
                for i, ch in enumerate(chans):
                    x = nn.relu(nn.Conv(ch, (3, 3), strides=1 if i == 0 else 2, padding="SAME", name=f"conv{i}")(x))
                return nn.Dense(10, name="dense0")(x.reshape(x.shape[0], -1))

        return PlainCNN()
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def qwix_model(name: str, quant: QuantConfig, quantize_input: bool = False, **sizes: Any) -> nn.Module:
    """:func:`plain_model` quantized through ``qwix.quantize_model`` with
    :class:`apot_jax.qwix.ApotQatProvider` and the rules that mean ``quant``
    (prototype recipe; the first layer's input float unless
    ``quantize_input``)."""
    import qwix

    from apot_jax.qwix import ApotQatProvider, ApotRule

    if quant.recipe != "prototype" or quant.first_last_bits is not None:
        raise ValueError("the Qwix model implements the prototype recipe only")
    weight: dict[str, Any] = dict(
        weight_bits=quant.bits if quant.weight_quant else None,
        weight_k=quant.k,
        weight_scheme="signed" if quant.signed_weights else "unsigned",
    )
    act: dict[str, Any] = dict(act_bits=quant.bits, act_k=quant.k) if quant.input_quant else {}
    first_name = "dense0" if name == "mlp" else "conv0"
    first: dict[str, Any] = {} if quantize_input else {"act_bits": None}
    rules = [ApotRule(module_path=first_name, **(weight | act | first)), ApotRule(module_path=".*", **(weight | act))]
    return qwix.quantize_model(plain_model(name, **sizes), ApotQatProvider(rules))


# --------------------------------------------------------------------------
# Starting alphas of the paper recipe


def fit_paper_alphas(params: Any, quant: QuantConfig, candidates: int = 64) -> Any:
    """Initial alphas of the paper recipe's weight quants, by least squares.

    For each layer's normalized kernel, :func:`apot_jax.paper.fit_alpha`
    (sign-magnitude over ``quant.level_set``, per output feature with
    ``per_channel``). The paper starts from 3.0 and lets training move
    alpha; a fine-tune of a few hundred steps would not get far from there
    at 2 bits, where the optimum (about 1.2 for a Gaussian) is far from 3.

    Returns ``params`` with every ``weight_quant/alpha`` replaced (layers
    without a learnt weight alpha, e.g. the 8-bit first and last, unchanged).
    """
    if quant.weight_quant != PAPER:
        return params
    axis = -1 if quant.per_channel else None

    def replace(layer: Any) -> Any:
        if isinstance(layer, dict) and "alpha" in layer.get("weight_quant", {}):
            w_hat, _, _ = paper.normalize_weight(layer["kernel"], axis)
            # ints: the paper weight quant needs bits
            alpha = paper.fit_alpha(w_hat, b=cast(int, quant.bits), k=cast(int, quant.magnitude_k),
                                    scheme="sign-magnitude", channel_axis=axis, candidates=candidates,
                                    level_set=quant.level_set)  # fmt: skip
            return {**layer, "weight_quant": {**layer["weight_quant"], "alpha": alpha}}
        return layer

    return {name: replace(dict(layer)) for name, layer in params.items()}


def fit_activation_alphas(
    model: nn.Module, params: Any, float_model: nn.Module, float_params: Any, x: np.ndarray, candidates: int = 64
) -> Any:
    """Initial learnt activation alphas (``input_quant/alpha``) of ``model``,
    by least squares on the float network's layer inputs.

    Each ``input_quant`` alpha becomes :func:`apot_jax.paper.fit_alpha`
    (unsigned scheme over ``model.quant.level_set``, ``candidates`` grid
    points) of that layer's inputs in the float network on ``x``: the ReLU
    outputs of the layer before in ``model.layer_names()`` (the data for the
    first). Returns ``params`` with those alphas replaced; layers without a
    learnt input alpha are left as they are.
    """
    _, captured = float_model.apply(
        {"params": float_params}, jnp.asarray(x), capture_intermediates=True, mutable=["intermediates"]
    )
    outputs = captured["intermediates"]
    names = model.layer_names()
    q = model.quant
    out = {}
    for name, layer in params.items():
        layer = dict(layer)
        if "alpha" in layer.get("input_quant", {}):
            i = names.index(name)
            inputs = jnp.asarray(x, jnp.float32) if i == 0 else nn.relu(outputs[names[i - 1]]["__call__"][0])
            alpha = paper.fit_alpha(inputs, b=q.bits, k=q.k, scheme="unsigned", candidates=candidates,
                                    level_set=q.level_set)  # fmt: skip
            layer["input_quant"] = {**layer["input_quant"], "alpha": alpha}
        out[name] = layer
    return out


def with_weights(params: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """``params`` (a quantized model's, with e.g. learnable alphas) with every
    kernel and bias taken from ``source`` (the trained float model, or the
    previous paper model in the progressive initialisation)."""
    return {name: {**dict(layer), "kernel": source[name]["kernel"], "bias": source[name]["bias"]}
            for name, layer in params.items()}  # fmt: skip


def distinct_levels(bits: int | None, k: int, signed: bool, level_set: LevelSet = "apot") -> int | None:
    """Number of distinct level values of an unsigned/signed APoT quantizer
    (``level_set`` for the paper's unsigned sets; None for float)."""
    if bits is None:
        return None
    if level_set != "apot":
        return int(np.unique(np.asarray(unsigned_table(bits, k, level_set).base_sum)).size)
    return int(np.unique(level_table(bits, k, signed).base_sum).size)


# --------------------------------------------------------------------------
# The job: train every row, time the steps, export the first paper model


@dataclasses.dataclass(frozen=True, kw_only=True)
class Row:
    """One row of the job: a name and how its model is quantized (float:
    ``QuantConfig()``); ``qwix``: the plain model through the Qwix provider."""

    variant: str
    quant: QuantConfig
    qwix: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class Job:
    """How ``apot qat`` trains its rows (its options, checked by the CLI)."""

    model: str = "mlp"
    hidden: tuple[int, ...] = (1024, 1024)
    channels: tuple[int, ...] = (16, 32)
    quantize_input: bool = False
    signed_weights: bool = True
    batch_size: int = 256
    epochs: int = 40
    qat_epochs: int = 20
    lr: float = 1e-3
    qat_lr: float = 3e-4
    seed: int = 0
    paper_optimizer: str = "sgd"
    paper_lr: float = 0.01
    paper_alpha_decay: float = 1e-4
    paper_init: str = "progressive"
    timing_rounds: int = 5
    timing_steps: int = 20
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class JobResult:
    """What :func:`run_job` measured: one dict per row (the ``results.json``
    layout), the first paper model's export summary (or ``None``), the
    split's sizes and the wall time in seconds."""

    rows: list[dict[str, Any]]
    export: dict[str, Any] | None
    train_size: int
    test_size: int
    wall_s: float


def optimizer(job: Job, quant: QuantConfig, steps: int) -> Any:
    """The optax transformation of a row: adam for float and prototype rows
    (and ``paper_optimizer="adam"``); the paper's SGD (momentum 0.9, cosine
    decay over the row's steps, weight decay on the alphas only) otherwise."""
    import optax

    if quant.bits is None:
        return optax.adam(job.lr)
    if quant.recipe != "paper" or job.paper_optimizer == "adam":
        return optax.adam(job.qat_lr)

    def alphas(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "alpha", params)

    return optax.chain(
        optax.masked(optax.add_decayed_weights(job.paper_alpha_decay), alphas),
        optax.sgd(optax.cosine_decay_schedule(job.paper_lr, max(1, steps)), momentum=0.9),
    )


def weight_levels(quant: QuantConfig, signed_weights: bool) -> int | None:
    """Distinct weight levels of a quantized row."""
    if quant.recipe == "paper":
        return 2**quant.bits - 1 if quant.bits is not None else None  # sign-magnitude: 2**b - 1 levels
    return distinct_levels(quant.bits, quant.k, signed_weights)


def activation_levels(quant: QuantConfig) -> int | None:
    """Distinct activation levels of a quantized row."""
    level_set = quant.level_set if quant.learn_activation_alpha else "apot"
    return distinct_levels(quant.bits, quant.k, False, level_set)


def export_summary(model_name: str, sizes: dict[str, Any], model: nn.Module, state: Any, quant: QuantConfig,
                   eval_fn: Callable[..., Any], x_te: np.ndarray, y_te: np.ndarray, variant: str) -> dict[str, Any]:
    """Export every paper-recipe layer of the model to codes, run the model from
    the dequantized codes (activation fake quants and the 8-bit first/last
    layers' uniform fake quants unchanged) and measure it. The 8-bit layers
    count as 8-bit codes plus one float32 scale."""
    from apot_jax import export as X
    from apot_jax import train as T

    assert quant.bits is not None and quant.magnitude_k is not None  # a paper row
    exported = {
        name: X.export_kernel(layer["kernel"], layer["weight_quant"]["alpha"], b=quant.bits, k=quant.magnitude_k,
                              per_channel=quant.per_channel, bias=layer["bias"], level_set=quant.level_set)
        for name, layer in state.params.items()
        if "alpha" in layer.get("weight_quant", {})
    }  # fmt: skip
    # The same network with the paper weights' fake quant off: their kernels from the codes.
    plain = make_model(model_name, quant, quantize_input=model.quantize_input, codes=True, **sizes)
    params = {}
    for name, layer in state.params.items():
        if name in exported:
            e = exported[name]
            # the activations' learnt alphas (if any) stay as they are
            params[name] = {**{key: val for key, val in layer.items() if key == "input_quant"},
                            "kernel": X.dequantize_kernel(e), "bias": jnp.asarray(e.bias)}  # fmt: skip
        else:
            params[name] = layer
    plain_state = state.replace(params=params)
    logits_codes = np.asarray(T.make_eval_fn(plain)(plain_state, jnp.asarray(x_te)))
    logits_fq = np.asarray(eval_fn(state, jnp.asarray(x_te)))
    float_bytes = 4 * sum(int(np.prod(layer["kernel"].shape)) for layer in state.params.values())
    edge = [layer for name, layer in state.params.items() if name not in exported]
    code_bytes = sum(e.code_bytes() for e in exported.values())
    code_bytes += sum(int(np.prod(layer["kernel"].shape)) * (quant.first_last_bits or 32) // 8 for layer in edge)
    scale_bytes = sum(4 * (e.alpha.size + e.gamma.size + e.scale.size) for e in exported.values()) + 4 * len(edge)
    return {
        "variant": variant,
        "bits": quant.bits,
        "first_last_bits": quant.first_last_bits,
        "code_bytes": code_bytes,
        "scale_bytes": scale_bytes,
        "quantized_bytes": code_bytes + scale_bytes,
        "float_bytes": float_bytes,
        "test_accuracy": float(np.mean(np.argmax(logits_codes, -1) == y_te)),
        "fake_quant_accuracy": float(np.mean(np.argmax(logits_fq, -1) == y_te)),
        "identical_logits": bool(np.array_equal(logits_codes, logits_fq)),
    }


def run_job(job: Job, rows: Sequence[Row]) -> JobResult:
    """Train every row on the digits split and time their steps.

    ``rows[0]`` is the float model (``QuantConfig()``); every quantized row
    starts from its trained weights (a paper row with
    ``paper_init="progressive"``: from the previous paper row's), with
    calibrated observers and, for the paper recipe, least-squares alphas.
    All rows' steps are then timed in interleaved rounds on one batch
    (median per row, so a busy machine slows every row alike).

    Raises:
      ValueError: ``rows[0]`` is not the float row, or ``job.batch_size`` is
        larger than the training set.
    """
    from tqdm import tqdm

    from apot_jax import train as T

    if not rows or rows[0].quant.bits is not None:
        raise ValueError("rows[0] must be the float model (QuantConfig())")
    x_tr, y_tr, x_te, y_te = load_digits_split()
    if job.batch_size > len(x_tr):
        raise ValueError(f"must be <= {len(x_tr)} (training set size), got {job.batch_size}")
    sizes: dict[str, Any] = dict(hidden=tuple(job.hidden), channels=tuple(job.channels))
    steps_per_epoch = len(x_tr) // job.batch_size
    rng = jax.random.key(job.seed)
    sample = jnp.asarray(x_tr[: job.batch_size])
    variants: list[dict[str, Any]] = [
        {"variant": r.variant, "quant": r.quant, **({"qwix": True} if r.qwix else {})} for r in rows
    ]

    total_steps = steps_per_epoch * (job.epochs + job.qat_epochs * (len(variants) - 1))
    bar = tqdm(total=total_steps, desc="apot qat", unit="step", disable=not job.progress, file=sys.stderr)
    float_state: T.TrainState | None
    float_model: nn.Module | None
    float_state = float_model = None
    previous_paper = None  # the last paper row's trained params (progressive initialisation)
    timers = []  # (variant, step_fn, state) for the interleaved timing
    export: dict[str, Any] | None = None  # the first paper model's export summary
    t_start = time.perf_counter()
    for v in variants:
        quant = v["quant"]
        if v.get("qwix"):
            model = qwix_model(job.model, quant, job.quantize_input, **sizes)
        else:
            model = make_model(job.model, quant, quantize_input=job.quantize_input, **sizes)
        is_float = quant.bits is None
        epochs = job.epochs if is_float else job.qat_epochs
        tx = optimizer(job, quant, epochs * steps_per_epoch)
        state = T.init_state(model, tx, rng, sample)
        if not is_float:
            # QAT starts from trained weights (the float model's; a paper row
            # with --paper-init progressive: the previous paper row's), with
            # observers calibrated on them (fake quant off).
            assert float_state is not None and float_model is not None  # variants[0] is the float model
            source, v["init_from"] = float_state.params, "float"
            if quant.recipe == "paper" and job.paper_init == "progressive" and previous_paper is not None:
                source, v["init_from"] = previous_paper
            params = with_weights(state.params, source)
            params = fit_paper_alphas(params, quant)  # paper recipe: least-squares initial alphas
            if quant.learn_activation_alpha:
                params = fit_activation_alphas(model, params, float_model, float_state.params, x_tr)
            state = state.replace(params=params, opt_state=tx.init(params))
            state = T.calibrate(model, state, [x_tr])  # the whole training set, one batch
        step_fn = T.make_train_step(model, tx)
        eval_fn = T.make_eval_fn(model)
        history: dict[str, list[Any]] = {"epoch": [], "train_loss": [], "test_accuracy": []}
        if not is_float:  # accuracy right after calibration, before any QAT step
            history["epoch"].append(0)
            history["train_loss"].append(None)
            history["test_accuracy"].append(T.accuracy(eval_fn, state, x_te, y_te))
        bar.set_description(f"{v['variant'].split()[0]} {quant.bits or 32}-bit")
        for epoch in range(epochs):
            losses = []
            for xb, yb in epoch_batches(x_tr, y_tr, job.batch_size, job.seed, epoch):
                state, metrics = step_fn(state, jnp.asarray(xb), jnp.asarray(yb))
                losses.append(metrics["loss"])
                bar.update(1)
            history["epoch"].append(epoch + 1)
            history["train_loss"].append(float(np.mean(jax.device_get(losses))))
            history["test_accuracy"].append(T.accuracy(eval_fn, state, x_te, y_te))
            bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", acc=f"{100 * history['test_accuracy'][-1]:.1f}")
        if is_float:
            float_state, float_model = state, model
        if quant.recipe == "paper" and not is_float:
            previous_paper = state.params, f"paper {quant.bits}-bit"
        paper_row = quant.recipe == "paper" and not is_float
        v.update(
            bits=quant.bits,
            k=quant.k if not is_float else None,
            recipe=None if is_float else quant.recipe,
            weight_k=quant.magnitude_k if paper_row else None,
            level_set=quant.level_set if paper_row else None,
            first_last_bits=quant.first_last_bits if paper_row else None,
            optimizer=("adam" if not paper_row else job.paper_optimizer),
            quantize=None if is_float else quant.quantize,
            weight_levels=weight_levels(quant, job.signed_weights) if quant.weight_quant else None,
            activation_levels=activation_levels(quant) if quant.input_quant else None,
            test_accuracy=T.accuracy(eval_fn, state, x_te, y_te),
            history=history,
        )
        timers.append((v, step_fn, state))
        if paper_row and quant.weight_quant and export is None:
            export = export_summary(job.model, sizes, model, state, quant, eval_fn, x_te, y_te, v["variant"])
    bar.close()

    # Step time: all variants timed in interleaved rounds on the same batch,
    # median per variant, so a busy machine slows every variant alike.
    xb, yb = next(epoch_batches(x_tr, y_tr, job.batch_size, job.seed, 0))
    x_timing, y_timing = jnp.asarray(xb), jnp.asarray(yb)
    samples: dict[int, list[float]] = {i: [] for i in range(len(timers))}
    for _ in range(max(1, job.timing_rounds)):
        for i, (_, step_fn, state) in enumerate(timers):
            samples[i].append(time_step(step_fn, state, x_timing, y_timing, max(1, job.timing_steps)))
    float_ms = 1e3 * float(np.median(samples[0]))
    for i, (v, _, _) in enumerate(timers):
        v["step_ms"] = 1e3 * float(np.median(samples[i]))
        v["step_time_ratio"] = v["step_ms"] / float_ms
    wall = time.perf_counter() - t_start


    results = [{key: val for key, val in v.items() if key not in ("quant", "qwix")} for v in variants]
    return JobResult(results, export, len(x_tr), len(x_te), wall)


__all__ = [
    "CNN",
    "Job",
    "JobResult",
    "Row",
    "DEFAULT_K",
    "FIRST_LAST_BITS",
    "MLP",
    "MODELS",
    "QuantConfig",
    "distinct_levels",
    "epoch_batches",
    "fit_activation_alphas",
    "fit_paper_alphas",
    "load_digits_split",
    "make_model",
    "plain_model",
    "qwix_model",
    "time_step",
    "activation_levels",
    "export_summary",
    "optimizer",
    "run_job",
    "weight_levels",
    "with_weights",
]
