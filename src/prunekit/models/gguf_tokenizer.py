"""Rebuild a SentencePiece tokenizer from the metadata of a GGUF file.

transformers 5.17 converts the tokenizer of Gemma 3 GGUF files wrongly: `" Robert Boulter"` becomes
`' R','ob','ert',' B','ou','lt','er'`, WikiText-2 test grows from 292k to 572k tokens and perplexity
reads 90 to 1,400 instead of about 20. The GGUF still holds the whole vocabulary
(`tokenizer.ggml.model` = `llama`, i.e. SentencePiece, with `tokens`, `scores` and `token_type`),
so we write the SentencePiece model it came from and let transformers load that instead.
"""

from __future__ import annotations

import json
from pathlib import Path

# GGUF token types (llama.cpp's LLAMA_TOKEN_TYPE_*) are SentencePiece's ModelProto.SentencePiece.Type values:
# 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
SPECIAL_TOKENS = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}  # Gemma's ids, checked against the GGUF's own
UNKNOWN = 2


def gguf_architecture(gguf_path: str | Path) -> str:
    """`general.architecture` of a GGUF file, e.g. 'llama' or 'gemma3'."""
    from gguf import GGUFReader

    return GGUFReader(str(gguf_path)).fields["general.architecture"].contents()


def read_vocabulary(gguf_path: str | Path) -> dict:
    """{'tokens', 'scores', 'types', 'model', and the special token ids} from a GGUF file's metadata."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields

    def array(name):
        field = fields[name]
        return [field.parts[i] for i in field.data]

    def scalar(name):
        return fields[name].contents() if name in fields else None

    return {
        "model": scalar("tokenizer.ggml.model"),
        "tokens": [bytes(part).decode("utf-8") for part in array("tokenizer.ggml.tokens")],
        "scores": [float(part[0]) for part in array("tokenizer.ggml.scores")],
        "types": [int(part[0]) for part in array("tokenizer.ggml.token_type")],
        "add_bos": scalar("tokenizer.ggml.add_bos_token"),
        **{name: scalar(f"tokenizer.ggml.{key}_token_id")
           for name, key in (("pad", "padding"), ("eos", "eos"), ("bos", "bos"), ("unk", "unknown"))},
    }


def sentencepiece_model(vocab: dict) -> bytes:
    """A serialized SentencePiece BPE ModelProto for Gemma's vocabulary: byte fallback, split digits,
    identity normalizer, no dummy prefix, no whitespace clean-up (the settings Gemma was trained with)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    if vocab["model"] != "llama":
        raise ValueError(f"GGUF tokenizer model is {vocab['model']!r}, not a SentencePiece ('llama') vocabulary")
    for name, expected in SPECIAL_TOKENS.items():
        if vocab[name] != expected:
            raise ValueError(f"GGUF {name} token id is {vocab[name]}, expected {expected} for a Gemma vocabulary")
    proto = pb.ModelProto()
    trainer = proto.trainer_spec
    trainer.model_type = pb.TrainerSpec.BPE
    trainer.vocab_size = len(vocab["tokens"])
    trainer.byte_fallback = True
    trainer.split_digits = True
    for name, index in SPECIAL_TOKENS.items():
        setattr(trainer, f"{name}_id", index)
        setattr(trainer, f"{name}_piece", vocab["tokens"][index])
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    for index, (token, score, kind) in enumerate(zip(vocab["tokens"], vocab["scores"], vocab["types"])):
        piece = proto.pieces.add()
        # Gemma's GGUF types <unk> as control (3); SentencePiece knows its unk piece only by type UNKNOWN
        piece.piece, piece.score, piece.type = token, score, UNKNOWN if index == SPECIAL_TOKENS["unk"] else kind
    return proto.SerializeToString()


def write_gemma_tokenizer(gguf_path: str | Path, directory: str | Path) -> Path:
    """Write `tokenizer.model` and a `tokenizer_config.json` naming GemmaTokenizer into `directory`,
    ready for `AutoTokenizer.from_pretrained(directory)`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = read_vocabulary(gguf_path)
    (directory / "tokenizer.model").write_bytes(sentencepiece_model(vocab))
    tokens = vocab["tokens"]
    config = {
        "tokenizer_class": "GemmaTokenizer",
        **{f"{name}_token": tokens[index] for name, index in SPECIAL_TOKENS.items()},
        "add_bos_token": bool(vocab["add_bos"]) if vocab["add_bos"] is not None else True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory
