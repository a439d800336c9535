// Helpers shared by sm90_24.cu (fp16) and sm90_24_fp8.cu (E4M3 W8A8): the SM count, the tile scheduler's mode and one
// launch. Included after CUTLASS's headers.
#pragma once
#include <cuda_runtime.h>

#define PK_CAT2(a, b) a##b
#define PK_CAT(a, b) PK_CAT2(a, b)

static int sm_count() {
  static int count = 0;
  if (count == 0) {
    int dev = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev);
  }
  return count;
}

template <class S>
static auto set_splits(S& scheduler, int splits) -> decltype(scheduler.splits = splits, void()) { scheduler.splits = splits; }
static void set_splits(...) {}

// `mode` = splits | log2(max swizzle) << 8 | raster << 16 (0 heuristic, 1 along M, 2 along N)
template <class S>
static void set_mode(S& scheduler, int mode) {
  set_splits(scheduler, mode & 0xff);
  scheduler.max_swizzle_size = 1 << ((mode >> 8) & 0xff);
  using R = decltype(scheduler.raster_order);
  int r = (mode >> 16) & 0xff;
  scheduler.raster_order = r == 1 ? R::AlongM : r == 2 ? R::AlongN : R::Heuristic;
}

// One launch of a configured GEMM: 0 on success; 1: shape not supported; 2: initialize failed; 3: launch failed.
template <class Gemm>
static int run_gemm(typename Gemm::Arguments const& args, void* workspace, cudaStream_t stream) {
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return 1;
  if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return 2;
  return gemm.run(stream) == cutlass::Status::kSuccess ? 0 : 3;
}
