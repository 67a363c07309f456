"""Importing Paddle, mapping llmc devices to Paddle places, and choosing kernels.

Paddle is an optional extra (`pip install 'llmc[paddle]'`): it is imported on first use,
never at module import. Before that first import, `cpu_environment` fills what the user
did not set: `MKL_DEBUG_CPU_TYPE=5` on AMD CPUs only (the MKL bundled with Paddle picks its
slow generic code path there: a matmul at 8-16 GFLOP/s instead of ~39, a training step 3-4x
slower; the variable makes MKL take its AVX2 path — on an Intel CPU with AVX-512 it would
*cost* a third: 105 vs 164 GFLOP/s measured), and `OMP_NUM_THREADS` = the cores this
process may use (Paddle's CPU kernels otherwise run on one thread: 164 vs 295 GFLOP/s for
a [1024, 768] x [768, 2048] matmul on 2 cores).

Kernels are chosen from what the device is known to have, never by trying: a CPU fused
kernel that is AVX-512 code kills the process with SIGILL on an AVX2 machine, which no
`try` can catch. `Kernels.report` says which kernel each op kind ran with, and why.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from llmc.compiler.errors import LlmcError

INSTALL = "pip install 'llmc[paddle]'"
DEVICES = ("cpu", "gpu", "npu", "mlu", "iluvatar_gpu")
# The package that gives a Paddle build each device (custom devices are plugins).
DEVICE_PACKAGES = {
    "gpu": "paddlepaddle-gpu",
    "npu": "paddle-custom-npu",
    "mlu": "paddle-custom-mlu",
    "iluvatar_gpu": "paddle-iluvatar-gpu",
}
CUSTOM_DEVICES = ("npu", "mlu", "iluvatar_gpu")


def import_paddle():
    """The paddle module (its CPU environment set first, see the module doc), or an
    LlmcError saying how to install it."""
    for key, value in cpu_environment().items():
        os.environ.setdefault(key, value)
    try:
        with warnings.catch_warnings():
            # Paddle's import warns about ccache (used only to build C++ extensions): noise
            # that would turn a one-line user error into two lines
            warnings.filterwarnings("ignore", message="No ccache found")
            import paddle
    except ImportError:
        raise LlmcError(f"the Paddle runtime needs paddlepaddle: {INSTALL}") from None
    return paddle


def cpu_vendor() -> str:
    """The CPU's vendor id from /proc/cpuinfo (`GenuineIntel`, `AuthenticAMD`), or ''."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_environment(vendor: str | None = None) -> dict[str, str]:
    """The environment Paddle's CPU kernels should start with on this machine (see the
    module doc); `import_paddle` applies each entry the user has not set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env = {"OMP_NUM_THREADS": str(max(1, cores or 1))}
    if (cpu_vendor() if vendor is None else vendor) == "AuthenticAMD":
        env["MKL_DEBUG_CPU_TYPE"] = "5"
    return env


def device_available(paddle, device: str) -> bool:
    """Whether this Paddle build can run on `device`."""
    if device == "cpu":
        return True
    if device == "gpu":
        return bool(paddle.device.is_compiled_with_cuda()) and paddle.device.cuda.device_count() > 0
    return device in paddle.device.get_all_custom_device_type()


def place_for(device: str):
    """Select `device` (cpu|gpu|npu|mlu|iluvatar_gpu, optionally `:index`) in Paddle and
    return its place; a device this build lacks names the package that provides it."""
    paddle = import_paddle()
    kind, _, index = device.partition(":")
    if kind not in DEVICES:
        raise LlmcError(f"--device must be one of {', '.join(DEVICES)}, got '{device}'")
    if not device_available(paddle, kind):
        raise LlmcError(f"device '{kind}' is not available in this Paddle build: install "
                        f"{DEVICE_PACKAGES[kind]}")
    paddle.set_device(device if index or kind == "cpu" else f"{kind}:0")
    return paddle.get_device()


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of the first core (empty where /proc/cpuinfo is missing)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


@dataclass
class Kernels:
    """Which Paddle kernel each op kind runs with on one device.

    `fused_rms_norm`, `fused_rope`: Paddle's incubate fused kernels. `swiglu`: Paddle's
    swiglu kernel. `sdpa`: F.scaled_dot_product_attention. Each is chosen from the device
    (and on CPU from its feature flags); `reasons` holds why for the report."""

    device: str
    fused_rms_norm: bool
    fused_rope: bool
    swiglu: bool
    sdpa: bool
    reasons: dict[str, str] = field(default_factory=dict)
    used: dict[str, str] = field(default_factory=dict)

    def note(self, kind: str, kernel: str, why: str | None = None) -> None:
        """Record that ops of `kind` run with `kernel` (called by the lowerings), and why
        when the lowering knows better than the device choice (e.g. from a dtype)."""
        self.used[kind] = kernel
        if why is not None:
            self.reasons[kind] = why

    def report(self) -> dict[str, str]:
        """op kind → 'kernel (why)' for every op kind lowered so far."""
        return {k: f"{v} ({self.reasons[k]})" if k in self.reasons else v
                for k, v in sorted(self.used.items())}


# Why the inference form's fused ops run as composites, by device (see inference_ops.py).
BLHA_WHY = {
    "cpu": "Paddle registers block_multihead_attention for GPU (f16/bf16) and XPU only",
    "gpu": "Paddle's GPU block_multihead_attention takes f16/bf16 only",
}
LAYER_WHY = ("the ATB whole-layer op is paddle-custom-npu's own, not called: "
             "the layer runs as Paddle ops on the device")
PACKING_WHY = "PaddleNLP's packing ops are CUDA custom ops (paddlenlp_ops), not Paddle's"


def inference_reasons(kind: str) -> dict[str, str]:
    """Why the inference form's fused ops run as composites on device `kind`."""
    blha = BLHA_WHY.get(kind, f"Paddle has no block_multihead_attention kernel for {kind}")
    return {"block_multihead_attention": blha, "fused_blha_layer": LAYER_WHY,
            **{k: PACKING_WHY for k in ("get_padding_offset", "remove_padding",
                                        "rebuild_padding")}}


