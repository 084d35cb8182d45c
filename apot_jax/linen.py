"""apot's Flax linen modules under the names Flax uses (``apot_jax.linen.APoTDense``
beside ``apot_jax.nnx.APoTDense``).

State lives in the ``"quant_stats"`` collection and changes only when that
collection is mutable and the module is not initializing (the ``BatchNorm``
convention); :func:`set_flags` freezes or resumes the observers of a whole
variables tree.

>>> import jax, jax.numpy as jnp
>>> from apot_jax import linen as aln
>>> layer = aln.APoTDense(features=2, b=4, k=2)
>>> x = jnp.ones((1, 3))
>>> variables = layer.init(jax.random.key(0), x)
>>> y, updates = layer.apply(variables, x, mutable=["quant_stats"])
>>> float(updates["quant_stats"]["input_quant"]["max_val"])
1.0
"""

from apot_jax.fake_quantize_module import (
    QUANT_STATS,
    APoTFakeQuantize,
    LearnableAPoTFakeQuantize,
    SignMagnitudeFakeQuantize,
    UniformFakeQuantize,
    set_flags,
)
from apot_jax.layers import APoTConv, APoTDense

__all__ = [
    "QUANT_STATS",
    "APoTConv",
    "APoTDense",
    "APoTFakeQuantize",
    "LearnableAPoTFakeQuantize",
    "SignMagnitudeFakeQuantize",
    "UniformFakeQuantize",
    "set_flags",
]
