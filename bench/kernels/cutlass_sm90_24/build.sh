#!/bin/bash
# Build libsm90_24.so: CUTLASS's Hopper 2:4 sparse GEMM in the configurations below, for
# bench/kernels/cutlass_sparse_prefill.py. Needs nvcc >= 12.2 and CUTLASS 4.2's headers:
#   pip download --no-deps nvidia-cutlass==4.2.0.0 && unzip nvidia_cutlass-4.2.0.0-*.whl -d cutlass
#   CUTLASS_DIR=cutlass/cutlass_library/source [NVCC=nvcc] bench/kernels/cutlass_sm90_24/build.sh OUT.so [JOBS]
# The .so needs libcudart.so of nvcc's major version at run time (torch's, once torch is imported).
set -euo pipefail
out=$(realpath -m "$1"); jobs=${2:-2}
: "${CUTLASS_DIR:?set CUTLASS_DIR to the CUTLASS 4.2 source folder, the one holding include and tools}"
nvcc=${NVCC:-nvcc}
here=$(dirname "$(realpath "$0")")
# id  tile_m tile_n cluster_m cluster_n pingpong streamk
configs="
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
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
while read -r id tm tn cm cn pp sk; do
  [ -z "$id" ] && continue
  "$nvcc" -std=c++17 -O3 -arch=sm_90a -Xcompiler -fPIC --expt-relaxed-constexpr -DNDEBUG \
    -I"$CUTLASS_DIR/include" -I"$CUTLASS_DIR/tools/util/include" \
    -DPK_CFG="$id" -DPK_TILE_M="$tm" -DPK_TILE_N="$tn" -DPK_CLUSTER_M="$cm" -DPK_CLUSTER_N="$cn" \
    -DPK_PINGPONG="$pp" -DPK_STREAMK="$sk" -c "$here/sm90_24.cu" -o "$tmp/cfg$id.o" &
  while (( $(jobs -r | wc -l) >= jobs )); do wait -n; done
done <<< "$configs"
wait
for id in $(awk 'NF {print $1}' <<< "$configs"); do [ -f "$tmp/cfg$id.o" ] || { echo "configuration $id did not build" >&2; exit 1; }; done
"$nvcc" -shared -arch=sm_90a -cudart shared ${NVCC_LDFLAGS:-} -o "$tmp/lib.so" "$tmp"/cfg*.o
mv "$tmp/lib.so" "$out"
echo "wrote $out"
