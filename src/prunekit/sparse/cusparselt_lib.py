"""cuSPARSELt called directly through ctypes, for a newer library than the one torch was built with.

torch's `torch._cslt_sparse_mm` runs the cuSPARSELt torch was built with (torch 2.11: 0.8.0, whose FP16
kernels on Hopper regressed; NVIDIA's 0.8.1 release notes say the regression is fixed); that torch build
links it statically, so installing a newer one does not change torch. Where a
`libcusparseLt.so.0` of version ≥ 0.8.1 (and ≥ torch's) is installed (pip `nvidia-cusparselt-cu13` or
`-cu12`, or the path in PRUNEKIT_CUSPARSELT; "off" disables it), this module loads it and SparseLinear24
uses it instead of torch's for its cuSPARSELt paths. Besides the newer kernels, calling it directly writes
the output in the layer's own [rows, out] layout (torch's path returns a transpose) and keeps a plan per
shape, so an eager call does not rebuild descriptors.

One product, for a 2:4 weight W [m, k] (row-major) and an input x [n, k] (row-major, n padded to 16):
    D = W · xᵀ,  B = xᵀ read as a column-major k × n matrix (no copy),
D column-major [m, n] (`out_rows=True`: the same bytes as y = x Wᵀ [n, m] row-major, the layer's output
with no transpose) or row-major [m, n] (y as a transposed view). The weight is compressed once by the
library; plans (descriptors, algorithm, workspace) are built once per (n, output order, algorithm) and
cached, so a call only launches the kernel and can be captured in a CUDA graph.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import warnings
from functools import lru_cache

import torch

_OPAQUE = 1024  # bytes for each opaque cuSPARSELt struct (512 in 0.10; larger is harmless), 16-aligned
_ORDER_COL, _ORDER_ROW = 1, 2  # cusparseOrder_t
_OP_N = 0  # cusparseOperation_t
_COMPUTE_32F = 2  # cusparseComputeType (0.6+)
_DTYPES = {torch.float16: 2, torch.bfloat16: 14}  # cudaDataType
_ALG_CONFIG_ID, _ALG_CONFIG_MAX_ID, _SPLIT_K, _SPLIT_K_MODE = 0, 1, 3, 4  # cusparseLtMatmulAlgAttribute_t


class CusparseLtError(RuntimeError):
    pass


class _Opaque:
    """A 16-byte-aligned host buffer for one opaque cuSPARSELt struct."""

    def __init__(self):
        self._raw = (ctypes.c_uint8 * (_OPAQUE + 16))()
        self.ptr = ctypes.c_void_p((ctypes.addressof(self._raw) + 15) & ~15)


def library_paths() -> list[str]:
    """Candidate libcusparseLt.so.0 files: PRUNEKIT_CUSPARSELT, then the pip packages' folders."""
    found = [os.environ["PRUNEKIT_CUSPARSELT"]] if os.environ.get("PRUNEKIT_CUSPARSELT") else []
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for sub in ("cu13/lib", "cu12/lib", "cusparselt/lib"):
            found += sorted(glob.glob(os.path.join(root, sub, "libcusparseLt.so.0")))
    return found


class Library:
    """The loaded libcusparseLt and one handle per CUDA device."""

    def __init__(self, path: str):
        self.path = path
        self.lib = ctypes.CDLL(path)
        self.lib.cusparseLtGetErrorString.restype = ctypes.c_char_p
        self._handles: dict[int, _Opaque] = {}
        version = ctypes.c_int()
        self.lib.cusparseLtGetProperty(0, ctypes.byref(version))  # MAJOR_VERSION
        minor, patch = ctypes.c_int(), ctypes.c_int()
        self.lib.cusparseLtGetProperty(1, ctypes.byref(minor))
        self.lib.cusparseLtGetProperty(2, ctypes.byref(patch))
        self.version = (version.value, minor.value, patch.value)

    def call(self, name: str, *args) -> None:
        status = getattr(self.lib, name)(*args)
        if status != 0:
            raise CusparseLtError(f"{name}: {self.lib.cusparseLtGetErrorString(status).decode()} ({status})")

    def handle(self, device: torch.device) -> ctypes.c_void_p:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in self._handles:
            handle = _Opaque()
            with torch.cuda.device(index):
                self.call("cusparseLtInit", handle.ptr)
            self._handles[index] = handle
        return self._handles[index].ptr



