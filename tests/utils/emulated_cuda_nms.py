"""The CUDA NMS kernels run on the CPU: csrc/nms_cuda_kernels.cuh compiled with the CUDA stand-in
of tests/utils/cuda_emulation (one fiber per CUDA thread, checked barriers, emulated warp
shuffles) and called through ctypes.

``EmulatedCudaNms`` has the functions of ``libs.utils._nms_cuda`` (``nms``, ``softnms``,
``softnms_batched``) with the same arguments and results, for CPU tensors; each plays the host
side of csrc/nms_cuda.cu step by step in PyTorch (the CPU sort, the working arrays, the
``+ 1e-6`` areas) and launches the kernel. Scratch buffers the host leaves uninitialised
(``at::empty``) are filled with garbage, so a kernel that read one before writing it would show.
This tests the kernels' parallel decomposition (argmax, scans, compaction, barriers) on machines
without a GPU; what it cannot test is nvcc's code generation and the real launch.
"""
import ctypes
import os
import shutil
import subprocess
from typing import Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SOURCE = os.path.join(HERE, "cuda_emulation", "nms_kernels_on_cpu.cpp")
GARBAGE_INT = -123456789  # the value of scratch the host leaves uninitialised


def find_compiler() -> str:
    """``$CXX``, else ``c++`` or ``g++`` on the PATH; "" when there is none."""
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or ""


def compile_library(source: str, library: str, compiler: str, defines=()) -> str:
    """Compile ``source`` (which includes cuda_on_cpu.h and the kernels) into a shared library;
    ``$EMULATED_CUDA_CFLAGS`` adds flags (an AddressSanitizer build: see tests/README.md)."""
    command = [
        compiler, "-std=c++20", "-O2", "-ffp-contract=off", "-shared", "-fPIC",
        "-I", os.path.join(HERE, "cuda_emulation"), "-I", os.path.join(ROOT, "csrc"),
        *(f"-D{define}" for define in defines), *os.environ.get("EMULATED_CUDA_CFLAGS", "").split(),
        source, "-o", library,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"compiling {source} failed:\n{' '.join(command)}\n{done.stderr}")
    return library


def build(threads: int, out_dir: str, compiler: str) -> "EmulatedCudaNms":
    """Compile the kernels with ``threads`` threads per block into ``out_dir`` and load them."""
    library = os.path.join(out_dir, f"nms_kernels_on_cpu_{threads}.so")
    return EmulatedCudaNms(compile_library(SOURCE, library, compiler, [f"NMS_CUDA_THREADS={threads}"]))


def _ptr(tensor: torch.Tensor) -> ctypes.c_void_p:
    if not tensor.is_contiguous():
        raise ValueError("the emulated kernels take contiguous tensors")
    return ctypes.c_void_p(tensor.data_ptr())


class EmulatedCudaNms:
    """``libs.utils._nms_cuda``'s functions over the emulated kernels (CPU float32 tensors)."""

    def __init__(self, library: str):
        self._lib = ctypes.CDLL(library)
        self._lib.emulated_last_error.restype = ctypes.c_char_p
        self.threads = self._lib.emulated_threads_per_block()

    def _check(self, status: int) -> None:
        if status != 0:
            raise RuntimeError(f"emulated kernel: {self._lib.emulated_last_error().decode()}")

    def nms(self, segs: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int = -1) -> torch.Tensor:
        """The host side of ``nms_cuda``: kept input indices in descending score order."""
        n = segs.shape[0]
        if n == 0:
            return torch.empty(0, dtype=torch.long)
        order = scores.contiguous().sort(0, descending=True)[1]
        ordered = segs.index_select(0, order)
        x1, x2 = ordered[:, 0].contiguous(), ordered[:, 1].contiguous()
        area = (x2 - x1 + 1e-6).contiguous()
        suppressed = torch.zeros(n, dtype=torch.int32)
        keep_pos = torch.full((n,), GARBAGE_INT, dtype=torch.long)
        count = torch.zeros(1, dtype=torch.long)
        self._check(self._lib.emulated_nms(
            _ptr(x1), _ptr(x2), _ptr(area), ctypes.c_int(n), ctypes.c_float(iou_threshold),
            ctypes.c_int(max_keep), _ptr(suppressed), _ptr(keep_pos), _ptr(count)))
        return order.index_select(0, keep_pos[: int(count)])

    def softnms_batched(self, segs, scores, offsets, iou_threshold, sigma, min_score, method=2, max_keep=-1):
        """The host side of ``softnms_batched_cuda``: (dets (N, 3), local inds (N,), counts (B,))."""
        n, num_problems = segs.shape[0], offsets.shape[0] - 1
        x1, x2 = segs[:, 0].contiguous().clone(), segs[:, 1].contiguous().clone()
        sc = scores.contiguous().clone()
        area = (x2 - x1 + 1e-6).contiguous()
        inds = torch.full((n,), GARBAGE_INT, dtype=torch.long)
        alive, hole_slot, mover = (torch.full((n,), GARBAGE_INT, dtype=torch.int32) for _ in range(3))
        dets = torch.zeros(n, 3)
        counts = torch.zeros(num_problems, dtype=torch.long)
        if num_problems == 0 or n == 0:
            return dets, inds, counts
        offsets = offsets.contiguous()
        self._check(self._lib.emulated_softnms(
            _ptr(offsets), ctypes.c_int(num_problems), _ptr(x1), _ptr(x2), _ptr(sc), _ptr(area),
            _ptr(inds), _ptr(alive), _ptr(hole_slot), _ptr(mover), _ptr(dets), _ptr(counts),
            ctypes.c_float(iou_threshold), ctypes.c_float(sigma), ctypes.c_float(min_score),
            ctypes.c_int(method), ctypes.c_int(max_keep)))
        return dets, inds, counts

    def softnms(self, segs, scores, iou_threshold, sigma, min_score, method=2, max_keep=-1) -> Tuple[torch.Tensor, torch.Tensor]:
        """One problem, like ``_nms_cuda.softnms``: (dets (n, 3), inds (n,)) in selection order."""
        offsets = torch.tensor([0, segs.shape[0]], dtype=torch.long)
        dets, inds, counts = self.softnms_batched(segs, scores, offsets, iou_threshold, sigma, min_score, method, max_keep)
        count = int(counts[0])
        return dets[:count], inds[:count]
