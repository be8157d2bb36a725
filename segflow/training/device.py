"""Device, mixed precision, seeding: the machine-facing choices of a training run."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch


def resolve_device(requested: str, field: str = "device") -> torch.device:
    """"auto" → the first GPU if there is one, else CPU. Asking for CUDA on a machine without it is
    an error up front rather than a crash at the first batch."""
    requested = (requested or "auto").strip().lower()
    if requested.startswith("gpu"):  # configs and --device take gpu / gpu:N for cuda / cuda:N
        requested = "cuda" + requested[3:]
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{field} is {requested!r} but this machine has no CUDA device (torch "
                             f"{torch.__version__}); run with --device cpu, or set \"device\": \"auto\"")
        dev = torch.device(requested)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{field} is {requested!r} but this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
        return dev
    if requested == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"{field} is 'mps' but MPS is not available here; use --device cpu or \"auto\"")
        return torch.device("mps")
    if requested == "cpu":
        return torch.device("cpu")
    raise ValueError(f"{field} {requested!r} is not one of auto, cpu, cuda, cuda:N, mps (Apple GPUs)")


@dataclass(frozen=True)
class Precision:
    enabled: bool
    dtype: torch.dtype | None
    scaler: bool  # fp16 needs a gradient scaler against underflow; bf16 does not

    def describe(self) -> str:
        if not self.enabled:
            return "fp32"
        return "bf16 autocast" if self.dtype == torch.bfloat16 else "fp16 autocast + GradScaler"


def resolve_precision(setting: bool | str, device: torch.device, log=print) -> Precision:
    """true → bf16 where the GPU supports it, else fp16 with a scaler; on CPU `true` stays fp32
    (bf16 autocast on CPUs without bf16 units is slower than fp32) while an explicit "bf16" is honoured.
    "auto" (the default) → bf16 on GPUs that support it, fp32 everywhere else: bf16 keeps fp32's
    range, so it needs no scaler and cannot underflow the way fp16 can; auto never picks fp16."""
    off = Precision(False, None, False)
    if setting is False or setting == "false":
        return off
    if setting == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return Precision(True, torch.bfloat16, False)
        return off
    if device.type == "cuda":
        if setting == "fp16":
            return Precision(True, torch.float16, True)
        if setting == "bf16" or torch.cuda.is_bf16_supported():
            return Precision(True, torch.bfloat16, False)
        return Precision(True, torch.float16, True)
    if setting == "bf16":
        return Precision(True, torch.bfloat16, False)
    log(f"mixed_precision {setting!r}: needs a CUDA device; training in fp32 on {device.type}")
    return off


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        # cuBLAS needs this to be reproducible; it only takes effect before the first CUDA matmul
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
