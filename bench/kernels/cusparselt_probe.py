"""Where does cuSPARSELt's time go? Variants of one 2:4 product, eager and graphed, plus a profile; and
torch's other 2:4 backend (CUTLASS) for comparison.

    PYTHONPATH=src python bench/kernels/cusparselt_probe.py
"""

import torch
import torch.nn.functional as F
from torch.sparse import SparseSemiStructuredTensor

from prunekit.eval.speed import random_24_linear, time_calls


def main():
    for out, inp, tokens in [(11008, 4096, 2048), (4096, 11008, 2048), (11008, 4096, 8192), (11008, 4096, 16)]:
        layers = [random_24_linear(out, inp) for _ in range(2)]
        x = torch.randn(tokens, inp, dtype=torch.float16, device="cuda")
        comp = [torch._cslt_compress(layer.weight.data) for layer in layers]
        search = torch._cslt_sparse_mm_search(comp[0], x.t())
        search_c = torch._cslt_sparse_mm_search(comp[0], x.t().contiguous())
        xt = x.t().contiguous()
        semi = [torch.sparse.to_sparse_semi_structured(layer.weight.data) for layer in layers]
        SparseSemiStructuredTensor._FORCE_CUTLASS = True
        try:
            cutlass = [torch.sparse.to_sparse_semi_structured(layer.weight.data) for layer in layers]
        except Exception as err:  # noqa: BLE001 - reported below
            print("CUTLASS conversion failed:", str(err).splitlines()[0][:150])
            cutlass = []
        SparseSemiStructuredTensor._FORCE_CUTLASS = False
        cusparselt = getattr(torch._C, "_cusparselt", None)
        if cusparselt is not None and hasattr(cusparselt, "mm_search"):
            try:
                print("cuSPARSELt's own search (alg, split-K, split-K mode, max alg):",
                      cusparselt.mm_search(comp[0], x.t(), None, None, None, False))
            except Exception as err:  # noqa: BLE001 - the signature differs between torch versions
                print("cuSPARSELt mm_search failed:", str(err).splitlines()[0][:200])
        variants = {
            "dense F.linear": [lambda l=l: F.linear(x, l.weight) for l in layers],
            "cslt B=x.t() alg0": [lambda c=c: torch._cslt_sparse_mm(c, x.t()) for c in comp],
            "cslt B=x.t() alg0 T": [lambda c=c: torch._cslt_sparse_mm(c, x.t(), transpose_result=True) for c in comp],
            f"cslt B=x.t() alg{search}": [lambda c=c: torch._cslt_sparse_mm(c, x.t(), alg_id=search) for c in comp],
            "cslt B=contig alg0": [lambda c=c: torch._cslt_sparse_mm(c, xt) for c in comp],
            f"cslt B=contig alg{search_c}": [lambda c=c: torch._cslt_sparse_mm(c, xt, alg_id=search_c) for c in comp],
            "cslt B=contig alg0 T": [lambda c=c: torch._cslt_sparse_mm(c, xt, transpose_result=True) for c in comp],
            "to_sparse_semi_structured": [lambda s=s: F.linear(x, s) for s in semi],
            "CUTLASS F.linear": [lambda s=s: F.linear(x, s) for s in cutlass],
        }
        print(f"\n{out}x{inp} tokens={tokens} search(x.t())={search} search(contig)={search_c}")
        for name, calls in variants.items():
            try:
                eager = time_calls(calls, repeats=10, graphed=False)
                graphed = time_calls(calls, repeats=20, graphed=True)
                print(f"  {name:<28} eager {eager:8.4f} ms   graphed {graphed:8.4f} ms", flush=True)
            except Exception as err:
                print(f"  {name:<28} failed: {str(err).splitlines()[0][:100]}")
    from torch.profiler import ProfilerActivity, profile

    c, x = torch._cslt_compress(random_24_linear(11008, 4096).weight.data), torch.randn(2048, 4096, dtype=torch.float16, device="cuda")
    for _ in range(3):
        torch._cslt_sparse_mm(c, x.t())
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            torch._cslt_sparse_mm(c, x.t())
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
