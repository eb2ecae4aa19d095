// Kernels with the barrier mistakes that cuda_on_cpu.h must report (tests/utils/
// test_nms_cuda_emulated.py): on a GPU each is undefined behaviour that may pass or hang.
#include "cuda_on_cpu.h"

#include <string>

namespace {

// The two halves of the block wait at different __syncthreads calls.
__global__ void split_barrier(int* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Thread 5 skips the barrier and exits; the others wait for it forever.
__global__ void skipped_barrier(int* out) {
  if (threadIdx.x != 5) __syncthreads();
  out[threadIdx.x] = 1;
}

std::string last_error;

}  // namespace

extern "C" const char* run_broken_kernel(int which) {
  int out[64] = {};
  last_error = which == 0 ? cuda_on_cpu::launch(split_barrier, 1, 64, out)
                          : cuda_on_cpu::launch(skipped_barrier, 1, 64, out);
  return last_error.c_str();
}
