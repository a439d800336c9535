"""llm-compressor half of the prunekit parity benchmark.

``prune_with_llmcompressor`` prunes an already-loaded Hugging Face causal LM in
place with llm-compressor's ``oneshot`` (``WandaPruningModifier`` or
``SparseGPTModifier``) on exactly the given calibration windows, and returns the
wall time of the ``oneshot`` call together with the settings in effect.

Everything not listed here is left at llm-compressor's defaults: sequential
pipeline (one decoder layer per subgraph; each layer is calibrated, pruned, then
re-run so the next layer sees the pruned outputs), batch size 1, statistics in
fp32, SparseGPT ``block_size=128`` and ``dampening_frac=0.01``.

* Targets: every ``Linear`` except ``lm_head`` (``targets=["Linear"]``,
  ``ignore=["re:.*lm_head"]``), i.e. the Linear layers of the decoder layers.
  llm-compressor 0.14's default (no ignore) also prunes ``lm_head`` and, when
  embeddings are tied, the input embedding with it; its "lm_head" warning never
  fires, and ``ignore=["lm_head"]`` does not match (it names the module
  "lm_head." with a trailing dot). ``prune_lm_head=True`` reproduces that
  default.
* Calibration data: the N windows of ``calib_input_ids`` unchanged
  (``num_calibration_samples=N``, ``max_seq_length=L``, no shuffling). With
  shuffling off, llm-compressor's LengthAwareSampler visits the windows in
  ``argsort(lengths, descending=True)`` order. For N > 16 equal lengths that is
  a permutation of 0..N-1. The set of windows is unchanged; only the
  floating-point accumulation order differs.
* Nothing is saved (``output_dir=None``). oneshot re-reads the config from
  ``model.config.name_or_path`` and refuses models whose config has a
  non-compressed-tensors ``quantization_config``. A GGUF-loaded model has no
  config.json there, and its in-memory config says ``quant_method: gguf`` even
  though its weights were dequantized to float on load. For the duration of the
  call ``name_or_path`` therefore points at a temporary directory holding the
  config without ``quantization_config``; afterwards it is restored and the
  directory removed. oneshot's override of ``model.save_pretrained`` is also
  removed again.
* oneshot requires a processor whenever a dataset is given, and would try to
  load one from ``name_or_path``. The pre-tokenized data and the default
  "truncation" collator never use it, so a placeholder object is passed.
"""

import contextlib
import json
import os
import tempfile
import time

import torch
from datasets import Dataset


def prune_with_llmcompressor(
    model, calib_input_ids, method, sparsity, pattern, quiet=True, prune_lm_head=False
) -> dict:
    """Prune ``model`` in place and time the ``oneshot`` call.

    ``quiet`` silences llm-compressor's loguru output (which it sends to stdout)
    and tqdm bars during the call. Importing llmcompressor still logs one "No
    accelerator available" line unless LLM_COMPRESSOR_LOG_DISABLED=true is set
    before the first import.
    """
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from loguru import logger

    n, seq_len = calib_input_ids.shape
    mask_structure = {"unstructured": "0:0", "2:4": "2:4"}[pattern]
    modifier_cls = {"wanda": WandaPruningModifier, "sparsegpt": SparseGPTModifier}[method]
    targets, ignore = ["Linear"], ([] if prune_lm_head else ["re:.*lm_head"])
    modifier = modifier_cls(
        sparsity=sparsity, mask_structure=mask_structure, targets=targets, ignore=ignore
    )

    dataset = Dataset.from_dict(
        {
            "input_ids": calib_input_ids.to(torch.long).tolist(),
            "attention_mask": [[1] * seq_len for _ in range(n)],
        }
    )
    data_kwargs = dict(
        num_calibration_samples=n,
        max_seq_length=seq_len,
        shuffle_calibration_samples=False,
        batch_size=1,
    )

    old_name = model.config._name_or_path
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f)
        model.config._name_or_path = tmp
        stack.callback(setattr, model.config, "_name_or_path", old_name)
        stack.callback(vars(model).pop, "save_pretrained", None)
        if quiet:
            logger.disable("llmcompressor")
            stack.callback(logger.enable, "llmcompressor")
            devnull = stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stderr(devnull))

        start = time.perf_counter()
        oneshot(
            model=model,
            processor=object(),  # placeholder, see module docstring
            dataset=dataset,
            recipe=modifier,
            output_dir=None,
            clear_sparse_session=True,  # drop the session's references to the model
            **data_kwargs,
        )
        seconds = time.perf_counter() - start

    settings = dict(
        modifier=modifier_cls.__name__,
        sparsity=sparsity,
        mask_structure=mask_structure,
        targets=targets,
        ignore=ignore,
        **data_kwargs,
        pipeline="sequential",
        propagate_error=True,
    )
    if method == "sparsegpt":
        settings.update(block_size=modifier.block_size, dampening_frac=modifier.dampening_frac)
    return {"seconds": seconds, "settings": settings}