#: the first version whose Hopper FP16 kernels are not regressed (NVIDIA's 0.8.1 release notes)
MIN_VERSION = (0, 8, 1)


def version_number(version: tuple[int, int, int]) -> int:
    """major·1000000 + minor·100 + patch, as torch.backends.cusparselt.version() (0.8.0 → 800)."""
    major, minor, patch = version
    return major * 1000000 + minor * 100 + patch


def pick(found: list[tuple[str, tuple[int, int, int]]], torch_version: int, preferred: str | None) -> str | None:
    """Which of the (path, version) libraries to use: `preferred` (PRUNEKIT_CUSPARSELT) if it is usable,
    else the newest usable one; usable = version ≥ MIN_VERSION and ≥ torch's (`version_number`)."""
    usable = [(path, v) for path, v in found if v >= MIN_VERSION and version_number(v) >= torch_version]
    for path, _ in usable:
        if path == preferred:
            return path
    return max(usable, key=lambda pv: pv[1])[0] if usable else None


@lru_cache(maxsize=1)
def load() -> Library | None:
    """The library `pick` chooses among those found, or None (also without CUDA, or with
    PRUNEKIT_CUSPARSELT=off). A PRUNEKIT_CUSPARSELT path that cannot be used is reported with a warning."""
    preferred = os.environ.get("PRUNEKIT_CUSPARSELT")
    if not torch.cuda.is_available() or preferred == "off":
        return None
    torch_version = (torch.backends.cusparselt.version() or 0) if torch.backends.cusparselt.is_available() else 0
    libraries = {}
    for path in library_paths():
        try:
            libraries[path] = Library(path)
        except (OSError, AttributeError) as err:  # not a loadable cuSPARSELt
            if path == preferred:
                warnings.warn(f"PRUNEKIT_CUSPARSELT={path} is not a loadable cuSPARSELt ({err}); not used")
    chosen = pick([(path, lib.version) for path, lib in libraries.items()], torch_version, preferred)
    if preferred and preferred in libraries and chosen != preferred:
        warnings.warn(f"PRUNEKIT_CUSPARSELT={preferred} is cuSPARSELt {libraries[preferred].version}: prunekit needs "
                      f"≥ {MIN_VERSION} and ≥ torch's ({torch_version}); not used")
    return libraries[chosen] if chosen else None


def _stream(device: torch.device) -> ctypes.c_void_p:
    return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)


def matrix(lib: Library, handle: ctypes.c_void_p, rows: int, cols: int, order: int, dtype: torch.dtype,
           structured: bool = False) -> _Opaque:
    """A cuSPARSELt descriptor of a packed rows × cols matrix (leading dimension cols if row-major, else rows),
    16-byte aligned; `structured`: 2:4 along the reduction dimension."""
    desc, ld = _Opaque(), cols if order == _ORDER_ROW else rows
    shape = (ctypes.c_int64(rows), ctypes.c_int64(cols), ctypes.c_int64(ld), ctypes.c_uint32(16), _DTYPES[dtype], order)
    if structured:
        lib.call("cusparseLtStructuredDescriptorInit", handle, desc.ptr, *shape, 0)
    else:
        lib.call("cusparseLtDenseDescriptorInit", handle, desc.ptr, *shape)
    return desc


