"""Parity of the paper recipe (``docs/numerics.md`` section 9): sign-magnitude
qparams, codes and fake quant, the learnable-alpha gradients (per element and
summed; weights and activations), weight normalization, per-channel alpha,
the fitted starting alpha, the Flax / torch fake-quant modules and the
export, with the APoT ``(b, k)`` tables (the paper's own level sets:
``parity_tests/test_paper_levels.py``), ``apot_jax`` against
``apot_torch`` through their public APIs, every
pair of JAX and torch backends. Everything is bitwise: the sums (alpha's
gradient, the normalization statistics, the fit's errors) have a fixed
pairwise order in both frameworks."""

from __future__ import annotations

import numpy as np
import pytest

from apot_parity import compare

jax = pytest.importorskip("jax", reason="paper-recipe parity needs jax")
torch = pytest.importorskip("torch", reason="paper-recipe parity needs torch")
import jax.numpy as jnp  # noqa: E402

import apot_jax.paper as jpaper  # noqa: E402
import apot_torch.paper as tpaper  # noqa: E402
from apot_jax import export as jexport  # noqa: E402
from apot_jax.fake_quantize_module import LearnableAPoTFakeQuantize as JaxLearnable  # noqa: E402
from apot_torch import export as texport  # noqa: E402
from apot_torch.fake_quantize_module import LearnableAPoTFakeQuantize as TorchLearnable  # noqa: E402

CONFIGS = [(2, 1), (3, 2), (4, 3), (5, 2)]


def _ids(c):
    return f"b{c[0]}k{c[1]}"


def _inputs(seed: int, shape, alpha: float) -> np.ndarray:
    """Values around +-alpha and the level midpoints, plus specials."""
    rng = np.random.default_rng(seed)
    x = (rng.uniform(-1.3, 1.3, shape) * alpha).astype(np.float32)
    flat = x.reshape(-1)
    flat[:6] = [0.0, -0.0, alpha, -alpha, 1e-40, -3 * alpha]
    return x


@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_sign_magnitude_forward_codes_and_alpha_gradient(jax_backend, torch_backend, config, parity):
    b, k = config
    tb = torch_backend

    @jax.jit
    def run(x, a, dy):
        qp = jpaper.sign_magnitude_qparams(a, b=b, k=k)
        y, vjp = jax.vjp(lambda v, s: jpaper.learnable_fake_quantize(v, s, b=b, k=k), x, a)
        dx, da = vjp(dy)
        return (
            qp.gamma, qp.quantization_levels, jpaper.quantize(x, qp),
            y, dx, da, jpaper.alpha_grad_elements(x, a, y)
        )

    for alpha in (0.37, 1.0, 2.5e-3):
        x = _inputs(b, (257,), alpha)
        x[7:10] = [np.nan, np.inf, -np.inf]
        dy = np.random.default_rng(b + 1).normal(size=x.shape).astype(np.float32)

        with jax.default_device(jax_backend.device):
            jg, jl, jc, jy, jdx, jda, jel = run(
                jax.device_put(x, jax_backend.device), jnp.float32(alpha), jax.device_put(dy, jax_backend.device)
            )
        xt = tb.to_torch(x).requires_grad_(True)
        at = torch.tensor(alpha, dtype=torch.float32, device=tb.device, requires_grad=True)
        tq = tpaper.sign_magnitude_qparams(at.detach(), b=b, k=k)
        yt = tpaper.learnable_fake_quantize(xt, at, b=b, k=k)
        yt.backward(tb.to_torch(dy))
        tel = tpaper.alpha_grad_elements(xt.detach(), at.detach(), yt.detach())
        comps = [
            compare("gamma", np.asarray(jg), tb.to_numpy(tq.gamma)),
            compare("levels", np.asarray(jl), tb.to_numpy(tq.quantization_levels)),
            compare("codes", np.asarray(jc), tb.to_numpy(tpaper.quantize(xt.detach(), tq))),
            compare("fake_quant", np.asarray(jy), tb.to_numpy(yt)),
            compare("grad_x", np.asarray(jdx), tb.to_numpy(xt.grad)),
            compare("alpha_grad_elements", np.asarray(jel), tb.to_numpy(tel)),
            compare("grad_alpha", np.asarray(jda), tb.to_numpy(at.grad)),
        ]
        parity.record(f"{jax_backend.name}~{tb.name}", f"sign-magnitude b={b} k={k} alpha={alpha}", comps)


