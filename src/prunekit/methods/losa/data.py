"""Fine-tuning text: Alpaca-style instruction records or plain text, cut into fixed-length windows.

Accepted: a data name of prunekit.data (`pydoc`, `wikitext2`, ...: its calibration split), a plain
text file, or JSON / JSONL records that are either Alpaca examples (`instruction`, optional `input`,
`output`) or have a `text` field. Documents are tokenized one by one, joined with EOS, and packed
into windows; the loss is taken on every token, as the authors' SFT run does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ... import data
from ...errors import UsageError

# The Stanford Alpaca prompt (Taori et al., 2023), with and without an input
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n{output}"
)


def check_spec(spec: str) -> None:
    """Fail early on a training data spec that is neither a known name nor an existing file."""
    if spec not in data.NAMES and not Path(spec).expanduser().is_file():
        raise UsageError(f"training data {spec!r} not found: pass an Alpaca JSON/JSONL, a text file, "
                         f"or one of {', '.join(data.NAMES)}")


def load_documents(spec: str) -> tuple[list[str], str]:
    """(documents, a line saying where they came from)."""
    check_spec(spec)
    if spec in data.NAMES:
        text = data.load_text(spec, "calibration")
        return [text.text], text.source
    path = Path(spec).expanduser()
    if path.suffix not in (".json", ".jsonl"):
        return [path.read_text(encoding="utf-8")], f"plain text file {path}"
    raw = path.read_text(encoding="utf-8")
    try:
        records = ([json.loads(line) for line in raw.splitlines() if line.strip()] if path.suffix == ".jsonl"
                   else json.loads(raw))
        records = records if isinstance(records, list) else [records]
        if records and all(isinstance(r, dict) and "instruction" in r and "output" in r for r in records):
            return [format_alpaca(r) for r in records], f"Alpaca records in {path} ({len(records)} examples)"
        return [r["text"] for r in records], f"text records in {path} ({len(records)} documents)"
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UsageError(f"{path}: expected Alpaca records (instruction, input, output) or records with a "
                         f"'text' field ({type(err).__name__}: {err})") from err


def format_alpaca(record: dict) -> str:
    template = ALPACA_WITH_INPUT if str(record.get("input") or "").strip() else ALPACA_NO_INPUT
    return template.format(instruction=record["instruction"], input=record.get("input", ""), output=record["output"])


def training_windows(tokenizer, documents: list[str], seqlen: int, count: int, seed: int = 0,
                     bos_id: int | None = None) -> tuple[torch.Tensor, int]:
    """(windows [count, seqlen], how many distinct windows the text holds).

    The packed token stream is cut into non-overlapping windows, shuffled once with `seed`; if the
    budget asks for more windows than there are, the shuffled order repeats (a second epoch).
    With a BOS id, each window is BOS + seqlen−1 text tokens.
    """
    eos = tokenizer.eos_token_id
    pieces = []
    for doc in documents:
        ids = tokenizer(doc, add_special_tokens=False).input_ids
        pieces.append(torch.tensor(ids + ([eos] if eos is not None else []), dtype=torch.long))
    stream = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)
    body = seqlen - (bos_id is not None)
    available = stream.numel() // body
    if available == 0:
        raise UsageError(f"the training text has {stream.numel()} tokens, fewer than one window of "
                         f"--train-seqlen {seqlen}")
    windows = stream[:available * body].view(available, body)
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))
    order = order.repeat(-(-count // available))[:count]
    windows = windows[order]
    if bos_id is not None:
        windows = torch.cat([torch.full((count, 1), bos_id, dtype=torch.long), windows], dim=1)
    return windows, available
