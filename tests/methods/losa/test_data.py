import json

import pytest
import torch

from conftest import byte_tokenizer
from prunekit.errors import UsageError
from prunekit.methods.losa.data import load_documents, training_windows

ALPACA = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
]


def test_alpaca_json_is_formatted_with_and_without_input(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ALPACA))
    docs, source = load_documents(str(path))
    assert "Alpaca" in source and len(docs) == 2
    assert "### Instruction:\nName a colour.\n\n### Response:\nBlue." in docs[0] and "### Input:" not in docs[0]
    assert "### Input:\n2 and 3\n\n### Response:\n5" in docs[1]


def test_alpaca_jsonl_and_text_records(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in ALPACA))
    assert len(load_documents(str(tmp_path / "a.jsonl"))[0]) == 2
    (tmp_path / "t.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    assert load_documents(str(tmp_path / "t.jsonl"))[0] == ["one", "two"]


def test_bad_records_and_missing_files_are_usage_errors(tmp_path):
    (tmp_path / "bad.json").write_text('[{"question": "?"}]')
    with pytest.raises(UsageError):
        load_documents(str(tmp_path / "bad.json"))
    with pytest.raises(UsageError):
        load_documents(str(tmp_path / "missing.json"))


def test_windows_are_packed_shuffled_and_repeat_past_the_text():
    tok = byte_tokenizer()
    docs = ["the quick brown fox jumps over", "pack my box with five dozen jugs"]  # 64 tokens with two EOS
    windows, available = training_windows(tok, docs, seqlen=10, count=9, seed=0)
    assert available == 6 and windows.shape == (9, 10)
    assert len({tuple(w.tolist()) for w in windows}) == 6  # every window once, then a second epoch
    again, _ = training_windows(tok, docs, seqlen=10, count=9, seed=0)
    assert torch.equal(windows, again)
    with pytest.raises(UsageError):
        training_windows(tok, ["ab"], seqlen=10, count=1)
