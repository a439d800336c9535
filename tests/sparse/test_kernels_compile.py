"""The Triton kernels compile for Ampere and Hopper (sm_80, sm_90) without a GPU: Triton's own ptxas turns them into
cubins, so a kernel that would fail to build on the GPU machine fails here first — including the inline PTX of gemv24
and gemv24_fp8 (the latter for sm_89 and sm_90 only), which the interpreter tests cannot run (they take the EMULATE
branches). Skipped where Triton is not installed, and under TRITON_INTERPRET=1, which replaces the kernels before they
can be compiled (plain pytest runs the interpreter tests in-process instead: tests/sparse/triton_interpreter.py)."""

import os

import pytest

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter replaces the kernels: nothing to compile
    pytest.skip("TRITON_INTERPRET=1 interprets the kernels instead of compiling them", allow_module_level=True)
from triton.backends.compiler import GPUTarget  # noqa: E402

from prunekit.methods.slicegpt import fused_norm  # noqa: E402
from prunekit.sparse import triton_decode  # noqa: E402

PTRS = {"x_ptr": "*fp16", "v_ptr": "*fp16", "m_ptr": "*u8", "bias_ptr": "*fp16", "y_ptr": "*fp16"}


def compile_for_hopper(fn, signature: dict, constexprs: dict, num_warps: int = 4, arch: int = 90,
                       aligned: tuple[str, ...] = ()):
    """The cubin of `fn` for sm_`arch`; `aligned` names the arguments divisible by 16, as Triton specializes pointers
    and integers at launch (it changes the vector widths of the loads and so the code)."""
    attrs = {(list(signature).index(name),): [["tt.divisibility", 16]] for name in aligned}
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    kernel = triton.compile(triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                            target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": 3})
    return kernel.asm["cubin"]


@pytest.mark.parametrize("arch", [80, 90])  # A100 and H100/H200
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_gemv24_compiles_for_sm80_and_sm90(dtype, arch):  # ptxas checks the inline PTX of the byte-permute step
    sig = {**{name: f"*{dtype}" for name in PTRS}, "m_ptr": "*u8", "N": "i32", "K": "i32", "stride_vn": "i32",
           "stride_mn": "i32"}
    cubin = compile_for_hopper(triton_decode._gemv24_kernel, sig,
                               {"BLOCK_N": 2, "BLOCK_B": 256, "HAS_BIAS": True, "BF16": dtype == "bf16",
                                "EMULATE": False}, num_warps=4, arch=arch)
    assert len(cubin) > 0


@pytest.mark.parametrize("config", [triton_decode.DEFAULT_CONFIG, {**triton_decode.CONFIGS[-1], "SPLIT_K": 8}])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_spmm24_compiles_for_sm90(config, dtype):  # split-K's arrival count and the bias branch included
    sig = {**{name: f"*{dtype}" for name in PTRS}, "m_ptr": "*u8", "ws_ptr": "*fp32", "count_ptr": "*i32", "N": "i32",
           "K": "i32", "stride_xb": "i32", "stride_vn": "i32", "stride_mn": "i32", "stride_yb": "i32", "B": "i32"}
    cubin = compile_for_hopper(triton_decode._spmm24_kernel, sig,
                               {"BLOCK_N": config["BLOCK_N"], "BLOCK_K": config["BLOCK_K"], "SPLIT_K": config["SPLIT_K"],
                                "HAS_BIAS": True}, num_warps=config["num_warps"])
    assert len(cubin) > 0


@pytest.mark.parametrize("block,weight", [(512, False), (1024, True)])
def test_fused_norm_compiles_for_sm90(block, weight):
    sig = {"x_ptr": "*fp16", "w_ptr": "*fp16", "y_ptr": "*fp16", "K": "i32", "stride_x": "i32", "stride_y": "i32",
           "inv_d": "fp32", "eps": "fp32"}
    cubin = compile_for_hopper(fused_norm._rms_norm_kernel, sig, {"BLOCK": block, "HAS_WEIGHT": weight})
    assert len(cubin) > 0


@pytest.mark.parametrize("arch", [80, 90])  # fp16 tensor-core products: no FP8 tensor cores needed
def test_spmm24_fp8_compiles_for_sm80_and_sm90(arch):
    from prunekit.sparse import triton_fp8

    sig = {"x_ptr": "*fp16", "v_ptr": "*u8", "m_ptr": "*u8", "sx_ptr": "*fp32", "sw_ptr": "*fp32", "bias_ptr": "*bf16",
           "y_ptr": "*bf16", "N": "i32", "K": "i32", "stride_xb": "i32", "stride_vn": "i32", "stride_mn": "i32",
           "stride_yb": "i32", "B": "i32"}
    cubin = compile_for_hopper(triton_fp8._spmm24_fp8_kernel, sig,
                               {"BLOCK_N": 32, "BLOCK_K": 128, "HAS_BIAS": True}, arch=arch)
    assert len(cubin) > 0


GEMV_FP8_SIG = {"x_ptr": "*u8", "v_ptr": "*u8", "m_ptr": "*u8", "sx_ptr": "*fp32", "sw_ptr": "*fp32",
                "bias_ptr": "*bf16", "y_ptr": "*bf16", "N": "i32", "K": "i32", "stride_vn": "i32", "stride_mn": "i32"}


@pytest.mark.parametrize("arch", [89, 90])  # Ada and Hopper: cvt.rn.f16x2.e4m3x2 is a PTX instruction of sm_89 on
@pytest.mark.parametrize("aligned", [False, True])  # as a launch on 16-byte aligned weights specializes it, and not
def test_gemv24_fp8_compiles_for_sm89_and_sm90(arch, aligned):  # ptxas checks the inline PTX of the FP8 step
    from prunekit.sparse import triton_fp8

    names = ("x_ptr", "v_ptr", "m_ptr", "sx_ptr", "sw_ptr", "bias_ptr", "y_ptr", "K", "stride_vn", "stride_mn")
    cubin = compile_for_hopper(triton_fp8._gemv24_fp8_kernel, GEMV_FP8_SIG,
                               {"BLOCK_N": 4, "BLOCK_B": 256, "HAS_BIAS": True, "EMULATE": False}, arch=arch,
                               aligned=names if aligned else ())
    assert len(cubin) > 0


def test_gemv24_fp8_does_not_compile_for_sm80():  # why SparseLinear24FP8 offers gemv_fp8 only from sm_89 on
    from prunekit.sparse import triton_fp8

    with pytest.raises(Exception, match="sm_89"):
        compile_for_hopper(triton_fp8._gemv24_fp8_kernel, GEMV_FP8_SIG,
                           {"BLOCK_N": 4, "BLOCK_B": 256, "HAS_BIAS": False, "EMULATE": False}, arch=80)


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_per_token_quantizer_compiles_for_sm80_and_sm90(arch, dtype):
    from prunekit.quantize import per_token

    sig = {"x_ptr": f"*{dtype}", "q_ptr": "*u8", "s_ptr": "*fp32", "K": "i32", "stride_x": "i32", "stride_q": "i32"}
    cubin = compile_for_hopper(per_token._per_token_kernel, sig, {"FP8_MAX": 448.0, "BLOCK": 1024}, arch=arch)
    assert len(cubin) > 0
