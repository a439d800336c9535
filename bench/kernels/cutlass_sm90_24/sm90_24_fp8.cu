// Hopper (sm_90a) 2:4 sparse FP8 GEMM through CUTLASS, W8A8 with row-wise scales as prunekit's 2:4 + FP8 layer
// computes it: y[n, m] = sx[n] · sw[m] · Σ_k x8[n, k] · W8[m, k], E4M3 in, fp32 accumulate, bf16 out.
// CUTLASS view as in sm90_24.cu: A = W8 (sparse, M x K row-major), B = x8 (N x K, K-major), D = M x N column-major
// (= y row-major); sw[m] is a column vector of D (one per row m), sx[n] a row vector (one per column n), both
// applied in the epilogue (an epilogue visitor tree: D = sw ⊙ (sx ⊙ acc)).
// Compiled once per configuration (build.sh, KIND=fp8); every configuration has the same SparseConfig (it depends
// only on the element types, A's major mode and min(tile K, 128)), so one compressed weight serves them all.
#include <cuda_runtime.h>
#include "cutlass/cutlass.h"
#include "cute/tensor.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/transform/device/transform_universal_adapter.hpp"
#include "cutlass/transform/kernel/sparse_gemm_compressor.hpp"
#include "cutlass/util/packed_stride.hpp"
#include "common.cuh"

using namespace cute;

// Set by build.sh: -DPK_CFG=<id> -DPK_TILE_M -DPK_TILE_N -DPK_TILE_K -DPK_CLUSTER_M -DPK_CLUSTER_N
// -DPK_PINGPONG=0|1 -DPK_FASTACC=0|1 (Hopper's fast FP8 accumulation, as _scaled_mm's use_fast_accum).
using TileShape = Shape<Int<PK_TILE_M>, Int<PK_TILE_N>, Int<PK_TILE_K>>;
using ClusterShape = Shape<Int<PK_CLUSTER_M>, Int<PK_CLUSTER_N>, _1>;
#if PK_PINGPONG && PK_FASTACC
using KSched = cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum;
#elif PK_PINGPONG
using KSched = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
#elif PK_FASTACC
using KSched = cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum;
#else
using KSched = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
#endif
#if PK_PINGPONG
using ESched = cutlass::epilogue::TmaWarpSpecialized;
#else
using ESched = cutlass::epilogue::TmaWarpSpecializedCooperative;
#endif

using ElementA = cutlass::float_e4m3_t;
using ElementB = cutlass::float_e4m3_t;
using ElementD = cutlass::bfloat16_t;
using ElementAcc = float;
using LayoutTagA = cutlass::layout::RowMajor;
using LayoutTagB = cutlass::layout::ColumnMajor;
using LayoutTagD = cutlass::layout::ColumnMajor;
constexpr int AlignAB = 16;  // 128 bits of E4M3
constexpr int AlignD = 8;    // 128 bits of bf16
using ProblemShape = Shape<int, int, int, int>;

namespace fusion = cutlass::epilogue::fusion;
using RoundNearest = std::integral_constant<cutlass::FloatRoundStyle, cutlass::FloatRoundStyle::round_to_nearest>;
using TokenScale = fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, _0>>;    // sx[n]
using ChannelScale = fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, _0>>;  // sw[m]
using TokenScaled = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::multiplies, float, float, RoundNearest::value>,
                                    TokenScale, fusion::Sm90AccFetch>;
using Scaled = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::multiplies, ElementD, float, RoundNearest::value>,
                               ChannelScale, TokenScaled>;

using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, float,
    void, LayoutTagD, AlignD, ElementD, LayoutTagD, AlignD, ESched, Scaled>::CollectiveOp;

using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp,
    ElementA, LayoutTagA, AlignAB, ElementB, LayoutTagB, AlignAB, ElementAcc, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
    KSched>::CollectiveOp;

using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue, void>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
using SparseConfig = typename Mainloop::SparseConfig;
using StrideA = cutlass::gemm::TagToStrideA_t<LayoutTagA>;

static typename Gemm::Arguments make_args(const void* a, const void* e, const void* x, const float* sw,
                                          const float* sx, void* y, int m, int n, int k, int mode) {
  ProblemShape shape{m, n, k, 1};
  auto layout_a = SparseConfig::fill_layoutA(shape);
  auto layout_e = SparseConfig::fill_layoutE(shape);
  auto stride_b = cutlass::make_cute_packed_stride(typename Gemm::GemmKernel::StrideB{}, make_shape(n, k, 1));
  auto stride_d = cutlass::make_cute_packed_stride(typename Gemm::GemmKernel::StrideD{}, make_shape(m, n, 1));
  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm, shape,
      {static_cast<const ElementA*>(a), layout_a, static_cast<const ElementB*>(x), stride_b,
       static_cast<const typename Mainloop::ElementE*>(e), layout_e},
      {{}, nullptr, stride_d, static_cast<ElementD*>(y), stride_d}};
  // the visitor tree's arguments, children first: {sw, {sx, acc, ×}, ×}
  args.epilogue.thread = {{sw}, {{sx}, {}, {}}, {}};
  args.hw_info.sm_count = sm_count();
  set_mode(args.scheduler, mode);
  return args;
}

extern "C" {

size_t PK_CAT(pk24f8_workspace_, PK_CFG)(int m, int n, int k, int mode) {
  return Gemm::get_workspace_size(make_args(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, m, n, k, mode));
}

// y = (sx ⊗ sw) ⊙ (x8 W8^T) with the configuration's kernel; `mode` as in set_mode.
// Status as run_gemm's (common.cuh).
int PK_CAT(pk24f8_gemm_, PK_CFG)(const void* a, const void* e, const void* x, const float* sw, const float* sx,
                                void* y, int m, int n, int k, int mode, void* workspace, cudaStream_t stream) {
  return run_gemm<Gemm>(make_args(a, e, x, sw, sx, y, m, n, k, mode), workspace, stream);
}

#if PK_CFG == 0  // the compressor goes with configuration 0 (all share its layout)
#define PK_PREFIX pk24f8
#include "compressor.cuh"
#endif
}