def cpu_norm_choice(flags: frozenset[str], inference: bool) -> tuple[bool, str]:
    """(use Paddle's CPU fused_rms_norm, why): its kernel is AVX-512F code (SIGILL without
    avx512f) and has no backward, so only inference on an avx512f CPU uses it."""
    if "avx512f" not in flags:
        return False, ("Paddle's CPU fused_rms_norm is AVX-512 code (SIGILL here: no avx512f)"
                       + ("" if inference else " and has no backward"))
    if inference:
        return True, "Paddle's CPU rms_norm kernel is AVX-512F code; this CPU has avx512f"
    return False, "Paddle's CPU fused_rms_norm has no backward kernel"


def choose_kernels(device: str, flags: frozenset[str] | None = None, *,
                   inference: bool = False) -> Kernels:
    """The kernel choice for `device` (cpu|gpu|npu|mlu|iluvatar_gpu); `flags` are the CPU's
    feature flags (read from /proc/cpuinfo when None). `inference`: no backward is needed,
    so forward-only kernels qualify."""
    kind = device.partition(":")[0]
    if kind != "cpu":
        reasons = {k: f"{kind} kernel" for k in ("rms_norm", "rope", "attention")}
        return Kernels(kind, fused_rms_norm=True, fused_rope=True, swiglu=True, sdpa=True,
                       reasons={**reasons, **inference_reasons(kind)})
    flags = cpu_flags() if flags is None else flags
    fused_norm, norm_why = cpu_norm_choice(flags, inference)
    return Kernels("cpu", fused_rms_norm=fused_norm, fused_rope=False, swiglu=True, sdpa=True,
                   reasons={"rms_norm": norm_why, "add_rms_norm": norm_why,
                            "lm_head": norm_why, "fused_rms_norm": norm_why,
                            "rope": "fused_rotary_position_embedding has no CPU kernel",
                            "fused_bias_act": "Paddle's fused_bias_act has no CPU kernel",
                            **inference_reasons("cpu")})
