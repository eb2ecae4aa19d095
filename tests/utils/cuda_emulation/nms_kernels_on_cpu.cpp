// The kernels of csrc/nms_cuda_kernels.cuh, unchanged, compiled for the CPU under cuda_on_cpu.h
// and exposed as C functions (tests/utils/emulated_cuda_nms.py loads them with ctypes and plays
// the host side of csrc/nms_cuda.cu). Build: c++ -std=c++20 -O2 -ffp-contract=off -shared
// -fPIC -I csrc -I tests/utils/cuda_emulation [-DNMS_CUDA_THREADS=N] this_file -o lib.so
#include "cuda_on_cpu.h"
// cuda_on_cpu.h must come first: it defines the CUDA keywords the kernels use
#include "nms_cuda_kernels.cuh"

#include <cstring>
#include <string>

namespace {
std::string last_error;

int finish(const std::string& error) {
  last_error = error;
  return error.empty() ? 0 : 1;
}
}  // namespace

extern "C" {

int emulated_threads_per_block() { return kThreads; }

const char* emulated_last_error() { return last_error.c_str(); }

// nms_kernel<<<1, kThreads>>>; returns 0, or 1 with emulated_last_error() set.
int emulated_nms(const float* x1, const float* x2, const float* area, int n, float iou_threshold,
                 int max_keep, int* suppressed, int64_t* keep_pos, int64_t* count) {
  return finish(cuda_on_cpu::launch(nms_kernel, 1, kThreads, x1, x2, area, n, iou_threshold,
                                    max_keep, suppressed, keep_pos, count));
}

// softnms_kernel<<<num_problems, kThreads>>>; returns 0, or 1 with emulated_last_error() set.
int emulated_softnms(const int64_t* offsets, int num_problems, float* x1, float* x2, float* sc,
                     float* area, int64_t* inds, int* alive, int* hole_slot, int* mover,
                     float* dets, int64_t* counts, float iou_threshold, float sigma,
                     float min_score, int method, int max_keep) {
  return finish(cuda_on_cpu::launch(softnms_kernel, static_cast<unsigned>(num_problems), kThreads,
                                    offsets, x1, x2, sc, area, inds, alive, hole_slot, mover, dets,
                                    counts, iou_threshold, sigma, min_score, method, max_keep));
}

}  // extern "C"
