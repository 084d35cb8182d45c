"""One typed config, both frameworks: the module apot_jax and apot_torch each
build from the same config compute the same bits on the same input."""

from __future__ import annotations

import numpy as np
import pytest

from apot_common.config import APoTConfig, LearnableAPoTConfig, SignMagnitudeConfig

jax = pytest.importorskip("jax", reason="config parity needs jax")
torch = pytest.importorskip("torch", reason="config parity needs torch")
import jax.numpy as jnp  # noqa: E402

import apot_jax.fake_quantize_module as fqm  # noqa: E402
import apot_torch  # noqa: E402


@pytest.mark.parametrize("cfg", [
    APoTConfig(b=4, k=2, signed=True),
    SignMagnitudeConfig(b=4, level_set="paper"),
    SignMagnitudeConfig(b=3),
    LearnableAPoTConfig(b=4, level_set="paper"),
    LearnableAPoTConfig(b=3, k=1, signed=False, normalize=False, alpha_init=2.0, level_set="paper"),
], ids=repr)
def test_one_config_gives_the_same_bits_in_both_frameworks(cfg):
    """The module each framework builds from one config computes the same
    bits on the same input (first call: observe, then fake-quantize)."""
    x = np.random.default_rng(3).normal(size=(16, 12)).astype(np.float32) * 2
    if isinstance(cfg, LearnableAPoTConfig) and not cfg.signed:
        x = np.abs(x)
    module = fqm.linen_from_config(cfg)
    variables = module.init(jax.random.key(0), jnp.asarray(x))
    y_jax, _ = module.apply(variables, jnp.asarray(x), mutable=["quant_stats"])
    y_torch = apot_torch.from_config(cfg)(torch.from_numpy(x.copy()))
    np.testing.assert_array_equal(np.asarray(y_jax).view(np.int32), y_torch.detach().numpy().view(np.int32))
