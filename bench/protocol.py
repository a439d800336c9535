"""Protocol Q (../shared/data/README.md), defined once for every benchmark: SmolLM2-135M-Instruct (fp32);
calibration 128 windows × 512 tokens of wikitext2/wiki.valid.tokens, starts drawn with seed 0; perplexity
over the first 40 non-overlapping windows of 1024 tokens of wikitext2/wiki.test.raw. Models whose adapter
needs BOS (Gemma) get it as the first token of every window (`bos`)."""

from __future__ import annotations

from pathlib import Path

from prunekit import evaluate
from prunekit.data import calibration_windows, evaluation_windows, load_text, read_text_file, tokenize

CALIBRATION = "wikitext2/wiki.valid.tokens"
EVALUATION = "wikitext2/wiki.test.raw"
CALIBRATION_WINDOWS, CALIBRATION_SEQLEN, SEED = 128, 512, 0
EVALUATION_WINDOWS, EVALUATION_SEQLEN = 40, 1024
#: the selection set for defaults and hyper-parameters: neither calibration nor test data
VALIDATION, VALIDATION_WINDOWS = "c4/c4.validation_2k.jsonl", 20


def protocol_q(tokenizer, data_dir: Path, nsamples: int = CALIBRATION_WINDOWS, eval_windows: int = EVALUATION_WINDOWS,
               bos: int | None = None):
    """Protocol Q's calibration windows (nsamples × 512 of wiki.valid.tokens, seed 0) and its evaluation set
    (the first eval_windows × 1024 tokens of wiki.test.raw), as {"wikitext2": (windows, None)}. With `bos`
    every window starts with that id (followed by 511 resp. 1023 text tokens)."""
    calib_ids = tokenize(tokenizer, read_text_file(Path(data_dir) / CALIBRATION))
    eval_ids = tokenize(tokenizer, read_text_file(Path(data_dir) / EVALUATION))
    calib = calibration_windows(calib_ids, nsamples, CALIBRATION_SEQLEN, seed=SEED, bos_id=bos)
    windows = evaluation_windows(eval_ids, EVALUATION_SEQLEN, eval_windows, bos_id=bos)
    return calib, {"wikitext2": (windows, None)}


def wiki_ppl(model, sets, device: str, bos: int | None = None) -> float:
    """Protocol Q perplexity with the whole model on `device` (pruning keeps it on the CPU)."""
    return perplexities(model, sets, device, bos)["wikitext2"]


def c4_validation(tokenizer, data_dir: Path, windows: int = VALIDATION_WINDOWS, bos: int | None = None):
    """The selection set: the first `windows` × 1024 tokens of C4 validation, as {"c4-val": (windows, None)}."""
    text = load_text(str(Path(data_dir) / VALIDATION), "evaluation").text
    return {"c4-val": (evaluation_windows(tokenize(tokenizer, text), EVALUATION_SEQLEN, windows, bos_id=bos), None)}


def perplexities(model, sets, device: str, bos: int | None = None) -> dict[str, float]:
    """{set name: perplexity} with the whole model on `device` (pruning keeps it on the CPU)."""
    model.to(device)
    try:
        return evaluate(model, sets, device=device, bos=bos, progress=False)[0]
    finally:
        model.to("cpu")
