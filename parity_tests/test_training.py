"""Training parity: one small MLP, same initial weights and data order,
trained with SGD in Flax/optax and in torch (``prepare_qat`` with the APoT
qconfig).

The Flax model mirrors exactly where ``prepare_qat`` puts the fake quants:
the input (``QuantStub``, unsigned table), each Linear's weight (signed
table, ``apot_qconfig_4bit_signed``) and each Linear's output (unsigned).

What is compared, every step:
* the observer statistics of all five fake quants and the APoT codes of both
  weights: bitwise at step 0 (same initial weights and data), and afterwards
  to within the float32 rounding of the matmuls (see below);
* the loss, within ``LOSS_RTOL`` (measured on the CPU: at most 1 ulp, a
  relative 1e-7, from the matmuls and the log-softmax).

Why not bitwise after step 0: torch (MKL/oneDNN) and XLA sum the matmul
products in different orders (and may or may not fuse multiply-adds), so
the activations, the losses and then the SGD updates differ in the last
bits. Everything APoT-specific is bitwise (``test_core``, ``test_modules``);
here the tolerance covers only that summation order. A weight-code flip
would need a weight within a few ulp of a decision threshold: the test
asserts the codes are equal at every step (none flips for this seed/data).
"""

from __future__ import annotations

import numpy as np
import pytest

from apot_parity import golden

torch = pytest.importorskip("torch", reason="training parity needs torch")
nn_torch = torch.nn
jax = pytest.importorskip("jax", reason="training parity needs jax")
import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import apot_jax as aj  # noqa: E402
import apot_jax.fake_quantize_module as jfq  # noqa: E402
import apot_torch as at  # noqa: E402
import apot_torch.qconfig as tqc  # noqa: E402

B, K = 4, 2
SIZES = (8, 16, 4)
BATCH, STEPS, LR = 16, 12, 0.2
#: relative tolerance on the loss: float32 matmul summation order only
LOSS_RTOL = 1e-5
#: relative tolerance on the observer statistics after step 0
STATS_RTOL = 1e-5


def data():
    u = golden.uniform(4242, STEPS * BATCH * SIZES[0]).reshape(STEPS, BATCH, SIZES[0]).astype(np.float32)
    w = (golden.uniform(4343, SIZES[0] * SIZES[2]).reshape(SIZES[0], SIZES[2]) - 0.5).astype(np.float32)
    labels = np.argmax(u @ w, axis=-1).astype(np.int64)
    return u, labels


class TorchMLP(nn_torch.Module):
    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.fc1 = nn_torch.Linear(SIZES[0], SIZES[1])
        self.relu = nn_torch.ReLU()
        self.fc2 = nn_torch.Linear(SIZES[1], SIZES[2])
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.fc2(self.relu(self.fc1(self.quant(x)))))


class FlaxMLP(nn.Module):
    """The same graph as ``prepare_qat(TorchMLP)``; kernels in torch layout."""

    @nn.compact
    def __call__(self, x):
        fq = jfq.APoTFakeQuantize
        x = fq(B, K, name="quant")(x)
        for i, (d_in, d_out) in enumerate(zip(SIZES[:-1], SIZES[1:]), start=1):
            w = self.param(f"fc{i}_weight", nn.initializers.zeros, (d_out, d_in), jnp.float32)
            b = self.param(f"fc{i}_bias", nn.initializers.zeros, (d_out,), jnp.float32)
            w = fq(B, K, signed=True, name=f"fc{i}_weight_fake_quant")(w)
            x = fq(B, K, name=f"fc{i}_out")(x @ w.T + b)
            if i == 1:
                x = nn.relu(x)
        return x


# torch module name -> Flax fake quant name
FAKE_QUANTS = {
    "quant.activation_post_process": "quant",
    "fc1.weight_fake_quant": "fc1_weight_fake_quant",
    "fc1.activation_post_process": "fc1_out",
    "fc2.weight_fake_quant": "fc2_weight_fake_quant",
    "fc2.activation_post_process": "fc2_out",
}


