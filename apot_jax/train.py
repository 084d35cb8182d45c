"""A small quantization-aware training library: data, model, steps, checkpoints.

Used by ``apot qat`` (``apot_cli/qat.py``) and the tests. Everything is plain
linen + optax + orbax:

* :func:`load_digits_split`: scikit-learn's bundled 8x8 digits (no download),
  a fixed stratified train/test split.
* :class:`MLP`: a multilayer perceptron of :class:`~apot_jax.layers.APoTDense`
  layers, float or fake-quantized per :class:`QuantConfig`.
* :class:`TrainState`: step, params, optimizer state and the ``quant_stats``
  collection, one pytree (checkpointed as a whole with orbax).
* :func:`make_train_step`: one jitted optax step; with a ``Mesh`` the batch is
  sharded on ``"data"`` and the state replicated, and the observers' min/max
  are taken over the whole global batch (XLA all-reduces the reductions), so
  the statistics equal a single-device run's.
* :func:`calibrate`: observe activations with fake quant off (post-training
  statistics), the usual start of QAT from a float model.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from apot_common.tables import default_magnitude_k, level_table, sign_magnitude_table
from apot_jax import paper
from apot_jax.fake_quantize_module import QUANT_STATS, set_flags, uniform_quantizer
from apot_jax.layers import PAPER, APoTDense

# --------------------------------------------------------------------------
# Data


def load_digits_split(test_size: float = 0.25, split_seed: int = 0) -> tuple[np.ndarray, ...]:
    """The bundled 8x8 digits, split once (stratified, fixed seed).

    Returns:
      ``(x_train, y_train, x_test, y_test)``: ``x`` float32 ``(n, 64)`` in
      ``[0, 1]`` (pixel counts 0..16 divided by 16), ``y`` int32 ``(n,)`` in
      ``0..9``; 1347 training and 450 test samples with the defaults.
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


# --------------------------------------------------------------------------
# Model


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """How an :class:`MLP` is quantized.

    Attributes:
      bits: total bits, or ``None`` for the float model.
      k: APoT base bit-width (``bits % k == 0``) of the activations, and of
        the weights in the prototype recipe.
      quantize: ``"weights"``, ``"activations"`` or ``"both"``.
      scheme: ``"apot"`` or ``"uniform"``.
      signed_weights: signed weight table (else every negative weight is 0);
        prototype recipe only.
      recipe: ``"prototype"`` (observer-based alpha, the tables above) or
        ``"paper"``: weights with the paper's recipe (``apot_jax.paper``:
        sign-magnitude ``bits``-bit levels, learnable alpha, weight
        normalization), activations as in the prototype recipe (observer-based
        unsigned APoT with ``k``). Needs ``scheme="apot"``.
      weight_k: paper recipe: base width of the ``bits - 1`` magnitude bits
        (``None``: 2 where it divides ``bits - 1``, else 1).
      per_channel: paper recipe: one alpha per output feature.
      learn_activation_alpha: paper recipe: the activations' alpha is learnt
        too (``input_quant="apot-paper"``: unsigned ``(bits, k)`` levels, as
        in the paper) instead of observed.

    Raises:
      ValueError: an unknown ``quantize``/``scheme``/``recipe``, or a bit
        width out of range for the quantizers it selects (``bits``, ``k``,
        ``weight_k``; named in the message), checked at construction.
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
        self._check_bits()

    def _check_bits(self) -> None:
        """Every bit width this config uses is in range for its quantizer
        (``ValueError`` naming the value, before any model is built): ``bits``
        ``None`` or an integer, ``k`` and ``weight_k`` positive integers (or
        ``weight_k`` ``None``), and each table or uniform quantizer the
        weights and activations will use valid and within the size limit."""
        for name, value in (("k", self.k), ("weight_k", self.weight_k)):
            if value is None and name == "weight_k":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"QuantConfig.{name} must be an integer >= 1, got {value!r}")
        if self.bits is None:
            return
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)) or self.bits < 1:
            raise ValueError(f"QuantConfig.bits must be None or an integer >= 1, got {self.bits!r}")
        if self.recipe == "paper":
            sign_magnitude_table(self.bits, self.magnitude_k)
        elif self.weight_quant == "apot":
            level_table(self.bits, self.k, self.signed_weights)
        elif self.weight_quant == "uniform":
            uniform_quantizer(self.bits, self.signed_weights)
        if self.input_quant in ("apot", PAPER):
            level_table(self.bits, self.k, False)
        elif self.input_quant == "uniform":
            uniform_quantizer(self.bits, False)

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


class MLP(nn.Module):
    """``64 -> hidden... -> num_classes`` with ReLU; every layer an ``APoTDense``.

    With quantized activations, the input of every layer after the first (the
    ReLU outputs, non-negative) is fake-quantized with the unsigned table.
    The network input (the data: pixel counts 0..16, already 17 levels) is
    quantized too only if ``quantize_input``; at 4 bits, APoT levels are
    coarse near alpha, where most stroke pixels lie, and cost about a point
    of accuracy on digits.

    ``__call__(x)``: ``x`` float32 ``(batch, features)`` -> logits float32
    ``(batch, num_classes)``.
    """

    hidden: Sequence[int] = (512, 512)
    num_classes: int = 10
    quant: QuantConfig = QuantConfig()
    quantize_input: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        q = self.quant
        bits = q.bits if q.bits is not None else 4  # unused when float
        k = q.k if q.bits is not None else 2
        widths = tuple(self.hidden) + (self.num_classes,)
        for i, width in enumerate(widths):
            x = APoTDense(
                width,
                b=bits,
                k=k,
                weight_quant=q.weight_quant,
                input_quant=q.input_quant if (i > 0 or self.quantize_input) else None,
                signed_weights=q.signed_weights,
                weight_k=q.magnitude_k if q.recipe == "paper" else None,
                per_channel=q.per_channel,
                name=f"dense{i}",
            )(x)
            if i < len(widths) - 1:
                x = nn.relu(x)
        return x


# --------------------------------------------------------------------------
# State and steps


@struct.dataclass
class TrainState:
    """Everything a training step changes, as one pytree.

    Attributes:
      step: int32 scalar, steps taken.
      params: the ``"params"`` collection.
      opt_state: the optax state of ``params``.
      quant_stats: the ``"quant_stats"`` collection (``{}`` for a float model).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    quant_stats: Any


