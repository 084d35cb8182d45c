"""apot_jax.train: the generic QAT helpers (linen and NNX train steps,
calibration, orbax checkpoints, the data-parallel step on a device mesh) on
the digits job's MLP; a damaged checkpoint names the damaged file."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from apot_cli import digits as D
from apot_jax import train as T

BATCH = 64


@pytest.fixture(scope="module")
def digits():
    return D.load_digits_split()


def _model(**quant) -> D.MLP:
    config = D.QuantConfig(bits=4, k=2, **quant)
    return D.MLP(hidden=(32,), quant=config, quantize_input=True)


def _batches(digits, n: int, epoch: int = 0):
    x_tr, y_tr = digits[0], digits[1]
    out = []
    while len(out) < n:
        out += list(D.epoch_batches(x_tr, y_tr, BATCH, seed=0, epoch=epoch))
        epoch += 1
    return [(jnp.asarray(x), jnp.asarray(y)) for x, y in out[:n]]


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    import jax
    import optax

    from apot_cli import digits as D
    from apot_jax import train as T

    model = D.MLP(hidden=(8,), quant=D.QuantConfig(bits=4, k=2))
    state = T.init_state(model, optax.adam(1e-3), jax.random.key(0), jnp.zeros((2, 64)))
    path = tmp_path_factory.mktemp("ckpt") / "saved"
    T.save_checkpoint(path, state)
    return path, state


def _damaged_copy(saved, tmp_path, rel, how):
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(saved, copy)
    if rel is None:  # the largest array data file
        rel = max((p for p in copy.rglob("*") if p.is_file() and p.parent.name == "d"), key=lambda p: p.stat().st_size)
        rel = rel.relative_to(copy)
    file = copy / rel
    data = file.read_bytes()
    if how == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        file.write_bytes(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :])
    else:
        file.unlink()
    return copy, str(rel)


def test_checkpoint_resume_gives_the_same_next_step(digits, tmp_path):
    model = _model(signed_weights=True)
    tx = optax.adam(1e-3)
    batches = _batches(digits, 4)
    state = T.init_state(model, tx, jax.random.key(0), batches[0][0])
    step = T.make_train_step(model, tx)
    for x, y in batches[:2]:
        state, _ = step(state, x, y)
    T.save_checkpoint(tmp_path / "ckpt", state)

    uninterrupted = state
    losses = []
    for x, y in batches[2:]:
        uninterrupted, metrics = step(uninterrupted, x, y)
        losses.append(float(metrics["loss"]))

    # A fresh process would only have a freshly initialised state to restore into.
    fresh = T.init_state(model, tx, jax.random.key(123), batches[0][0])
    restored = T.restore_checkpoint(tmp_path / "ckpt", fresh)
    assert int(restored.step) == 2
    stats = restored.quant_stats["dense0"]["input_quant"]
    assert float(stats["max_val"]) == 1.0 and float(stats["min_val"]) == 0.0  # observed pixels, not +-inf
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    resumed_losses = []
    for x, y in batches[2:]:
        restored, metrics = step(restored, x, y)
        resumed_losses.append(float(metrics["loss"]))
    assert resumed_losses == losses  # bitwise, both steps after the resume
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(uninterrupted)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_data_parallel_matches_single_device(digits):
    devices = np.array(jax.devices())
    assert devices.size == 8, "conftest.py forces 8 host CPU devices"
    mesh = Mesh(devices, ("data",))
    model = _model(signed_weights=True)
    # SGD, not adam: adam's first update is ~lr * sign(g), which turns a
    # last-bit difference of a near-zero gradient into a full step.
    tx = optax.sgd(0.1, momentum=0.9)
    batches = _batches(digits, 3)
    init = T.init_state(model, tx, jax.random.key(0), batches[0][0])

    single_step = T.make_train_step(model, tx)
    single = init
    single_losses = []
    for x, y in batches:
        single, metrics = single_step(single, x, y)
        single_losses.append(float(metrics["loss"]))

    replicated = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec("data"))
    sharded_step = T.make_train_step(model, tx, mesh)
    dp = jax.device_put(init, replicated)
    dp_losses = []
    for i, (x, y) in enumerate(batches):
        xs, ys = jax.device_put(x, data), jax.device_put(y, data)
        assert len(xs.addressable_shards) == 8 and xs.addressable_shards[0].data.shape == (BATCH // 8, 64)
        dp, metrics = sharded_step(dp, xs, ys)
        dp_losses.append(float(metrics["loss"]))
        if i == 0:
            # Global statistics: the first layer's input observer saw the
            # whole global batch, not one device's shard.
            stats = dp.quant_stats["dense0"]["input_quant"]
            shard_max = [float(s.data.max()) for s in xs.addressable_shards]
            hidden_max = float(dp.quant_stats["dense1"]["input_quant"]["max_val"])
            assert float(stats["max_val"]) == float(np.max(x)) == max(shard_max)
            assert float(stats["min_val"]) == float(np.min(x))
    assert dp.params["dense0"]["kernel"].sharding.is_fully_replicated

    # After 3 steps: observer statistics and params equal within float32
    # tolerance (the gradient all-reduce sums in another order).
    np.testing.assert_allclose(dp_losses, single_losses, rtol=1e-6, atol=0)
    for a, b in zip(jax.tree_util.tree_leaves(dp.params), jax.tree_util.tree_leaves(single.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(dp.quant_stats), jax.tree_util.tree_leaves(single.quant_stats)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=0)
    # The input observer's min/max are exact (no arithmetic before it).
    for key in ("min_val", "max_val"):
        assert dp.quant_stats["dense0"]["input_quant"][key] == single.quant_stats["dense0"]["input_quant"][key]
    # Not vacuous: the training moved the params well beyond the tolerance.
    moved = np.abs(np.asarray(single.params["dense0"]["kernel"]) - np.asarray(init.params["dense0"]["kernel"]))
    assert moved.max() > 1e-3
    assert hidden_max > 0


def test_calibrate_then_evaluate_leaves_statistics_alone(digits):
    x_tr, y_tr, x_te, y_te = digits
    model = _model(signed_weights=True)
    tx = optax.adam(1e-3)
    state = T.init_state(model, tx, jax.random.key(0), jnp.asarray(x_tr[:BATCH]))
    calibrated = T.calibrate(model, state, [x_tr[:500], x_tr[500:]])
    stats = calibrated.quant_stats["dense0"]
    assert float(stats["input_quant"]["max_val"]) == float(x_tr.max())
    kernel = np.asarray(state.params["dense0"]["kernel"])
    assert (
        float(stats["weight_quant"]["min_val"]) == kernel.min()
        and float(stats["weight_quant"]["max_val"]) == kernel.max()
    )
    assert int(stats["weight_quant"]["fake_quant_enabled"]) == 1 and int(stats["input_quant"]["observer_enabled"]) == 1

    eval_fn = T.make_eval_fn(model)
    logits = eval_fn(calibrated, jnp.asarray(x_te * 3.0))  # out-of-range inputs
    assert logits.shape == (450, 10) and np.isfinite(np.asarray(logits)).all()
    # Evaluation neither observes nor stores: a second evaluation gives the same logits.
    np.testing.assert_array_equal(np.asarray(eval_fn(calibrated, jnp.asarray(x_te * 3.0))), np.asarray(logits))
    assert float(calibrated.quant_stats["dense1"]["input_quant"]["max_val"]) > 0
    # Evaluation uses the stored range (alpha = 1 for the pixels), not the
    # batch's: inputs above it are clipped, as if they were 1.
    clipped = jnp.asarray(np.minimum(x_te * 3.0, 1.0))
    np.testing.assert_array_equal(np.asarray(eval_fn(calibrated, clipped)), np.asarray(logits))


def test_qat_training_learns(digits):
    x_tr, y_tr, x_te, y_te = digits
    model = _model(signed_weights=True)
    tx = optax.adam(3e-3)
    state = T.init_state(model, tx, jax.random.key(0), jnp.asarray(x_tr[:BATCH]))
    step = T.make_train_step(model, tx)
    eval_fn = T.make_eval_fn(model)
    before = T.accuracy(eval_fn, T.calibrate(model, state, [x_tr]), x_te, y_te)
    for epoch in range(4):
        for x, y in D.epoch_batches(x_tr, y_tr, BATCH, 0, epoch):
            state, metrics = step(state, jnp.asarray(x), jnp.asarray(y))
    after = T.accuracy(eval_fn, state, x_te, y_te)
    assert before < 0.3 and after > 0.8, (before, after)


def test_train_step_is_the_sgd_rule_of_the_loss(digits):
    """One jitted ``make_train_step`` equals, bit for bit, the SGD rule
    ``p - lr * g`` written out here for the gradient of the mean
    cross-entropy of the same model, and updates the statistics as a plain
    forward does: a change of one ulp in the training step shows."""
    model = _model(signed_weights=True)
    lr = 0.05
    tx = optax.sgd(lr)
    (x, y), = _batches(digits, 1)
    state = T.init_state(model, tx, jax.random.key(0), x)
    new, metrics = T.make_train_step(model, tx)(state, x, y)

    @jax.jit
    def reference(params, stats, x, y):
        def loss_fn(p):
            logits, upd = model.apply({"params": p, "quant_stats": stats}, x, mutable=["quant_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["quant_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, new_stats, jax.tree_util.tree_map(lambda p, g: p + (-lr) * g, params, grads)

    loss, stats, params = reference(state.params, state.quant_stats, x, y)
    assert int(new.step) == 1
    assert np.asarray(metrics["loss"]).tobytes() == np.asarray(loss).tobytes()
    got, want = jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(params)
    assert len(got) == len(want) == 4
    for a, b in zip(got, want):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    for a, b in zip(jax.tree_util.tree_leaves(new.quant_stats), jax.tree_util.tree_leaves(stats)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    moved = [
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(got, jax.tree_util.tree_leaves(state.params))
    ]
    assert min(moved) > 0  # every parameter moved


def test_nnx_train_step_is_the_sgd_rule_and_updates_the_observers(digits):
    """``make_nnx_train_step`` on an NNX model of ``NNXAPoTDense`` layers equals,
    bit for bit, ``p - lr * g`` of the gradient of the mean cross-entropy
    (``nnx.grad`` written out here on a copy), and keeps the observers'
    ``QuantStat`` updates of the same forward."""
    from flax import nnx

    from apot_jax.layers import NNXAPoTDense

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.dense0 = NNXAPoTDense(64, 16, b=4, k=2, signed_weights=True, rngs=rngs)
            self.dense1 = NNXAPoTDense(16, 10, b=4, k=2, signed_weights=True, rngs=rngs)

        def __call__(self, x):
            return self.dense1(jax.nn.relu(self.dense0(x)))

    lr = 0.05
    (x, y), = _batches(digits, 1)
    model = Net(nnx.Rngs(0))
    reference = nnx.clone(model)
    optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)
    metrics = T.make_nnx_train_step()(model, optimizer, x, y)

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    @nnx.jit
    def sgd_reference(m):
        # grads and update in one program, as in the step: XLA may fuse
        # ``p + (-lr) * g`` into one FMA, which an eager update would not
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        return loss, jax.tree_util.tree_map(lambda p, g: p + (-lr) * g, nnx.state(m, nnx.Param), grads)

    loss, want = sgd_reference(reference)
    assert np.asarray(metrics["loss"]).tobytes() == np.asarray(loss).tobytes()
    got = nnx.state(model, nnx.Param)
    leaves = list(zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)))
    assert len(leaves) == 4
    for a, b in leaves:
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    # the observers saw the batch: the input range of the first layer is the pixels'
    stats = model.dense0.input_quant
    assert float(stats.max_val[...]) == float(np.max(x)) and float(stats.min_val[...]) == float(np.min(x))
    assert float(model.dense1.input_quant.max_val[...]) > 0


@pytest.mark.parametrize("rel, how, named", [("_METADATA", "truncate", "_METADATA is not valid JSON"),
                                             ("_METADATA", "flip", "_METADATA is not valid JSON"),
                                             ("_METADATA", "delete", "_METADATA is missing"),
                                             ("manifest.ocdbt", "truncate", "cannot decode .*manifest.ocdbt"),
                                             (None, "truncate", "array params\\.dense\\d\\.kernel"),
                                             (None, "delete", "array params\\.dense\\d\\.kernel")])  # fmt: skip
def test_damaged_checkpoint_names_the_damaged_file(saved_checkpoint, tmp_path, rel, how, named):
    from apot_jax import train as T

    saved, state = saved_checkpoint
    copy, _ = _damaged_copy(saved, tmp_path, rel, how)
    with pytest.raises(ValueError, match=f"checkpoint {copy} is damaged.*{named}"):
        T.restore_checkpoint(copy, state)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.restore_checkpoint(tmp_path / "nowhere", state)


def test_names_moved_to_the_cli_say_where_they_went():
    import apot_jax.train as train_module
    from apot_cli import digits

    for name in train_module._MOVED_TO_APOT_CLI:
        assert hasattr(digits, name), name
        with pytest.raises(AttributeError, match=f"apot_cli.digits.{name}"):
            getattr(train_module, name)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        train_module.nope  # noqa: B018