@pytest.mark.parametrize("config", [(4, 2), (3, 1), (2, 2), (8, 2)], ids=_ids)
def test_learnable_activation_alpha(jax_backend, torch_backend, config, parity):
    """The unsigned (activation) scheme with a learnt alpha: forward, x and
    alpha gradients, per-element alpha gradients, for inputs of both signs,
    in float32 and bfloat16."""
    b, k = config
    tb = torch_backend

    @jax.jit
    def run(x, a, dy):
        f = lambda v, s: jpaper.learnable_fake_quantize(v, s, b=b, k=k, scheme="unsigned")  # noqa: E731
        y, vjp = jax.vjp(f, x, a)
        dx, da = vjp(dy.astype(x.dtype))
        elements = jpaper.alpha_grad_elements(x.astype(jnp.float32), a, y.astype(jnp.float32), "unsigned")
        return jpaper.unsigned_qparams(a, b=b, k=k).quantization_levels, y, dx, da, elements

    for alpha, dtype in ((0.37, "float32"), (2.5, "float32"), (1.0, "bfloat16")):
        x = _inputs(10 + b, (301,), alpha)
        x[7:10] = [np.nan, np.inf, -np.inf]
        dy = np.random.default_rng(b + 2).normal(size=x.shape).astype(np.float32)

        x_in = x.astype(jnp.bfloat16) if dtype == "bfloat16" else x
        with jax.default_device(jax_backend.device):
            jl, jy, jdx, jda, jel = run(
                jax.device_put(x_in, jax_backend.device), jnp.float32(alpha), jax.device_put(dy, jax_backend.device)
            )
        xt = tb.to_torch(np.asarray(x_in, np.float32))
        xt = (xt.to(torch.bfloat16) if dtype == "bfloat16" else xt).requires_grad_(True)
        at = torch.tensor(alpha, dtype=torch.float32, device=tb.device, requires_grad=True)
        yt = tpaper.learnable_fake_quantize(xt, at, b=b, k=k, scheme="unsigned")
        yt.backward(tb.to_torch(dy).to(yt.dtype))
        tel = tpaper.alpha_grad_elements(xt.detach().float(), at.detach(), yt.detach().float(), "unsigned")
        comps = [
            compare("levels", np.asarray(jl), tb.to_numpy(tpaper.unsigned_qparams(at, b=b, k=k)[2])),
            compare("fake_quant", np.asarray(jy, np.float32), tb.to_numpy(yt.float())),
            compare("grad_x", np.asarray(jdx, np.float32), tb.to_numpy(xt.grad.float())),
            compare("alpha_grad_elements", np.asarray(jel), tb.to_numpy(tel)),
            compare("grad_alpha", np.asarray(jda), tb.to_numpy(at.grad)),
        ]
        parity.record(f"{jax_backend.name}~{tb.name}", f"learnable unsigned b={b} k={k} alpha={alpha} {dtype}", comps)