def _torch_run(xs, labels):
    torch.manual_seed(0)
    model = TorchMLP()
    model.qconfig = tqc.apot_qconfig_4bit_signed
    model.train()
    model = torch.ao.quantization.prepare_qat(model)
    init = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    modules = dict(model.named_modules())
    losses, stats, codes = [], [], []
    for x, y in zip(xs, labels):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        step_stats = {}
        for tname, fname in FAKE_QUANTS.items():
            obs = modules[tname].activation_post_process
            step_stats[fname] = (obs.min_val.item(), obs.max_val.item())
        step_codes = {}
        for i in (1, 2):
            fq = modules[f"fc{i}.weight_fake_quant"]
            step_codes[i] = (
                at.quantize_APoT(modules[f"fc{i}"].weight.detach(), *fq.calculate_qparams()).int_repr().numpy()
            )
        opt.step()
        losses.append(loss.item())
        stats.append(step_stats)
        codes.append(step_codes)
    return init, np.array(losses, np.float32), stats, codes


def _flax_run(init, xs, labels, device):
    model = FlaxMLP()
    # full float32 matmuls: TPUs default to bfloat16 passes, recent GPUs to TF32
    with jax.default_device(device), jax.default_matmul_precision("highest"):
        variables = model.init(jax.random.key(0), jnp.zeros((BATCH, SIZES[0]), jnp.float32))
        params = {f"fc{i}_{p}": jnp.asarray(init[f"fc{i}.{p}"]) for i in (1, 2) for p in ("weight", "bias")}
        stats = variables["quant_stats"]
        tx = optax.sgd(LR)
        opt_state = tx.init(params)

        def loss_fn(params, stats, x, y):
            logits, updates = model.apply({"params": params, "quant_stats": stats}, x, mutable=["quant_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates["quant_stats"]

        @jax.jit
        def step(params, opt_state, stats, x, y):
            (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y)
            codes = {}
            for i in (1, 2):
                s = new_stats[f"fc{i}_weight_fake_quant"]
                qp = aj.calculate_qparams(s["min_val"], s["max_val"], b=B, k=K, signed=True)
                codes[i] = aj.quantize(params[f"fc{i}_weight"], qp)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, new_stats, loss, codes

        losses, all_stats, all_codes = [], [], []
        for x, y in zip(xs, labels):
            params, opt_state, stats, loss, codes = step(params, opt_state, stats, jnp.asarray(x), jnp.asarray(y))
            losses.append(float(loss))
            all_stats.append({name: (float(s["min_val"]), float(s["max_val"])) for name, s in stats.items()})
            all_codes.append({i: np.asarray(c) for i, c in codes.items()})
    return np.array(losses, np.float32), all_stats, all_codes


@pytest.mark.slow
def test_training_parity(jax_backend, parity):
    from apot_parity import compare

    xs, labels = data()
    init, t_losses, t_stats, t_codes = _torch_run(xs, labels)
    f_losses, f_stats, f_codes = _flax_run(init, xs, labels, jax_backend.device)

    # step 0: same weights and data: the input and weight statistics are
    # bitwise equal (the Linear outputs depend on the matmul order)
    for name in ("quant", "fc1_weight_fake_quant", "fc2_weight_fake_quant"):
        assert np.array(f_stats[0][name], np.float32).tobytes() == np.array(t_stats[0][name], np.float32).tobytes()
    comps = []
    for step in range(STEPS):
        for i in (1, 2):
            comps.append(compare(f"step{step}/fc{i}_weight_codes", f_codes[step][i].astype(np.int32),
                                 t_codes[step][i].astype(np.int32)))
        for name in FAKE_QUANTS.values():
            got = np.array(f_stats[step][name], np.float64)
            ref = np.array(t_stats[step][name], np.float64)
            np.testing.assert_allclose(got, ref, rtol=STATS_RTOL, err_msg=f"step {step} {name}")
    np.testing.assert_allclose(f_losses, t_losses, rtol=LOSS_RTOL)
    parity.check(jax_backend.name, "training mlp", comps)
    # the run really trained: the loss went down
    assert t_losses[-3:].mean() < t_losses[:3].mean()