class _Plan:
    """Descriptors, algorithm and workspace of D = W · xᵀ for one row count and output order."""

    def __init__(self, weight: "Weight24", rows: int, out_rows: bool, alg: int, split_k: tuple[int, int] = (1, 0)):
        if split_k[0] > 1 and split_k[1] == 0:
            raise ValueError("split-K > 1 needs a cusparseLtSplitKMode_t (1–6)")
        lib, h, self.device = weight.lib, weight.lib.handle(weight.device), weight.device
        m, k = weight.out_features, weight.in_features
        self.lib, self.handle = lib, h
        self.B = matrix(lib, h, k, rows, _ORDER_COL, weight.dtype)
        self.C = matrix(lib, h, m, rows, _ORDER_COL if out_rows else _ORDER_ROW, weight.dtype)
        self.desc, self.sel, self.plan = _Opaque(), _Opaque(), _Opaque()
        lib.call("cusparseLtMatmulDescriptorInit", h, self.desc.ptr, _OP_N, _OP_N, weight.A.ptr, self.B.ptr,
                 self.C.ptr, self.C.ptr, _COMPUTE_32F)
        lib.call("cusparseLtMatmulAlgSelectionInit", h, self.sel.ptr, self.desc.ptr, 0)
        self.max_alg = self._get(_ALG_CONFIG_MAX_ID)  # ids run 0 .. max_alg − 1 (setting max_alg is refused)
        if alg >= 0:
            if alg >= self.max_alg:
                raise CusparseLtError(f"algorithm {alg}: this shape has ids 0..{self.max_alg - 1}")
            self._set(_ALG_CONFIG_ID, alg)
        if split_k != (1, 0):  # (splits, cusparseLtSplitKMode_t); (1, 0) leaves the library's choice
            self._set(_SPLIT_K, split_k[0])
            self._set(_SPLIT_K_MODE, split_k[1])
        lib.call("cusparseLtMatmulPlanInit", h, self.plan.ptr, self.desc.ptr, self.sel.ptr)
        self.workspace = torch.empty(0, dtype=torch.uint8, device=weight.device)
        self._size_workspace()
        self.alpha, self.beta = ctypes.c_float(1.0), ctypes.c_float(0.0)
        self.alg = alg

    def _size_workspace(self) -> None:
        """(Re)allocate the workspace the plan's current algorithm needs; only before the plan first runs."""
        size = ctypes.c_size_t()
        self.lib.call("cusparseLtMatmulGetWorkspace", self.handle, self.plan.ptr, ctypes.byref(size))
        if size.value > self.workspace.numel() or self.workspace.numel() == 0:
            self.workspace = torch.empty(max(size.value, 1), dtype=torch.uint8, device=self.device)

    def _set(self, attribute: int, value: int) -> None:
        value = ctypes.c_int(value)
        self.lib.call("cusparseLtMatmulAlgSetAttribute", self.handle, self.sel.ptr, attribute, ctypes.byref(value),
                      ctypes.c_size_t(4))

    def _get(self, attribute: int) -> int:
        value = ctypes.c_int()
        self.lib.call("cusparseLtMatmulAlgGetAttribute", self.handle, self.sel.ptr, attribute,
                      ctypes.byref(value), ctypes.c_size_t(4))
        return value.value

    def args(self, compressed: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> tuple:
        streams = (ctypes.c_void_p * 1)(_stream(self.device))
        return (self.handle, self.plan.ptr, ctypes.byref(self.alpha), ctypes.c_void_p(compressed.data_ptr()),
                ctypes.c_void_p(x.data_ptr()), ctypes.byref(self.beta), ctypes.c_void_p(out.data_ptr()),
                ctypes.c_void_p(out.data_ptr()), ctypes.c_void_p(self.workspace.data_ptr()), streams, 1)

    def search(self, compressed: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> int:
        """cusparseLtMatmulSearch: times the library's algorithms and keeps the fastest in the plan."""
        self.lib.call("cusparseLtMatmulSearch", *self.args(compressed, x, out))
        self.alg = self._get(_ALG_CONFIG_ID)
        torch.cuda.current_stream(self.device).synchronize()  # the search ran with the old workspace
        self._size_workspace()  # the chosen algorithm may need more
        return self.alg


class Weight24:
    """A 2:4 weight [out, in] compressed by the loaded library, multiplied by inputs [rows, in]."""

    def __init__(self, lib: Library, weight: torch.Tensor):
        if weight.dtype not in _DTYPES or not weight.is_cuda or weight.dim() != 2:
            raise ValueError("Weight24 needs a 2-D float16/bfloat16 CUDA weight")
        weight = weight.contiguous()
        self.lib, self.dtype, self.device = lib, weight.dtype, weight.device
        self.out_features, self.in_features = weight.shape
        m, k = weight.shape
        h = lib.handle(weight.device)
        self.A = matrix(lib, h, m, k, _ORDER_ROW, weight.dtype, structured=True)
        size, buffer = ctypes.c_size_t(), ctypes.c_size_t()
        lib.call("cusparseLtSpMMACompressedSize2", h, self.A.ptr, ctypes.byref(size), ctypes.byref(buffer))
        self.compressed = torch.empty(size.value, dtype=torch.uint8, device=weight.device)
        scratch = torch.empty(max(buffer.value, 1), dtype=torch.uint8, device=weight.device)
        with torch.cuda.device(weight.device):
            lib.call("cusparseLtSpMMACompress2", h, self.A.ptr, 1, _OP_N, ctypes.c_void_p(weight.data_ptr()),
                     ctypes.c_void_p(self.compressed.data_ptr()), ctypes.c_void_p(scratch.data_ptr()),
                     _stream(weight.device))
            torch.cuda.current_stream(weight.device).synchronize()
        #: plans are never dropped: a CUDA graph may hold their workspace pointers
        self.plans: dict[tuple, _Plan] = {}

    def plan(self, rows: int, out_rows: bool, alg: int, split_k: tuple[int, int] = (1, 0)) -> _Plan:
        key = (rows, out_rows, alg, split_k)
        if key not in self.plans:
            self.plans[key] = _Plan(self, rows, out_rows, alg, split_k)
        return self.plans[key]

    def searched(self, x: torch.Tensor, out_rows: bool) -> int:
        """The algorithm the library's own search picks for this input's row count."""
        plan = _Plan(self, x.shape[0], out_rows, -1)
        with torch.cuda.device(self.device):
            alg = plan.search(self.compressed, x, self._out(x.shape[0], out_rows, x))
        self.plans.setdefault((x.shape[0], out_rows, alg, (1, 0)), plan)
        self.plans.setdefault((x.shape[0], out_rows, "searched", alg), plan)  # kept alive whichever is used
        return alg

    def _out(self, rows: int, out_rows: bool, x: torch.Tensor) -> torch.Tensor:
        shape = (rows, self.out_features) if out_rows else (self.out_features, rows)
        return torch.empty(shape, dtype=x.dtype, device=x.device)

    def mm(self, x: torch.Tensor, out_rows: bool = True, alg: int = 0, split_k: tuple[int, int] = (1, 0)) -> torch.Tensor:
        """x [rows, in] contiguous (rows a multiple of 16) → y = x Wᵀ: [rows, out] contiguous when
        `out_rows`, else the transposed view of a row-major [out, rows]."""
        if x.dtype != self.dtype or not x.is_contiguous() or x.shape[1] != self.in_features:
            raise ValueError(f"input must be contiguous {self.dtype} with {self.in_features} columns")
        plan = self.plan(x.shape[0], out_rows, alg, split_k)
        out = self._out(x.shape[0], out_rows, x)
        with torch.cuda.device(self.device):
            self.lib.call("cusparseLtMatmul", *plan.args(self.compressed, x, out))
        return out if out_rows else out.t()
