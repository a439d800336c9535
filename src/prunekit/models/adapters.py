"""Model adapters: where each architecture keeps its decoder layers, linear operators and norms.

An adapter is a table of module paths, nothing more. Adding an architecture means adding one
small subclass and listing its `model_types` (the `config.model_type` values it serves).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar

import torch.nn as nn

from ..errors import UsageError


class Adapter:
    """Paths into one architecture family. Operators in one group read the same input."""

    model_types: ClassVar[tuple[str, ...]] = ()
    layers_path: ClassVar[str]
    #: linear operators of a decoder layer, in execution order, grouped by shared input
    groups: ClassVar[tuple[tuple[str, ...], ...]]
    #: normalisation modules of a decoder layer
    norm_paths: ClassVar[tuple[str, ...]]
    #: whether evaluation and calibration windows should start with a BOS token (`--eval-bos auto`)
    needs_bos: ClassVar[bool] = False

    # The residual stream, for methods that rotate it (RotPruner, SliceGPT): see prunekit/rotation.
    #: embedding tables whose rows are added into the residual stream (model-relative paths)
    embedding_paths: ClassVar[tuple[str, ...]] = ()
    #: the norm after the last decoder layer, and the LM head that reads it
    final_norm_path: ClassVar[str] = ""
    head_path: ClassVar[str] = "lm_head"
    #: "rms" (RMSNorm) or "layer" (LayerNorm with mean subtraction and bias)
    norm_kind: ClassVar[str] = "rms"
    #: for each norm in `norm_paths`, the index in `groups` of the operators that read its output
    norm_readers: ClassVar[tuple[int, ...]] = ()
    #: operators of a decoder layer whose outputs are added to the residual stream
    writer_paths: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module):
        self.model = model

    @property
    def backbone(self) -> nn.Module:
        """The module that maps input_ids to hidden states (everything but the LM head)."""
        return self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model

    def layers(self) -> nn.ModuleList:
        return self.model.get_submodule(self.layers_path)

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers_path}.{index}"

    def linear_groups(self, layer: nn.Module) -> list[list[tuple[str, nn.Linear]]]:
        """[[(name, Linear), ...], ...]: the layer's operators in execution order, grouped by shared input."""
        return [[(path, layer.get_submodule(path)) for path in group] for group in self.groups]

    def linears(self, layer: nn.Module) -> list[tuple[str, nn.Linear]]:
        return [op for group in self.linear_groups(layer) for op in group]

    def pruned_groups(self, layer: nn.Module, index: int, config) -> list[list[tuple[str, nn.Linear]]]:
        """What a layer-wise pruner prunes in decoder layer `index`: its linear_groups less the operators that
        `config`'s --targets/--ignore leave dense (`prunes`), groups left empty dropped. The operators of a group
        read the same input, so the statistics of whichever operator comes first serve the rest."""
        prefix = self.layer_prefix(index)
        groups = [[(name, op) for name, op in group if prunes(config, f"{prefix}.{name}")]
                  for group in self.linear_groups(layer)]
        return [group for group in groups if group]

    def block_of(self, path: str) -> int:
        """The residual block (0: attention, 1: MLP) that operator `path` belongs to: a block ends with the group that
        holds one of its `writer_paths` (the operator whose output is added to the residual stream)."""
        block = 0
        for group in self.groups:
            if path in group:
                return block
            block += any(p in self.writer_paths for p in group)
        raise KeyError(f"{path} is not a linear operator of a {type(self).__name__} decoder layer")

    def operator_names(self) -> list[str]:
        """Every linear operator of every decoder layer by its model-relative name (model.layers.3.mlp.down_proj)."""
        return [f"{self.layer_prefix(i)}.{path}" for i in range(len(self.layers())) for group in self.groups
                for path in group]

    def dense_operators(self, config) -> list[str]:
        """The operators `config`'s --targets/--ignore leave dense; a UsageError, before any work, for a regex that
        matches no operator or a selection that leaves nothing to prune."""
        names = self.operator_names()
        for flag in ("targets", "ignore"):
            for regex in getattr(config, flag, ()):
                if not any(re.fullmatch(regex, name) for name in names):
                    raise UsageError(f"--{flag} {regex!r} matches none of the {len(names)} linear operators of the "
                                     f"decoder layers ({names[0]} ... {names[-1]}): a regex must match a whole name, "
                                     "e.g. '.*mlp.down_proj'")
        dense = [name for name in names if not prunes(config, name)]
        if len(dense) == len(names):
            raise UsageError("--targets and --ignore leave no operator to prune: ignore fewer operators")
        return dense

    def norms(self, layer: nn.Module) -> list[nn.Module]:
        return [layer.get_submodule(path) for path in self.norm_paths]


