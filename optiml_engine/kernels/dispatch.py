"""Which backend runs each kernel: `auto` resolves to the fastest one available on the device.

The recipe's `kernels:` section names a backend per kernel (`KernelsConfig`); `auto` picks from the
preference lists below, fastest first. The choice is logged once per kernel and device type, and a
forced backend that cannot run here is a user error with the fix in it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch

from optiml_engine.errors import OptimlError

log = logging.getLogger("optiml_engine.kernels")

# Fastest first, per device type. flash_attn is the reference FlashAttention implementation, so
# it ranks above our Triton kernel when installed; apex's FusedAdam is ranked below our CUDA op.
# On a CPU, torch's fused AdamW kernel (fed our masters) is 8x our foreach path (docs/bench).
PREFERENCE = {
    "attention": {"cuda": ["flash_attn", "triton", "sdpa"], "cpu": ["segments", "sdpa"]},
    "cross_entropy": {"cuda": ["triton", "torch"], "cpu": ["torch"]},
    "adamw": {"cuda": ["cuda", "apex", "triton", "torch_fused", "foreach"],
              "cpu": ["torch_fused", "foreach"]},
}
ALL_BACKENDS = {
    "attention": ["triton", "segments", "sdpa", "flash_attn"],
    "cross_entropy": ["triton", "torch"],
    "adamw": ["cuda", "triton", "apex", "torch_fused", "foreach"],
}


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def cuda_ops_built() -> bool:
    """True when setup.py built the optional `optiml_engine._cuda_ops` extension."""
    return _importable("optiml_engine._cuda_ops")


def backend_available(backend: str, device: torch.device) -> tuple[bool, str]:
    """(usable, why not) for one backend on one device."""
    on_cuda = device.type == "cuda"
    if backend in ("sdpa", "segments", "torch", "foreach", "torch_fused"):
        return True, ""
    if backend == "triton":
        if not _importable("triton"):
            return False, "triton is not installed"
        if on_cuda or triton_interpreting():
            return True, ""
        return False, "Triton kernels need a CUDA device (or TRITON_INTERPRET=1, for tests)"
    if not on_cuda:
        return False, f"'{backend}' needs a CUDA device"
    if backend == "flash_attn" and not _importable("flash_attn"):
        return False, "the flash_attn package is not installed"
    if backend == "apex" and not _importable("apex"):
        return False, "apex is not installed"
    if backend == "cuda" and not cuda_ops_built():
        return False, "optiml_engine._cuda_ops was not built (needs a CUDA toolkit at install)"
    return True, ""


_logged: set[tuple] = set()


def log_once(key: tuple, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        log.info(message)


def resolve(kernel: str, requested: str, device: torch.device | str) -> str:
    """The backend that will run `kernel` on `device` for the recipe value `requested`."""
    device = torch.device(device)
    where = f"kernels.{kernel}"
    if kernel not in ALL_BACKENDS:
        raise ValueError(f"unknown kernel {kernel!r}")
    if requested == "auto":
        prefs = PREFERENCE[kernel]["cuda" if device.type == "cuda" else "cpu"]
        chosen = next(b for b in prefs if backend_available(b, device)[0])
    elif requested in ALL_BACKENDS[kernel]:
        ok, why = backend_available(requested, device)
        if not ok:
            raise OptimlError(where, f"backend '{requested}' cannot run on {device.type}: {why}",
                              "set it to 'auto' to use the fastest available backend")
        chosen = requested
    else:
        raise OptimlError(where, f"unknown backend '{requested}'",
                          f"use one of: auto, {', '.join(ALL_BACKENDS[kernel])}")
    log_once((kernel, requested, device.type),
             f"{kernel}: using the {chosen} backend on {device.type} (requested: {requested})")
    return chosen


def resolve_all(kernels_cfg, device: torch.device | str) -> dict[str, str]:
    """Resolve (and log) every kernel of a recipe's `kernels:` section at start-up."""
    return {k: resolve(k, getattr(kernels_cfg, k), device) for k in ALL_BACKENDS}


# Process-wide backend requests, set once from the recipe so call sites need not thread them.
_defaults = {k: "auto" for k in ALL_BACKENDS}


def configure(kernels_cfg, device: torch.device | str | None = None) -> dict[str, str]:
    """Adopt a recipe's `kernels:` section as the default for calls that pass backend=None.

    With a device, also resolves (and logs) every choice now, so mistakes surface at start-up.
    """
    for k in ALL_BACKENDS:
        _defaults[k] = getattr(kernels_cfg, k)
    return resolve_all(kernels_cfg, device) if device is not None else {}


def requested_backend(kernel: str, backend: str | None) -> str:
    return _defaults[kernel] if backend is None else backend
