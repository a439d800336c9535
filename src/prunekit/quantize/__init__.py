"""Quantization after pruning: FP8 (E4M3) weights with per-output-channel scales, activations FP8 per token.

fp8.py    the numbers: scales, rounding, the exact reference product;
linear.py LinearFP8, the layer that holds an FP8 weight (2:4 ones: prunekit.sparse.linear_fp8);
model.py  `quantize(model, FP8Config(...), calib)`, the verb. Quantizing inside SparseGPT's column pass (and
          GPTQ, the same pass with the mask kept) is in prunekit/pruners/sparsegpt.py.
"""

from .fp8 import dequantize_fp8, fp8_linear, fp8_scale, quantize_fp8, quantize_per_token
from .linear import LinearFP8
from .model import FP8Config, quantize

__all__ = ["FP8Config", "LinearFP8", "dequantize_fp8", "fp8_linear", "fp8_scale", "quantize", "quantize_fp8",
           "quantize_per_token"]
