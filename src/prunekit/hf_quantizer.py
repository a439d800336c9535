"""transformers' `AutoModelForCausalLM.from_pretrained(compact_dir)`, after `import prunekit`.

save_compact writes into config.json a `quantization_config` with "quant_method": "prunekit" (export.py), so
transformers asks the quantizer registered here under "prunekit" (its `register_quantization_config` /
`register_quantizer` hooks) how to load the directory. config.json names no weights file (so that transformers
without prunekit finds none and raises): the quantizer points transformers at export.COMPACT_FILE
(`update_tp_plan`, below). Then:
1. before the weights, on the meta device, every packed or FP8 linear is replaced by the module that
   `load_compact(dir, sparse_modules=True)` gives it (export.layer_class), with empty buffers of the stored shapes
   and dtypes;
2. weight conversions rename the stored tensors onto those buffers (`<m>.weight.values` → `<m>.values`,
   `.weight.meta` → `.meta`, `.weight.scale` → `.weight_scale`) and unpack bitmask weights into `<m>.weight`;
   renamed tensors keep the dtypes they are stored in, so every tensor arrives bit for bit;
3. after loading, the model gets `kernel_paths()` as from load_compact.
The model equals load_compact(dir, sparse_modules=True): same modules, same tensors, the same logits on CPU.
Only prunekit writes such files: the quantizer loads them (`pre_quantized`) and quantizes nothing itself.

The same quantizer loads a model with RotPruner's residual rotations (format "prunekit-residual-rotations",
prunekit/rotation/residual.py): its weights are an ordinary state dict plus the A_g (`residual_rotations.*`),
stored as the file that `quantization_config.weights` names, which the quantizer points transformers at
(`update_tp_plan`: the one hook that sees the model's config before the weights are looked up); before the
weights it attaches the empty holder of the A_g, after them it installs the products. Such a model saves again
with save_pretrained.

This module imports transformers; hf_hook.py registers it when transformers' quantizer registry is first
imported, so that `import prunekit` does not import transformers.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

METHOD = "prunekit"
RESIDUAL = "prunekit-residual-rotations"  # rotation.residual.FORMAT (not imported here: it imports torch)


class PrunekitConfig(QuantizationConfigMixin):
    """config.json's `quantization_config` of a compact directory. It describes the file (format, version, how many
    weights each scheme stores, what the FP8 layers do with their inputs); loading reads the file's own header."""

    def __init__(self, format: str = "prunekit-compact", version: str = "1", schemes: dict | None = None,
                 activations: str | list | None = None, **extra):
        self.quant_method = METHOD
        self.format, self.version, self.schemes, self.activations = format, version, schemes or {}, activations
        self.extra = {k: v for k, v in extra.items() if k != "quant_method"}  # keys a newer prunekit may add

    def to_dict(self) -> dict:
        if self.format == RESIDUAL:
            return {"quant_method": METHOD, "format": self.format, "version": self.version, **self.extra}
        return {"quant_method": METHOD, "format": self.format, "version": self.version, "schemes": self.schemes,
                "activations": self.activations, **self.extra}