@pytest.mark.parametrize(
    "b, k, scheme", [(2, 1, "unsigned"), (4, 2, "unsigned"), (2, 1, "sign-magnitude"), (3, 2, "sign-magnitude")]
)
def test_fit_alpha(jax_backend, torch_backend, b, k, scheme, parity):
    """The least-squares starting alpha: same candidate grid, same pairwise
    error sums, the same chosen bits, for float32 and bfloat16 inputs."""
    tb = torch_backend
    x = np.random.default_rng(30 + b).standard_t(3, size=(48, 40)).astype(np.float32)
    x = np.maximum(x, 0) if scheme == "unsigned" else x
    comps = []
    for dtype in ("float32", "bfloat16"):
        x_in = np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32) if dtype == "bfloat16" else x
        with jax.default_device(jax_backend.device):
            xj = jax.device_put(jnp.asarray(x_in, dtype), jax_backend.device)
            ja = jpaper.fit_alpha(xj, b=b, k=k, scheme=scheme)
        xt = tb.to_torch(x_in).to(getattr(torch, dtype))
        ta = tpaper.fit_alpha(xt, b=b, k=k, scheme=scheme)
        comps.append(compare(f"fit_alpha_{dtype}", np.asarray(ja), tb.to_numpy(ta)))
    if scheme == "sign-magnitude":  # per output channel: JAX kernels (in, out), torch weights (out, in)
        x[:, 3] *= 40
        with jax.default_device(jax_backend.device):
            ja = jpaper.fit_alpha(jax.device_put(x, jax_backend.device), b=b, k=k, scheme=scheme, channel_axis=-1)
        ta = tpaper.fit_alpha(tb.to_torch(x.T.copy()), b=b, k=k, scheme=scheme, channel_axis=0)
        comps.append(compare("fit_alpha_per_channel", np.asarray(ja), tb.to_numpy(ta)))
    parity.record(f"{jax_backend.name}~{tb.name}", f"fit_alpha b={b} k={k} {scheme}", comps)


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
@pytest.mark.parametrize("config", [(3, 2), (2, 1)], ids=_ids)
def test_per_channel_paper_weight_quant(jax_backend, torch_backend, config, normalize, parity):
    # JAX kernels are (in, out) with alpha along -1; torch weights (out, in) along 0.
    b, k = config
    tb = torch_backend
    rng = np.random.default_rng(7)
    kernel = (rng.normal(size=(37, 6)) * 0.2).astype(np.float32)
    alpha = rng.uniform(0.3, 2.0, 6).astype(np.float32)
    dy = rng.normal(size=kernel.shape).astype(np.float32)

    @jax.jit
    def run(w, a, dy):
        y, vjp = jax.vjp(
            lambda v, s: jpaper.paper_weight_quant(v, s, b=b, k=k, normalize=normalize, channel_axis=-1), w, a
        )
        return (y,) + vjp(dy) + jpaper.normalize_weight(w, channel_axis=-1)

    with jax.default_device(jax_backend.device):
        jy, jdw, jda, jhat, jmean, jstd = run(*(jax.device_put(v, jax_backend.device) for v in (kernel, alpha, dy)))
    wt = tb.to_torch(kernel.T.copy()).requires_grad_(True)
    at = tb.to_torch(alpha).requires_grad_(True)
    yt = tpaper.paper_weight_quant(wt, at, b=b, k=k, normalize=normalize, channel_axis=0)
    yt.backward(tb.to_torch(dy.T.copy()))
    that, tmean, tstd = tpaper.normalize_weight(wt.detach(), channel_axis=0)
    comps = [
        compare("fake_quant", np.asarray(jy), tb.to_numpy(yt).T),
        compare("grad_w", np.asarray(jdw), tb.to_numpy(wt.grad).T),
        compare("grad_alpha", np.asarray(jda), tb.to_numpy(at.grad)),
        compare("w_hat", np.asarray(jhat), tb.to_numpy(that).T),
        compare("mean", np.asarray(jmean).ravel(), tb.to_numpy(tmean).ravel()),
        compare("std", np.asarray(jstd).ravel(), tb.to_numpy(tstd).ravel()),
    ]
    parity.record(f"{jax_backend.name}~{tb.name}", f"per-channel b={b} k={k} normalize={normalize}", comps)


