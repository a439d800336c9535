import pytest

from prunekit.models.adapters import Gemma3Adapter, LlamaAdapter, OPTAdapter


@pytest.mark.parametrize("adapter", [LlamaAdapter, Gemma3Adapter, OPTAdapter])
def test_block_of_splits_a_layer_after_each_residual_writer(adapter):
    """Attention's operators are block 0 up to and including the one that writes the residual stream (o_proj,
    out_proj); the MLP's are block 1."""
    a = adapter(None)
    blocks = [a.block_of(path) for group in a.groups for path in group]
    first_mlp = next(i for i, path in enumerate(p for g in a.groups for p in g) if not path.startswith("self_attn."))
    assert blocks == [0] * first_mlp + [1] * (len(blocks) - first_mlp)
    with pytest.raises(KeyError, match="not a linear operator"):
        a.block_of("lm_head")