class PrunekitQuantizer(HfQuantizer):
    """Loads prunekit's compact format and models with residual rotations (see the module docstring)."""

    requires_calibration = True  # a compact file is quantized already: transformers must not quantize on load

    def __init__(self, quantization_config, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.layout: dict = {}
        self.residual = quantization_config.format == RESIDUAL

    def update_tp_plan(self, config):
        """Name the weights file (the one hook that sees the config before transformers looks the weights up)."""
        from .export import COMPACT_FILE

        config.transformers_weights = self.quantization_config.extra["weights"] if self.residual else COMPACT_FILE
        return super().update_tp_plan(config)

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if self.residual:
            from .rotation.residual import attach

            attach(model, self.quantization_config.extra["residual_rotations"])
            return model
        from .export import compact_layer, layer_class, read_compact_header

        self.layout, _ = read_compact_header(Path(checkpoint_files[0]).parent)
        for name, info in self.layout.items():
            if not name.endswith(".weight") or layer_class(info, sparse_modules=True) is None:
                continue
            module_name = name.removesuffix(".weight")
            linear = model.get_submodule(module_name)
            bias = None if linear.bias is None else _meta_tensor(linear.bias.shape, linear.bias.dtype)
            layer = compact_layer(info, functools.partial(_empty_part, info), bias, sparse_modules=True)
            layer.name = module_name
            parent, _, child = module_name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
        return model

    def get_weight_conversions(self):
        if self.residual:
            return []
        from transformers.core_model_loading import WeightConverter, WeightRenaming

        from .export import layer_class, stored_packing
        from .sparse.linear import SparseLinear24
        from .sparse.linear_fp8 import SparseLinear24FP8

        def modules(keep) -> str:
            """A regex group of the modules whose weight's layout entry passes `keep`."""
            names = [re.escape(name.removesuffix(".weight")) for name, info in self.layout.items()
                     if name.endswith(".weight") and keep(info)]
            return f"({'|'.join(names)})" if names else ""

        packed = modules(lambda info: layer_class(info, True) in (SparseLinear24, SparseLinear24FP8))
        fp8 = modules(lambda info: "activations" in info)
        bitmask = modules(lambda info: stored_packing(info["scheme"]) == "bitmask")
        conversions = []
        if packed:
            conversions += [WeightRenaming(rf"^{packed}\.weight\.values$", r"\1.values"),
                            WeightRenaming(rf"^{packed}\.weight\.meta$", r"\1.meta")]
        if fp8:
            conversions.append(WeightRenaming(rf"^{fp8}\.weight\.scale$", r"\1.weight_scale"))
        if bitmask:
            conversions.append(WeightConverter([rf"^{bitmask}\.weight\.values$", rf"^{bitmask}\.weight\.mask$"],
                                               r"\1.weight", operations=[_unpack_bitmask_op()]))
        return conversions

    def _process_model_after_weight_loading(self, model, **kwargs):
        if self.residual:
            from .rotation.residual import finish_loading

            finish_loading(model)
            return model
        from .sparse.linear import kernel_paths

        model.kernel_paths = functools.partial(kernel_paths, model)
        return model

    def is_serializable(self):
        return self.residual  # compact: save with prunekit.export.save_compact, which writes this format

    @property
    def is_trainable(self) -> bool:
        return self.residual


def _meta_tensor(shape, dtype):
    import torch

    return torch.empty(shape, dtype=dtype, device="meta")


def _empty_part(info: dict, suffix: str):
    """An empty (meta) tensor shaped like the weight's stored part `suffix` (export.compact_layer's `part`)."""
    import torch

    out, cols = info["shape"]
    shapes = {".values": ([out, cols // 2], info["dtype"]), ".meta": ([out, cols // 8], "uint8"),
              ".scale": ([out], "float32"), "": ([out, cols], info["dtype"])}
    shape, dtype = shapes[suffix]
    return _meta_tensor(shape, getattr(torch, dtype))


@functools.cache
def _unpack_bitmask_op():
    """A transformers ConversionOps that unpacks a bitmask weight (`.values`, `.mask`) into the dense weight
    (defined on first use: core_model_loading is not imported while the quantizer is registered)."""
    from transformers.core_model_loading import ConversionOps

    from .sparse.packing import unpack_bitmask

    class UnpackBitmask(ConversionOps):
        def convert(self, input_dict, source_patterns, target_patterns, full_layer_name=None, model=None, **kwargs):
            values, mask = (input_dict[pattern][0] for pattern in source_patterns)
            cols = model.get_submodule(full_layer_name.removesuffix(".weight")).in_features
            return {full_layer_name: unpack_bitmask(values, mask, cols)}

    return UnpackBitmask()


def register() -> None:
    """Add "prunekit" to transformers' quantization configs and quantizers (once)."""
    from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING,
                                              register_quantization_config, register_quantizer)

    if METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(METHOD)(PrunekitConfig)
    if METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(METHOD)(PrunekitQuantizer)
