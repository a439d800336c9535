// Helpers shared by sm90_24.cu (fp16) and sm90_24_fp8.cu (E4M3 W8A8): the SM count and the tile scheduler's mode.
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
