"""Whether bf16 pays off here. CPUs without native bf16 arithmetic (AVX512-BF16, AMX or Arm's BF16
extension) emulate it, many times slower than fp32: there, a run asked to use bf16 trains in fp32.

``CHATFORGE_CPU_BF16=1`` (or ``0``) overrides the measurement: CPU runs asked for bf16 then train in bf16
(or fp32) whatever the CPU, e.g. to reproduce on any machine what a CPU with native bf16 computes."""

import functools
import os
import time
import warnings

import torch
from accelerate.utils import parse_flag_from_env

from ..errors import InvalidValue

CPU_BF16_ENV = "CHATFORGE_CPU_BF16"


def cpu_bf16_is_slow() -> bool:
    """Whether this CPU emulates bf16: ``CHATFORGE_CPU_BF16`` when set, else :func:`measured_bf16_is_slow`."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "0"
    if forced:
        raise InvalidValue(f"{CPU_BF16_ENV}={forced!r}: expected 1 (train in bf16 on the CPU) or 0 (in fp32)")
    return measured_bf16_is_slow()


@functools.cache
def measured_bf16_is_slow(size: int = 256, repeats: int = 4) -> bool:
    """Whether a bf16 matrix product takes more than twice as long as an fp32 one on this CPU (measured once
    per process, without touching the random state)."""
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        matrix = torch.full((size, size), 0.5, dtype=dtype)
        matrix @ matrix
        start = time.perf_counter()
        for _ in range(repeats):
            matrix @ matrix
        seconds[dtype] = time.perf_counter() - start
    return seconds[torch.bfloat16] > 2 * seconds[torch.float32]


def keep_bf16(requested: bool, on_cpu: bool) -> bool:
    """``requested``, unless the run is on a CPU that emulates bf16: then a warning (naming the code that called
    :func:`mixed_precision` or :func:`fit_precision`), and False (fp32)."""
    if requested and on_cpu and cpu_bf16_is_slow():
        warnings.warn("bf16 was asked for, but this CPU has no native bf16 arithmetic (AVX512-BF16, AMX) and "
                      "emulates it many times slower than fp32: training in fp32", stacklevel=3)
        return False
    return requested


def on_cpu(use_cpu: bool = False) -> bool:
    """Whether a run computes on the CPU: asked to (here or by ``accelerate launch --cpu``), or for want of an
    accelerator."""
    return use_cpu or parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available()


def mixed_precision(bf16: bool, use_cpu: bool = False) -> str:
    """Accelerate's ``mixed_precision`` for a run asked for ``bf16``: ``"bf16"`` where :func:`keep_bf16` keeps
    it, else ``"no"``."""
    return "bf16" if keep_bf16(bf16, on_cpu(use_cpu)) else "no"


def fit_precision(args) -> None:
    """Set a ``TrainingArguments`` (TRL configs included) to fp32 where :func:`keep_bf16` says so."""
    if args.bf16 and not keep_bf16(True, on_cpu(args.use_cpu)):
        args.bf16, args.mixed_precision = False, "no"
