import json

import pytest
import torch

from prunekit import data
from prunekit.errors import UsageError


def test_calibration_windows_follow_the_protocol():
    ids = torch.arange(1000)
    windows = data.calibration_windows(ids, nsamples=5, seqlen=16, seed=0)
    starts = torch.randint(0, 1000 - 16 - 1, (5,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(windows, torch.stack([ids[s:s + 16] for s in starts]))
    assert torch.equal(windows, data.calibration_windows(ids, 5, 16, 0))  # reproducible
    assert not torch.equal(windows, data.calibration_windows(ids, 5, 16, 1))


def test_bos_windows_keep_positions():
    ids = torch.arange(10, 1010)
    plain = data.calibration_windows(ids, 3, 8, 0)
    with_bos = data.calibration_windows(ids, 3, 8, 0, bos_id=7)
    assert (with_bos[:, 0] == 7).all() and torch.equal(with_bos[:, 1:], plain[:, :7])
    ev = data.evaluation_windows(ids, 8, 2, bos_id=7)
    assert torch.equal(ev, torch.tensor([[7, *range(10, 17)], [7, *range(18, 25)]]))


def test_evaluation_windows_are_the_first_non_overlapping_ones():
    ids = torch.arange(100)
    assert torch.equal(data.evaluation_windows(ids, 30), ids[:90].view(3, 30))
    assert data.evaluation_windows(ids, 30, max_segments=2).shape == (2, 30)
    with pytest.raises(UsageError, match="fewer than one window"):
        data.evaluation_windows(ids, 200)


def test_json_and_jsonl_text_fields(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t, "url": "x"}) for t in ["one", "two"]))
    (tmp_path / "b.json").write_text(json.dumps([{"text": "three"}, {"text": "four"}]))
    assert data.load_text(str(tmp_path / "a.jsonl"), "evaluation").text == "one two"
    assert data.load_text(str(tmp_path / "b.json"), "evaluation").text == "three four"
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "no text field"}))
    with pytest.raises(UsageError, match="'text' field"):
        data.load_text(str(tmp_path / "bad.jsonl"), "evaluation")


def test_pydoc_halves_are_disjoint_and_offline():
    calib, evaluation = data.load_text("pydoc", "calibration"), data.load_text("pydoc", "evaluation")
    assert len(calib.text) > 100_000 and len(evaluation.text) > 100_000
    assert calib.text[-2000:] not in evaluation.text
    assert "offline" in calib.source


def test_missing_file_is_a_usage_error():
    with pytest.raises(UsageError, match="not found"):
        data.load_text("/no/such/file.txt", "calibration")


def test_too_short_calibration_text():
    with pytest.raises(UsageError, match="fewer than --seqlen"):
        data.calibration_windows(torch.arange(10), 4, 16, 0)
    for nsamples, seqlen in ((4, -5), (0, 16)):
        with pytest.raises(UsageError, match="positive nsamples and seqlen"):
            data.calibration_windows(torch.arange(100), nsamples, seqlen, 0)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_non_utf8_text_is_one_usage_error(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(UsageError, match=r"is not UTF-8 text \(byte 3: b'\\xe9'\)"):
        data.load_text(str(path), "calibration")


class CharTokenizer:
    """One id per character (its code point): token windows can be computed by hand."""

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return type("Encoding", (), {"input_ids": [ord(c) for c in text]})


def test_c4_windows_match_a_hand_computation(tmp_path):
    """SparseGPT/Wanda C4 protocol: validation documents joined by a space, tokenized once, then the first
    non-overlapping windows, capped by --max-eval-segments."""
    docs = ["Alpha beta gamma.", "Delta\nepsilon", "zeta eta theta iota kappa", "lambda"]
    path = tmp_path / "c4.validation.jsonl"
    path.write_text("\n".join(json.dumps({"text": d, "timestamp": "t", "url": "u"}) for d in docs))
    ids = data.tokenize(CharTokenizer(), data.load_text(str(path), "evaluation").text)
    windows = data.evaluation_windows(ids, seqlen=16, max_segments=2)
    joined = "Alpha beta gamma. Delta\nepsilon zeta eta theta iota kappa lambda"
    assert windows.tolist() == [[ord(c) for c in joined[0:16]], [ord(c) for c in joined[16:32]]]
    assert data.evaluation_windows(ids, seqlen=16).shape == (len(joined) // 16, 16)


def test_c4_by_name_reads_the_first_1100_validation_documents(monkeypatch):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return {"text": [f"doc{i}" for i in range(1500)]}

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    text = data.load_text("c4", "evaluation")
    assert calls == [(("allenai/c4",), {"split": "validation",
                                         "data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"}})]
    assert text.text == " ".join(f"doc{i}" for i in range(1100))
