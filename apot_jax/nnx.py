"""apot's Flax NNX modules under the names Flax uses (``apot_jax.nnx.APoTDense``
beside ``apot_jax.linen.APoTDense``, as ``nnx.BatchNorm`` beside ``linen.BatchNorm``).

The modules follow ``nnx.Linear`` / ``nnx.Conv`` conventions (``in_features,
out_features, *, rngs``); ``model.eval()`` freezes their observers (the
statistics are used and kept) and ``model.train()`` resumes them, as
``nnx.BatchNorm`` does with its running statistics. Their state is
:class:`QuantStat` Variables (``nnx.state(model, QuantStat)``), the NNX type
of the linen ``"quant_stats"`` collection, so ``nnx.bridge`` converts both
ways. The ``NNX*`` names in ``apot_jax`` are the same classes.

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> from apot_jax import nnx as anx
>>> layer = anx.APoTDense(3, 2, b=4, k=2, rngs=nnx.Rngs(0))
>>> y = layer(jnp.ones((1, 3)))          # observes the input and the kernel
>>> layer.eval()                          # observers frozen for evaluation
>>> float(layer.input_quant.max_val[...]), layer.input_quant.use_running_average
(1.0, True)
"""

from apot_jax.fake_quantize_module import NNXAPoTFakeQuantize as APoTFakeQuantize
from apot_jax.fake_quantize_module import NNXLearnableAPoTFakeQuantize as LearnableAPoTFakeQuantize
from apot_jax.fake_quantize_module import NNXSignMagnitudeFakeQuantize as SignMagnitudeFakeQuantize
from apot_jax.fake_quantize_module import NNXUniformFakeQuantize as UniformFakeQuantize
from apot_jax.fake_quantize_module import QuantStat, set_flags
from apot_jax.layers import NNXAPoTConv as APoTConv
from apot_jax.layers import NNXAPoTDense as APoTDense

__all__ = [
    "APoTConv",
    "APoTDense",
    "APoTFakeQuantize",
    "LearnableAPoTFakeQuantize",
    "QuantStat",
    "SignMagnitudeFakeQuantize",
    "UniformFakeQuantize",
    "set_flags",
]
