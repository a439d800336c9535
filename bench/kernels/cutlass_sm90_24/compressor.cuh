// CUTLASS's 2:4 compressor as three extern "C" functions named PK_PREFIX##_sizes / _compress / _compress_workspace,
// shared by sm90_24.cu (fp16) and sm90_24_fp8.cu (E4M3). Included inside the file's extern "C" block, after it has
// defined ProblemShape, ElementA, LayoutTagA, StrideA, SparseConfig and Mainloop, and only by configuration 0 (every
// configuration of a library shares its compressed layout).
#pragma once

using CompressorUtility = cutlass::transform::kernel::StructuredSparseCompressorUtility<ProblemShape, ElementA, LayoutTagA, SparseConfig>;
using CompressorKernel = cutlass::transform::kernel::StructuredSparseCompressor<ProblemShape, ElementA, LayoutTagA, SparseConfig, cutlass::arch::Sm90>;
using Compressor = cutlass::transform::device::TransformUniversalAdapter<CompressorKernel>;

// Sizes of the compressed weight: A_c is [m, kc] ElementA (row-major), E is e_bytes bytes.
int PK_CAT(PK_PREFIX, _sizes)(int m, int k, long long* kc, long long* e_bytes) {
  ProblemShape shape{m, 1, k, 1};
  auto stride_a = cutlass::make_cute_packed_stride(StrideA{}, make_shape(m, k, 1));
  CompressorUtility util(shape, stride_a);
  *kc = util.get_tensorA_k_physical();
  *e_bytes = (long long)util.get_metadata_m_physical() * util.get_metadata_k_physical() * sizeof(typename Mainloop::ElementE);
  return 0;
}

// Compress a 2:4 W [m, k] ElementA row-major into A_c and E (CUTLASS's compressor kernel).
// 0 on success; 1: shape not supported; 2: initialize failed; 3: launch failed; 4: workspace too small.
int PK_CAT(PK_PREFIX, _compress)(const void* w, void* a_c, void* e, int m, int k, void* workspace,
                                 size_t workspace_bytes, cudaStream_t stream) {
  ProblemShape shape{m, 1, k, 1};
  auto stride_a = cutlass::make_cute_packed_stride(StrideA{}, make_shape(m, k, 1));
  cutlass::KernelHardwareInfo hw;
  cudaGetDevice(&hw.device_id);
  hw.sm_count = sm_count();
  typename Compressor::Arguments args{shape, {static_cast<const ElementA*>(w), stride_a, static_cast<ElementA*>(a_c),
                                              static_cast<typename Mainloop::ElementE*>(e)}, {hw}};
  Compressor op;
  if (op.can_implement(args) != cutlass::Status::kSuccess) return 1;
  if (Compressor::get_workspace_size(args) > workspace_bytes) return 4;
  if (op.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return 2;
  return op.run(stream) == cutlass::Status::kSuccess ? 0 : 3;
}

size_t PK_CAT(PK_PREFIX, _compress_workspace)(int m, int k) {
  ProblemShape shape{m, 1, k, 1};
  auto stride_a = cutlass::make_cute_packed_stride(StrideA{}, make_shape(m, k, 1));
  cutlass::KernelHardwareInfo hw;
  typename Compressor::Arguments args{shape, {nullptr, stride_a, nullptr, nullptr}, {hw}};
  return Compressor::get_workspace_size(args);
}
