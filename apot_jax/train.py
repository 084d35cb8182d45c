"""Generic quantization-aware training helpers (linen and NNX), checkpoints.

Model- and data-agnostic: any linen module whose state is ``params`` plus the
``quant_stats`` collection, or any NNX module with ``QuantStat`` variables,
trained with any optax transformation on ``(x, y)`` batches with integer
labels (softmax cross-entropy). The digits job of ``apot qat`` (data, models,
recipes) is application code in ``apot_cli/digits.py``.

* :class:`TrainState`: step, params, optimizer state and the ``quant_stats``
  collection, one pytree (checkpointed as a whole with orbax).
* :func:`make_train_step`: one jitted optax step for a linen module; with a
  ``Mesh`` (``jax.make_mesh``, one axis ``"data"``) the batch is sharded on
  ``"data"`` and the state replicated, and the observers' min/max are taken
  over the whole global batch (XLA all-reduces the reductions), so the
  statistics equal a single-device run's.
* :func:`make_nnx_train_step`: the same step for an NNX module and its
  ``nnx.Optimizer`` (observers update their ``QuantStat`` in place).
* :func:`make_eval_fn`, :func:`accuracy`: evaluation with observers off.
* :func:`calibrate`: observe activations with fake quant off (post-training
  statistics), the usual start of QAT from a float model.
* :func:`save_checkpoint`, :func:`restore_checkpoint`: orbax, with damaged
  files named.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from apot_jax.fake_quantize_module import QUANT_STATS, set_flags

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

    if TYPE_CHECKING:  # added by flax.struct.dataclass, which does not declare it

        def replace(self, **updates: Any) -> TrainState: ...


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
        return cast(jax.Array, model.apply(variables, x))  # no mutable=: the output alone

    return logits


def accuracy(
    eval_fn: Callable[[TrainState, jax.Array], jax.Array], state: TrainState, x: np.ndarray, y: np.ndarray
) -> float:
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


def make_nnx_train_step() -> Callable[[nnx.Module, nnx.Optimizer, jax.Array, jax.Array], dict[str, jax.Array]]:
    """A jitted NNX step ``(model, optimizer, x, y) -> {"loss", "accuracy"}``.

    ``optimizer`` is ``nnx.Optimizer(model, tx, wrt=nnx.Param)``; the step
    differentiates the mean softmax cross-entropy with respect to the
    ``nnx.Param`` variables (kernels, biases, learnable alphas), applies the
    optax update in place, and keeps the observers' ``QuantStat`` updates of
    the same forward (NNX propagates them out of the transforms). ``x``
    float32 ``(batch, ...)``, ``y`` int32 ``(batch,)``; the NNX counterpart
    of :func:`make_train_step` (one device).
    """

    @nnx.jit
    def step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
        def loss_fn(model: nnx.Module) -> tuple[jax.Array, jax.Array]:
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return {"loss": loss, "accuracy": jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))}

    return step

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
        raise ValueError(
            f"checkpoint {root} is damaged or does not match the state: {_damaged_part(str(exc))}"
        ) from exc


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
    "TrainState",
    "accuracy",
    "calibrate",
    "init_state",
    "make_eval_fn",
    "make_nnx_train_step",
    "make_train_step",
    "restore_checkpoint",
    "save_checkpoint",
]

#: The digits job's names that this module held until the job moved to
#: ``apot_cli.digits``. No alias: resolving them here would make the library
#: import the CLI package above it, so the old name fails with where it went.
_MOVED_TO_APOT_CLI = (
    "MLP",
    "QuantConfig",
    "epoch_batches",
    "fit_activation_alphas",
    "fit_paper_alphas",
    "load_digits_split",
    "time_step",
)


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_APOT_CLI:
        raise AttributeError(
            f"apot_jax.train.{name} moved to apot_cli.digits.{name} with the rest of the digits job "
            f"(application code, not a library helper): use `from apot_cli.digits import {name}`"
        )
    raise AttributeError(f"module 'apot_jax.train' has no attribute {name!r}")