def test_modules_and_export(jax_backend, torch_backend, parity):
    tb = torch_backend
    rng = np.random.default_rng(11)
    kernel = (rng.normal(size=(24, 5)) * 0.1).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    j_mod = JaxLearnable(3, 2, channel_axis=-1, alpha_init=1.7)
    t_mod = TorchLearnable(3, 2, channel_axis=0, channels=5, alpha_init=1.7).to(tb.device)
    with jax.default_device(jax_backend.device):
        kernel_j = jax.device_put(kernel, jax_backend.device)
        variables = j_mod.init(jax.random.key(0), kernel_j)
        jy, jgrads = jax.jit(jax.value_and_grad(lambda p, w: jnp.sum(j_mod.apply({"params": p}, w) ** 2)))(
            variables["params"], kernel_j
        )
        jq = jax.jit(j_mod.apply)(variables, kernel_j)
        exported_j = jexport.export_kernel(
            kernel_j, variables["params"]["alpha"], b=3, k=2, per_channel=True, bias=bias
        )
        dequant_j = jexport.dequantize_kernel(exported_j)
    wt = tb.to_torch(kernel.T.copy())
    yt = t_mod(wt)
    (yt**2).sum().backward()
    exported_t = texport.export_weight(wt, t_mod.alpha.detach(), b=3, k=2, per_channel=True, bias=tb.to_torch(bias))
    comps = [
        compare("module_output", np.asarray(jq), tb.to_numpy(yt.detach()).T),
        compare("module_grad_alpha", np.asarray(jgrads["alpha"]), tb.to_numpy(t_mod.alpha.grad)),
        compare("codes", exported_j.codes, tb.to_numpy(exported_t.codes).T),
        compare("export_gamma", exported_j.gamma, tb.to_numpy(exported_t.gamma)),
        compare("export_scale", exported_j.scale.ravel(), tb.to_numpy(exported_t.scale).ravel()),
        compare("dequantized_kernel", np.asarray(dequant_j), tb.to_numpy(texport.dequantize_weight(exported_t)).T),
    ]
    parity.record(f"{jax_backend.name}~{tb.name}", "learnable module + export b=3 k=2 per-channel", comps)
    # the exported layer's float output: a matmul, so a tolerance (order of the sums)
    x = rng.normal(size=(4, 24)).astype(np.float32)
    with jax.default_device(jax_backend.device):
        yj = np.asarray(jexport.dense_from_codes(jax.device_put(x, jax_backend.device), exported_j))
    yt_lin = tb.to_numpy(texport.linear_from_codes(tb.to_torch(x), exported_t))
    np.testing.assert_allclose(yj, yt_lin, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_channel", [False, True])
def test_conv_export(jax_backend, torch_backend, per_channel, parity):
    """A conv kernel in each framework's layout (Flax ``(kh, kw, in, out)``,
    torch ``(out, in, kh, kw)``), exported without normalization: codes,
    dequantized kernel and the convolution from the codes. (With
    normalization the statistics are pairwise sums in each layout's element
    order, equal across layouts only to float32 rounding: docs/numerics.md
    9.5; the same layout is bitwise, test_per_channel_paper_weight_quant.)"""
    tb = torch_backend
    rng = np.random.default_rng(12)
    kernel = (rng.normal(size=(3, 3, 2, 4)) * 0.3).astype(np.float32)
    alpha = rng.uniform(0.3, 0.9, 4 if per_channel else ()).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    image = rng.normal(size=(2, 7, 7, 2)).astype(np.float32)
    with jax.default_device(jax_backend.device):
        ej = jexport.export_kernel(
            jax.device_put(kernel, jax_backend.device), jnp.asarray(alpha), b=3, k=2, normalize=False,
            per_channel=per_channel, bias=bias,
        )  # fmt: skip
        jk = np.asarray(jexport.dequantize_kernel(ej))
        jy = np.asarray(jexport.conv_from_codes(jax.device_put(image, jax_backend.device), ej, padding="VALID"))
    et = texport.export_weight(
        tb.to_torch(kernel.transpose(3, 2, 0, 1).copy()), tb.to_torch(alpha), b=3, k=2, normalize=False,
        per_channel=per_channel, bias=tb.to_torch(bias),
    )  # fmt: skip
    tk = tb.to_numpy(texport.dequantize_weight(et)).transpose(2, 3, 1, 0)
    ty = tb.to_numpy(texport.conv_from_codes(tb.to_torch(image.transpose(0, 3, 1, 2).copy()), et)).transpose(0, 2, 3, 1)
    comps = [
        compare("conv_codes", ej.codes, tb.to_numpy(et.codes).transpose(2, 3, 1, 0)),
        compare("conv_gamma", ej.gamma, tb.to_numpy(et.gamma)),
        compare("conv_dequantized_kernel", jk, tk),
    ]
    parity.record(f"{jax_backend.name}~{tb.name}", f"conv export b=3 k=2 per_channel={per_channel}", comps)
    parity.assert_ok()
    # the convolutions themselves sum in each backend's order: a tolerance
    np.testing.assert_allclose(jy, ty, rtol=1e-5, atol=1e-5)