def init_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, sample_x: jax.Array) -> TrainState:
    """Initial :class:`TrainState` (``sample_x``: a batch giving the input shape)."""
    # jitted: an APoT model's unjitted init dispatches every op of the fake
    # quants one by one (6 to 12 s per model on 2 CPU cores)
    variables = jax.jit(model.init)(rng, sample_x)
    params = variables["params"]
    return TrainState(
        step=jnp.int32(0),
        params=params,
        opt_state=tx.init(params),
        quant_stats=dict(variables.get(QUANT_STATS, {})),
    )


def _variables(state: TrainState, params: Any = None) -> dict[str, Any]:
    out = {"params": state.params if params is None else params}
    if state.quant_stats:
        out[QUANT_STATS] = state.quant_stats
    return out


def make_train_step(
    model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh | None = None
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted step ``(state, x, y) -> (state, {"loss", "accuracy"})``.

    ``x`` float32 ``(batch, ...)``, ``y`` int32 ``(batch,)``; the loss is the
    mean softmax cross-entropy over the (global) batch. The observers update
    ``state.quant_stats`` (mutable collection) in the same forward.

    With ``mesh`` (one axis named ``"data"``), the state is replicated and the
    batch sharded along ``"data"`` (``batch`` must divide evenly); the loss,
    gradients and observer min/max are over the global batch.
    """

    def step(state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        def loss_fn(params: Any) -> tuple[jax.Array, tuple[Any, jax.Array]]:
            logits, updates = model.apply(_variables(state, params), x, mutable=[QUANT_STATS])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, (dict(updates.get(QUANT_STATS, state.quant_stats)), logits)

        (loss, (quant_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        accuracy = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, quant_stats=quant_stats)
        return new_state, {"loss": loss, "accuracy": accuracy}

    if mesh is None:
        return jax.jit(step)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch = NamedSharding(mesh, PartitionSpec("data"))
    return jax.jit(step, in_shardings=(replicated, batch, batch), out_shardings=(replicated, replicated))


def make_eval_fn(model: nn.Module) -> Callable[[TrainState, jax.Array], jax.Array]:
    """Jitted ``(state, x) -> logits`` for evaluation: observers disabled and
    the statistics read-only, so evaluation neither changes nor depends on
    the batch statistics."""

    @jax.jit
    def logits(state: TrainState, x: jax.Array) -> jax.Array:
        variables = set_flags(_variables(state), observer=False)
        return model.apply(variables, x)

    return logits


def accuracy(eval_fn: Callable[[TrainState, jax.Array], jax.Array], state: TrainState, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in ``[0, 1]`` of ``eval_fn`` on ``(x, y)``."""
    pred = np.asarray(jnp.argmax(eval_fn(state, jnp.asarray(x)), -1))
    return float(np.mean(pred == y))


def calibrate(model: nn.Module, state: TrainState, batches: Sequence[np.ndarray]) -> TrainState:
    """Observe ``batches`` with fake quant disabled, then re-enable it.

    The statistics then describe the float network's weights and activations
    (post-training calibration), so QAT starts from sensible clipping values
    instead of the first quantized batch's.
    """
    if not state.quant_stats:
        return state

    # params as an argument, not a closure: closed-over arrays become HLO
    # constants, which XLA then tries to constant-fold (slowly).
    @jax.jit
    def observe_batch(params: Any, quant_stats: Any, x: jax.Array) -> Any:
        _, updates = model.apply({"params": params, QUANT_STATS: quant_stats}, x, mutable=[QUANT_STATS])
        return dict(updates[QUANT_STATS])

    quant_stats = set_flags(state.quant_stats, observer=True, fake_quant=False)
    for x in batches:
        quant_stats = observe_batch(state.params, quant_stats, jnp.asarray(x))
    return state.replace(quant_stats=set_flags(quant_stats, fake_quant=True))


def fit_paper_alphas(params: Any, quant: QuantConfig, candidates: int = 64) -> Any:
    """Initial alphas of the paper recipe's weight quants, by least squares.

    For each layer's normalized kernel, :func:`apot_jax.paper.fit_alpha`
    (sign-magnitude, per output feature with ``per_channel``). The paper
    starts from 3.0 and lets training move alpha; a fine-tune of a few
    hundred steps would not get far from there at 2 bits, where the optimum
    (about 1.2 for a Gaussian) is far from 3.

    Returns ``params`` with every ``weight_quant/alpha`` replaced.
    """
    if quant.weight_quant != PAPER:
        return params
    axis = -1 if quant.per_channel else None

    def replace(layer: Any) -> Any:
        if isinstance(layer, dict) and "weight_quant" in layer and "alpha" in layer["weight_quant"]:
            w_hat, _, _ = paper.normalize_weight(layer["kernel"], axis)
            alpha = paper.fit_alpha(
                w_hat, b=quant.bits, k=quant.magnitude_k, scheme="sign-magnitude", channel_axis=axis, candidates=candidates
            )
            return {**layer, "weight_quant": {**layer["weight_quant"], "alpha": alpha}}
        return layer

    return {name: replace(dict(layer)) for name, layer in params.items()}


def fit_activation_alphas(
    model: nn.Module, params: Any, float_model: nn.Module, float_params: Any, x: np.ndarray, candidates: int = 64
) -> Any:
    """Initial learnt activation alphas (``input_quant/alpha``) of ``model``,
    by least squares on the float network's layer inputs.

    Each ``input_quant`` alpha becomes :func:`apot_jax.paper.fit_alpha` (unsigned
    scheme, ``candidates`` grid points) of that layer's inputs in the float
    MLP on ``x`` (the ReLU outputs of the layer before; the data for the first).
    Returns ``params`` with those alphas replaced; layers without a learnt
    input alpha are left as they are.
    """
    _, captured = float_model.apply(
        {"params": float_params}, jnp.asarray(x), capture_intermediates=True, mutable=["intermediates"]
    )
    outputs = captured["intermediates"]
    b, k = model.quant.bits, model.quant.k
    out = {}
    for name, layer in params.items():
        layer = dict(layer)
        if "alpha" in layer.get("input_quant", {}):
            i = int(name.removeprefix("dense"))
            inputs = jnp.asarray(x, jnp.float32) if i == 0 else nn.relu(outputs[f"dense{i - 1}"]["__call__"][0])
            alpha = paper.fit_alpha(inputs, b=b, k=k, scheme="unsigned", candidates=candidates)
            layer["input_quant"] = {**layer["input_quant"], "alpha": alpha}
        out[name] = layer
    return out


def time_step(
    step_fn: Callable[..., tuple[TrainState, Any]], state: TrainState, x: jax.Array, y: jax.Array, steps: int
) -> float:
    """Seconds per step over ``steps`` chained steps (already compiled)."""
    jax.block_until_ready(step_fn(state, x, y))
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, x, y)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - t0) / steps


