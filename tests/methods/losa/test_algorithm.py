import pytest

from conftest import byte_tokenizer, random_windows, tiny_llama
from prunekit import LosaConfig, get_adapter, prune
from prunekit.methods.losa import LosaLinear
from prunekit.patterns import max_nonzeros_per_group


def decoder_ops(model):
    adapter = get_adapter(model)
    return [op for layer in adapter.layers() for _, op in adapter.linears(layer)]


def run(text_file, model=None, **options):
    model = model or tiny_llama(layers=4)
    defaults = dict(sparsity=0.6, stages=2, rank=4, train_data=str(text_file), train_tokens=4 * 64,
                    train_seqlen=64, train_batch_size=2, rmi_tokens=64, feature_windows=2, lr=1e-3)
    config = LosaConfig(**{**defaults, **options})
    result = prune(model, config, random_windows(n=4, seqlen=32), tokenizer=byte_tokenizer(), progress=False)
    return model, result


def test_losa_merges_into_exactly_its_last_masks(text_file):
    model, result = run(text_file)
    stages = result.details["stages"]
    assert [round(s["sparsity"], 4) for s in stages] == [round(0.6 * (1 - 0.5 ** 3), 4), 0.6]
    assert not any(isinstance(op, LosaLinear) for op in decoder_ops(model))  # merged: plain Linear again
    check = result.details["mask_check"]
    assert check["nonzero_outside_mask"] == 0 and check["merged_zeros"] == check["mask_zeros"]
    # the last stage's RMI rates: within the bounds and averaging to the target
    rates = stages[-1]["layer_sparsity"]
    size = sum(op.weight.numel() for op in decoder_ops(model)) // 4
    assert all(0.58 - 1e-9 <= r <= 0.62 + 1e-9 for r in rates)  # the authors' ±0.02 at 60%
    assert abs(sum(rates) * size - 0.6 * 4 * size) <= 4  # within one weight per layer
    # each operator's zeros: floor(in · rate) per row (Wanda's groups), nothing else
    adapter = get_adapter(model)
    for index, layer in enumerate(adapter.layers()):
        for _, op in adapter.linears(layer):
            rows, cols = op.weight.shape
            assert int((op.weight == 0).sum()) == rows * int(cols * rates[index])
    assert abs(result.achieved_sparsity - 0.6) < 0.02
    # ranks: Eq. 9 averages (6.5 → 3.5, 4.5 with r̄ = 4, T = 2 is r̄ ∓ 0.5) allocated by error
    assert sum(stages[0]["ranks"]) == round(3.5 * 4) and sum(stages[1]["ranks"]) == round(4.5 * 4)
    assert all(s["train"]["steps"] == 1 and s["train"]["tokens"] == 2 * 64 for s in stages)


def test_fine_tuning_lowers_the_training_loss(text_file):
    _, result = run(text_file, stages=1, train_tokens=24 * 64, lr=5e-3)
    train = result.details["stages"][0]["train"]
    assert train["loss_last"] < train["loss_first"]


def test_ablations_and_sparse_lora_baseline(text_file):
    _, result = run(text_file, rmi=False, rank_allocation=False)
    for stage in result.details["stages"]:
        assert stage["ranks"] == [4] * 4 and len(set(stage["layer_sparsity"])) == 1


def test_local_rank_error_follows_the_operators_errors(text_file):
    _, result = run(text_file, rank_error="local")
    from prunekit.methods.losa.ranks import allocate_ranks
    from prunekit.methods.losa.schedule import stage_mean_rank

    stage = result.details["stages"][-1]
    ops = [op for op in result.operators]
    per_layer = [sum(op.recon_error for op in ops[7 * i: 7 * i + 7]) / 7 for i in range(4)]
    assert stage["recon_error"] == pytest.approx(per_layer, rel=1e-9)
    assert stage["ranks"] == allocate_ranks(per_layer, stage_mean_rank(2, 2, 4), 1, 16)


def test_dense_lora_baseline_stays_unmerged(text_file, tmp_path):
    model, result = run(text_file, stages=1, adapter="dense", rmi=False, rank_allocation=False)
    ops = decoder_ops(model)
    assert all(isinstance(op, LosaLinear) and op.mask is None for op in ops)
    assert abs(result.achieved_sparsity - 0.6) < 0.02  # the base stays sparse
    extra = result.before_save(model, tmp_path)
    assert (tmp_path / extra["lora_adapters"]).is_file()
    assert not any(isinstance(op, LosaLinear) for op in decoder_ops(model))


def test_two_four_pattern(text_file):
    model, result = run(text_file, pattern="2:4", sparsity=None, base_pruner="sparsegpt")
    assert all(max_nonzeros_per_group(op.weight.data, 4) <= 2 for op in decoder_ops(model))
    assert all(s["sparsity"] == 0.5 for s in result.details["stages"])  # N:M cannot be reached gradually


@pytest.mark.parametrize("options,message", [
    (dict(adapter="dense"), "--stages 1"),
    (dict(rank=20), "max-rank"),
    (dict(base_pruner="losa"), "base-pruner"),
    (dict(rank_error="total"), "rank-error"),
    (dict(train_data="/nonexistent.json"), "not found"),
])
def test_bad_configs_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        LosaConfig(sparsity=0.5, **options)
