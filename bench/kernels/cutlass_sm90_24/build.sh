#!/bin/bash
# Build CUTLASS's Hopper 2:4 sparse GEMM in the configurations below: KIND=fp16 (the default) builds sm90_24.cu for
# bench/kernels/cutlass_sparse_prefill.py, KIND=fp8 builds sm90_24_fp8.cu (E4M3 W8A8, row-wise scales, bf16 out) for
# bench/kernels/cutlass_fp8_prefill.py and PRUNEKIT_CUTLASS. Needs nvcc >= 12.2 and CUTLASS 4.2's headers:
#   pip download --no-deps nvidia-cutlass==4.2.0.0 && unzip nvidia_cutlass-4.2.0.0-*.whl -d cutlass
#   CUTLASS_DIR=cutlass/cutlass_library/source [NVCC=nvcc] [KIND=fp8] bench/kernels/cutlass_sm90_24/build.sh OUT.so [JOBS]
# (nvcc runs without a GPU: the pip wheels nvidia-cuda-nvcc, -nvvm, -crt, -runtime and -cccl of one CUDA version
# make a compiler on a CPU machine; their runtime has only libcudart.so.13, so link against a folder holding a
# libcudart.so link to it: NVCC_LDFLAGS=-L<that folder>.)
# The .so needs libcudart.so of nvcc's major version at run time (torch's, once torch is imported).
set -euo pipefail
out=$(realpath -m "$1"); jobs=${2:-2}
: "${CUTLASS_DIR:?set CUTLASS_DIR to the CUTLASS 4.2 source folder, the one holding include and tools}"
nvcc=${NVCC:-nvcc}
here=$(dirname "$(realpath "$0")")
kind=${KIND:-fp16}
# id  tile_m tile_n cluster_m cluster_n pingpong streamk
fp16_configs="
0  128 128 1 2 0 0
1  128 256 1 2 0 0
2  256 128 2 1 0 0
3  128 128 2 1 0 0
4   64 128 1 2 1 0
5  128 128 1 2 1 0
6  128 256 1 2 0 1
7  128 128 1 2 0 1
8  256 128 1 2 0 0
9  128 256 2 1 0 0
10 256 128 2 2 0 0
11 128 256 2 2 0 0
12 256 128 1 1 0 0
13 128 256 1 1 0 0"
# id  tile_m tile_n tile_k cluster_m cluster_n pingpong fast_accum
fp8_configs="
0  128 256 128 1 2 0 1
1  128 256 128 2 1 0 1
2  256 128 128 2 1 0 1
3  256 128 128 1 2 0 1
4  128 128 128 1 2 0 1
5  128 256 256 1 2 0 1
6  128 256 128 1 2 0 0
7  256 128 128 2 1 0 0
8   64 256 128 1 2 1 1
9  128 128 128 1 2 1 1
10 128 256 128 1 1 0 1
11 256 128 128 1 1 0 1"
case $kind in
  fp16) configs=$fp16_configs ;;
  fp8) configs=$fp8_configs ;;
  *) echo "KIND must be fp16 or fp8, not $kind" >&2; exit 2 ;;
esac
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
while read -r id a b c d e f g; do
  [ -z "$id" ] && continue
  if [ "$kind" = fp16 ]; then  # a..f: tile_m tile_n cluster_m cluster_n pingpong streamk
    defs=(-DPK_TILE_M="$a" -DPK_TILE_N="$b" -DPK_CLUSTER_M="$c" -DPK_CLUSTER_N="$d" -DPK_PINGPONG="$e" -DPK_STREAMK="$f")
    src=sm90_24.cu
  else  # a..g: tile_m tile_n tile_k cluster_m cluster_n pingpong fast_accum
    defs=(-DPK_TILE_M="$a" -DPK_TILE_N="$b" -DPK_TILE_K="$c" -DPK_CLUSTER_M="$d" -DPK_CLUSTER_N="$e" -DPK_PINGPONG="$f"
          -DPK_FASTACC="$g")
    src=sm90_24_fp8.cu
  fi
  "$nvcc" -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Xcompiler -fPIC --expt-relaxed-constexpr -DNDEBUG \
    -I"$CUTLASS_DIR/include" -I"$CUTLASS_DIR/tools/util/include" -DPK_CFG="$id" "${defs[@]}" \
    -c "$here/$src" -o "$tmp/cfg$id.o" &
  while (( $(jobs -r | wc -l) >= jobs )); do wait -n; done
done <<< "$configs"
wait
for id in $(awk 'NF {print $1}' <<< "$configs"); do [ -f "$tmp/cfg$id.o" ] || { echo "configuration $id did not build" >&2; exit 1; }; done
"$nvcc" -shared -gencode=arch=compute_90a,code=sm_90a -cudart shared -cudadevrt none ${NVCC_LDFLAGS:-} -o "$tmp/lib.so" "$tmp"/cfg*.o
mv "$tmp/lib.so" "$out"
echo "wrote $out"