# --------------------------------------------------------------------------
# Checkpoints (orbax)


def save_checkpoint(path: str | os.PathLike, state: TrainState) -> None:
    """Save the whole :class:`TrainState` (params, optimizer state,
    quant_stats, step) under the directory ``path`` (must not exist yet);
    returns once it is on disk."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.abspath(path), state)
        checkpointer.wait_until_finished()


#: The JSON files of an orbax checkpoint directory (relative paths; a
#: missing optional one is fine, a present one must parse).
_CHECKPOINT_JSON = ("_METADATA", "_CHECKPOINT_METADATA", "_sharding")


def restore_checkpoint(path: str | os.PathLike, like: TrainState) -> TrainState:
    """Restore a :class:`TrainState` saved by :func:`save_checkpoint`.

    ``like`` gives the tree structure, shapes, dtypes and shardings (e.g. a
    freshly initialised state); its values are not used.

    Raises:
      FileNotFoundError: ``path`` is not a directory.
      ValueError: the checkpoint is damaged or is not one of this state: the
        message names the file (a metadata file that does not parse, an
        ``ocdbt`` manifest or data file that cannot be read) or the entry
        (e.g. ``params.dense0.kernel``) that could not be restored. Orbax
        stores arrays without checksums, so a flipped bit inside raw array
        data can go unnoticed; truncated, missing or undecodable files are
        detected.
    """
    import json

    import orbax.checkpoint as ocp

    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"checkpoint directory {root} does not exist")
    array_metadatas = os.path.join(root, "array_metadatas")
    names = list(_CHECKPOINT_JSON)
    if os.path.isdir(array_metadatas):
        names += [os.path.join("array_metadatas", f) for f in sorted(os.listdir(array_metadatas))]
    for name in names:
        file = os.path.join(root, name)
        if os.path.isfile(file):
            try:
                with open(file, "rb") as f:
                    json.loads(f.read().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"checkpoint {root} is damaged: {file} is not valid JSON ({exc})") from exc
    if not os.path.isfile(os.path.join(root, "_METADATA")):
        raise ValueError(f"checkpoint {root} is damaged or incomplete: {os.path.join(root, '_METADATA')} is missing")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(root, abstract)
    except Exception as exc:  # orbax/tensorstore raise bare Exception, ValueError, ...
        raise ValueError(f"checkpoint {root} is damaged or does not match the state: {_damaged_part(str(exc))}") from exc


def _damaged_part(message: str) -> str:
    """What an orbax/tensorstore error names: the local file it could not
    decode or read, and/or the array (tree path) it was reading; the first
    line of the message if it names neither."""
    import re

    parts = []
    files = re.findall(r'local file "([^"]+)"', message)
    decoding = re.findall(r'Error decoding local file "([^"]+)"', message)
    if decoding:
        parts.append(f"cannot decode {decoding[0]}")
    elif files and not files[0].endswith(os.sep):
        parts.append(f"cannot read {files[0]}")
    arrays = re.findall(r'Error reading "([^"]+)/\.zarray"', message) or re.findall(r"'path': '([^'/][^']*)/'", message)
    if arrays:
        parts.append(f"array {arrays[0]} (stored under ocdbt.process_*/d/ or d/) could not be read")
    if not parts:
        parts.append(message.strip().splitlines()[0][:300] if message.strip() else "unknown error")
    return "; ".join(parts)


__all__ = [
    "MLP",
    "QuantConfig",
    "TrainState",
    "accuracy",
    "calibrate",
    "epoch_batches",
    "fit_activation_alphas",
    "fit_paper_alphas",
    "init_state",
    "load_digits_split",
    "make_eval_fn",
    "make_train_step",
    "restore_checkpoint",
    "save_checkpoint",
    "time_step",
]
