"""What every bench JSON records about where and how it ran: the machine (GPU name, or CPU model and
threads), library versions, and the numeric precision — the dtype and whether fp32 matrix products ran in
strict fp32 or TF32 (`torch.backends.cuda.matmul.allow_tf32`, `torch.get_float32_matmul_precision()`).

Call `environment(device, dtype)` after any precision flag is set, just before measuring, and store the
result under "environment" in the JSON. Scripts import it as `from environment import environment`
(they run as `python bench/<script>.py`, so bench/ is on sys.path).
"""

from __future__ import annotations

import platform

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def machine(device: str | torch.device = "cpu") -> str:
    """'NVIDIA H200' (the card that runs `device`), or 'AMD EPYC (2 threads)' on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()} ({torch.get_num_threads()} threads)"


def precision(dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu") -> dict:
    """The dtype measured and how fp32 matrix products run right now: 'strict fp32' or 'tf32'."""
    dtype = str(dtype).removeprefix("torch.")
    cuda = torch.device(device).type == "cuda"
    tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    fp32_matmul = ("tf32" if tf32 else "strict fp32") if cuda else "strict fp32 (CPU)"
    label = {"float32": ("fp32, TF32 matmuls" if tf32 else "fp32, strict (TF32 off)") if cuda else "fp32 (CPU)",
             "float16": "fp16", "bfloat16": "bf16"}.get(dtype, dtype)
    return {"label": label, "dtype": dtype, "fp32_matmul": fp32_matmul,
            "cuda_matmul_allow_tf32": tf32, "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def environment(device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32", **extra) -> dict:
    """Machine, versions and precision, for the JSON's "environment" key (`extra`: more fields)."""
    env = {"machine": machine(device), "device": str(device), "torch": torch.__version__,
           "python": platform.python_version(), "precision": precision(dtype, device)}
    if torch.device(device).type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cusparselt_builtin"] = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    return env | extra
