"""Where and in what precision a model runs: automatic by default, overridable.

``auto`` means: CUDA when a GPU is visible, else the CPU; on CUDA bfloat16 where the
card supports it, else float16 (half precision halves the bytes each decoding step
reloads); on the CPU float32 (CPU half-precision matmuls are slower, not faster).
Losslessness is always with respect to the model as it runs, in the dtype chosen here.
"""

from __future__ import annotations

import torch

from spec.errors import ConfigurationError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigurationError(f"Unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'.") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"Device {device!r} asked for, but no CUDA GPU is visible; use 'auto' or 'cpu'.")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigurationError(f"Device type {resolved.type!r} is not supported; use 'auto', 'cpu' or 'cuda'.")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device = torch.device("cpu")) -> torch.dtype:
    if isinstance(dtype, str) and dtype != "auto":
        if dtype not in DTYPES:
            raise ConfigurationError(f"Unknown dtype {dtype!r}; use 'auto' or one of {', '.join(DTYPES)}.")
        dtype = DTYPES[dtype]
    if dtype == "auto":
        if device.type == "cuda":
            try:  # emulated bfloat16 (pre-Ampere cards) is slower than float16
                native = torch.cuda.is_bf16_supported(including_emulation=False)
            except TypeError:
                native = torch.cuda.is_bf16_supported()
            return torch.bfloat16 if native else torch.float16
        return torch.float32
    allowed = CUDA_DTYPES if device.type == "cuda" else CPU_DTYPES
    if dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise ConfigurationError(f"dtype {dtype} is not supported on {device.type}; use one of {names}.")
    return dtype


def resolve_placement(device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
                      ) -> tuple[torch.device, torch.dtype]:
    resolved = resolve_device(device)
    return resolved, resolve_dtype(dtype, resolved)
