// Hopper (sm_90a) 2:4 sparse GEMM through CUTLASS: y[n, m] = x[n, k] · W[m, k]^T, fp16 in/out, fp32 accumulate.
// CUTLASS view: A = W (sparse, M x K row-major), B = x (N x K, K-major), D = M x N column-major (= y row-major).
// Compiled once per tile configuration; every configuration uses tile K = 128 so all share one
// compressed layout (SparseConfig depends only on the element types, A's major mode and min(tile K, 128)).
#include <cuda_runtime.h>
#include "cutlass/cutlass.h"
#include "cute/tensor.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
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

// One configuration per object file, set by build.sh: -DPK_CFG=<id used in symbol names> -DPK_TILE_M=..
// -DPK_TILE_N=.. -DPK_CLUSTER_M=.. -DPK_CLUSTER_N=.. -DPK_PINGPONG=0|1 -DPK_STREAMK=0|1.
using TileShape = Shape<Int<PK_TILE_M>, Int<PK_TILE_N>, _128>;
using ClusterShape = Shape<Int<PK_CLUSTER_M>, Int<PK_CLUSTER_N>, _1>;
#if PK_PINGPONG
using KSched = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
using ESched = cutlass::epilogue::TmaWarpSpecialized;
#else
using KSched = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
using ESched = cutlass::epilogue::TmaWarpSpecializedCooperative;
#endif
#if PK_STREAMK
using TSched = cutlass::gemm::StreamKScheduler;
#else
using TSched = void;  // persistent tile scheduler
#endif

using ElementA = cutlass::half_t;
using ElementB = cutlass::half_t;
using ElementD = cutlass::half_t;
using ElementAcc = float;
using LayoutTagA = cutlass::layout::RowMajor;
using LayoutTagB = cutlass::layout::ColumnMajor;
using LayoutTagD = cutlass::layout::ColumnMajor;
constexpr int Align = 8;
using ProblemShape = Shape<int, int, int, int>;

using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementAcc,
    void, LayoutTagD, Align, ElementD, LayoutTagD, Align, ESched>::CollectiveOp;

using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp,
    ElementA, LayoutTagA, Align, ElementB, LayoutTagB, Align, ElementAcc, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
    KSched>::CollectiveOp;

using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue, TSched>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
using SparseConfig = typename Mainloop::SparseConfig;
using StrideA = cutlass::gemm::TagToStrideA_t<LayoutTagA>;

static typename Gemm::Arguments make_args(const void* a, const void* e, const void* x, void* y, int m, int n, int k,
                                          int mode) {
  ProblemShape shape{m, n, k, 1};
  auto layout_a = SparseConfig::fill_layoutA(shape);
  auto layout_e = SparseConfig::fill_layoutE(shape);
  auto stride_b = cutlass::make_cute_packed_stride(typename Gemm::GemmKernel::StrideB{}, make_shape(n, k, 1));
  auto stride_d = cutlass::make_cute_packed_stride(typename Gemm::GemmKernel::StrideD{}, make_shape(m, n, 1));
  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm, shape,
      {static_cast<const ElementA*>(a), layout_a, static_cast<const ElementB*>(x), stride_b,
       static_cast<const typename Mainloop::ElementE*>(e), layout_e},
      {{1.0f, 0.0f}, nullptr, stride_d, static_cast<ElementD*>(y), stride_d}};
  args.hw_info.sm_count = sm_count();
  set_mode(args.scheduler, mode);
  return args;
}

extern "C" {

size_t PK_CAT(pk24_workspace_, PK_CFG)(int m, int n, int k, int mode) {
  return Gemm::get_workspace_size(make_args(nullptr, nullptr, nullptr, nullptr, m, n, k, mode));
}

// y = x W^T with the configuration's kernel; `mode` as in set_mode.
// Status as run_gemm's (common.cuh).
int PK_CAT(pk24_gemm_, PK_CFG)(const void* a, const void* e, const void* x, void* y, int m, int n, int k,
                              int mode, void* workspace, cudaStream_t stream) {
  return run_gemm<Gemm>(make_args(a, e, x, y, m, n, k, mode), workspace, stream);
}

#if PK_CFG == 0  // the compressor goes with configuration 0 (all share its layout)
#define PK_PREFIX pk24
#include "compressor.cuh"
#endif
}