class LlamaAdapter(Adapter):
    """Llama, Mistral, Qwen2/3, SmolLM: pre-norm blocks, q/k/v + o, gated MLP."""

    model_types = ("llama", "mistral", "qwen2", "qwen3")
    layers_path = "model.layers"
    groups = (
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
    )
    norm_paths = ("input_layernorm", "post_attention_layernorm")
    embedding_paths = ("model.embed_tokens",)
    final_norm_path = "model.norm"
    norm_readers = (0, 2)
    writer_paths = ("self_attn.o_proj", "mlp.down_proj")


class OPTAdapter(Adapter):
    """OPT: pre-LayerNorm blocks, q/k/v + out_proj, fc1/fc2 MLP."""

    model_types = ("opt",)
    layers_path = "model.decoder.layers"
    groups = (
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.out_proj",),
        ("fc1",),
        ("fc2",),
    )
    norm_paths = ("self_attn_layer_norm", "final_layer_norm")
    embedding_paths = ("model.decoder.embed_tokens", "model.decoder.embed_positions")
    final_norm_path = "model.decoder.final_layer_norm"
    norm_kind = "layer"
    norm_readers = (0, 2)
    writer_paths = ("self_attn.out_proj", "fc2")


class Gemma3Adapter(LlamaAdapter):
    """Gemma 3 (text): Llama's operators, but four RMSNorms per layer (before and after attention and
    MLP, each scaling by 1 + w) plus RMSNorms on queries and keys. Trained with a BOS token at the start
    of every sequence: without it perplexity roughly doubles (41.6 vs 22.4 on WikiText-2 for 270M)."""

    model_types = ("gemma3_text",)
    norm_paths = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm", "self_attn.q_norm", "self_attn.k_norm")
    needs_bos = True


ADAPTERS: list[type[Adapter]] = [LlamaAdapter, Gemma3Adapter, OPTAdapter]


#: llm-compressor's spelling of a regex (`re:.*down_proj`); prunekit's --targets/--ignore are regexes anyway
REGEX_PREFIX = "re:"


def operator_regexes(value: str | Iterable[str] | None, flag: str) -> tuple[str, ...]:
    """--targets / --ignore as a tuple of regexes: a string or strings, each a comma-separated list (a comma inside
    (), [] or {} belongs to its regex, as in `.{1,3}`; `\\,` is a literal comma), `re:` prefixes dropped.
    A ValueError for one that does not compile."""
    items = [value] if isinstance(value, str) else list(value or ())
    regexes = []
    for item in items:
        for regex in _split_commas(str(item)):
            regex = regex.strip().removeprefix(REGEX_PREFIX)
            if not regex:
                continue
            try:
                re.compile(regex)
            except re.error as err:
                raise ValueError(f"{flag} {regex!r} is not a regular expression ({err}): fix it, e.g. "
                                 "'.*mlp.down_proj'") from None
            regexes.append(regex)
    return tuple(regexes)


def _split_commas(text: str) -> list[str]:
    """`text` split at the commas outside brackets (and not escaped)."""
    parts, depth, start, escaped = [], 0, 0, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def prunes(config, name: str) -> bool:
    """Whether a layer-wise pruner with `config` prunes the operator `name` (model-relative): its name fully
    matches one of the config's `targets` regexes (none: every operator) and none of its `ignore` regexes.
    The one rule of operator selection (whole-model methods have neither field: they prune every operator)."""
    targets, ignore = getattr(config, "targets", ()), getattr(config, "ignore", ())
    return ((not targets or any(re.fullmatch(regex, name) for regex in targets))
            and not any(re.fullmatch(regex, name) for regex in ignore))


def attention_inputs(model: nn.Module) -> set[str] | None:
    """Names of the operators whose outputs feed attention (each layer's first group: q/k/v), or None for an
    architecture without an adapter."""
    try:
        adapter = get_adapter(model)
    except UsageError:
        return None
    return {f"{adapter.layer_prefix(i)}.{path}" for i in range(len(adapter.layers())) for path in adapter.groups[0]}


def supported_model_types() -> list[str]:
    return sorted(t for cls in ADAPTERS for t in cls.model_types)


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for `model`, or a UsageError naming the supported architectures."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls(model)
    raise UsageError(
        f"unsupported architecture {model_type!r}: prunekit supports {', '.join(supported_model_types())}"
        " (add an adapter in prunekit/models/adapters.py)"
    )
