"""Calibration and evaluation text, by name or by local path, and the token windows cut from it.

Names: `wikitext2`, `c4`, `ptb` (through `datasets.load_dataset`, for users with hub access) and
`pydoc`, the offline default: the documentation topics that ship with Python itself
(`pydoc_data.topics`), first half for calibration, second half for evaluation.
Paths: a plain text file, or JSON / JSONL whose records have a `text` field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UsageError

HUB_SETS = {
    # name: (load_dataset args, calibration split, evaluation split, text field, joiner)
    "wikitext2": (("wikitext", "wikitext-2-raw-v1"), "train", "test", "text", "\n\n"),
    "ptb": (("ptb_text_only", "penn_treebank"), "train", "validation", "sentence", " "),
    "c4": (("allenai/c4",), "train", "validation", "text", " "),
}
C4_FILES = {
    "train": "en/c4-train.00000-of-01024.json.gz",
    "validation": "en/c4-validation.00000-of-00008.json.gz",
}
NAMES = ("pydoc", *HUB_SETS)


@dataclass(frozen=True)
class Text:
    """A named body of text and a line saying where it came from."""

    name: str
    text: str
    source: str


def load_text(spec: str, role: str) -> Text:
    """Text for `role` ('calibration' or 'evaluation') from a name in NAMES or a local file path."""
    if spec == "pydoc":
        return _pydoc_text(role)
    if spec in HUB_SETS:
        return _hub_text(spec, role)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UsageError(f"{role} data {spec!r} not found: pass an existing text/JSON/JSONL file or one of "
                         + ", ".join(NAMES))
    return Text(path.stem, read_text_file(path), f"file {path}")


def read_text_file(path: Path) -> str:
    """A plain text file as is; JSON/JSONL records' `text` fields joined by a space (as SparseGPT joins C4).
    Text must be UTF-8: anything else is a UsageError naming the file and the first bad byte."""
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path} is not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r}): "
                         "convert it, e.g. iconv -f latin1 -t utf-8") from err
    if path.suffix not in (".json", ".jsonl"):
        return raw
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in raw.splitlines() if line.strip()]
        else:
            records = json.loads(raw)
            records = records if isinstance(records, list) else [records]
        return " ".join(record["text"] for record in records)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UsageError(f"{path}: expected JSON records with a 'text' field ({type(err).__name__}: {err})") from err


def _pydoc_text(role: str) -> Text:
    import pydoc_data.topics as topics

    text = "\n\n".join(topics.topics[key] for key in sorted(topics.topics))
    cut = text.index("\n\n", len(text) // 2)
    half = text[:cut] if role == "calibration" else text[cut + 2:]
    which = "first" if role == "calibration" else "second"
    return Text("pydoc", half, f"Python's bundled pydoc_data topics, {which} half (offline default)")


def _hub_text(name: str, role: str) -> Text:
    args, calib_split, eval_split, field, joiner = HUB_SETS[name]
    split = calib_split if role == "calibration" else eval_split
    kwargs = {"data_files": {split: C4_FILES[split]}} if name == "c4" else {}
    try:
        from datasets import load_dataset

        records = load_dataset(*args, split=split, **kwargs)
    except Exception as err:  # the hub raises many types (ConnectionError, FileNotFoundError, ...)
        raise UsageError(f"could not load {name!r} from the Hugging Face hub ({type(err).__name__}); "
                         "pass a local text or JSONL file instead") from err
    texts = records[field]
    if name == "c4" and role == "evaluation":
        texts = texts[:1100]  # SparseGPT/Wanda evaluate on the first 1100 validation documents
    return Text(name, joiner.join(texts), f"{'/'.join(args)} {split} split from the Hugging Face hub")


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """The whole text as one 1-D tensor of token ids, without special tokens."""
    return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)


def calibration_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int,
                        bos_id: int | None = None) -> torch.Tensor:
    """[nsamples, seqlen] windows at random starts (one torch.randint draw seeded with `seed`).

    With a BOS id, each window is BOS followed by the first seqlen-1 tokens at the same start.
    """
    if nsamples <= 0 or seqlen <= 0:
        raise UsageError(f"calibration needs positive nsamples and seqlen, got {nsamples} and {seqlen}")
    if ids.numel() < seqlen + 2:
        raise UsageError(f"calibration text has {ids.numel()} tokens, fewer than --seqlen {seqlen} + 2: "
                         "use more text or a shorter --seqlen")
    starts = torch.randint(0, ids.numel() - seqlen - 1, (nsamples,), generator=torch.Generator().manual_seed(seed))
    body = seqlen - (bos_id is not None)
    windows = torch.stack([ids[s:s + body] for s in starts.tolist()])
    return _with_bos(windows, bos_id)


def evaluation_windows(ids: torch.Tensor, seqlen: int, max_segments: int | None = None,
                       bos_id: int | None = None) -> torch.Tensor:
    """The first non-overlapping windows of `seqlen` tokens (SparseGPT/Wanda protocol), at most `max_segments`.

    With a BOS id, window i is BOS followed by the seqlen-1 tokens starting at i·seqlen.
    """
    count = ids.numel() // seqlen
    if max_segments is not None:
        count = min(count, max_segments)
    if count == 0:
        raise UsageError(f"evaluation text has {ids.numel()} tokens, fewer than one window of --eval-seqlen {seqlen}")
    body = seqlen - (bos_id is not None)
    windows = torch.stack([ids[i * seqlen:i * seqlen + body] for i in range(count)])
    return _with_bos(windows, bos_id)


def _with_bos(windows: torch.Tensor, bos_id: int | None) -> torch.Tensor:
    if bos_id is None:
        return windows
    return torch.cat([torch.full((windows.shape[0], 1), bos_id, dtype=windows.dtype), windows], dim=1)
