// The device code of the CUDA NMS (nms_cuda.cu launches it): one thread block per problem.
//
// Both algorithms are sequential in their selections; a block runs that loop and parallelises
// the work inside one selection over the candidates: the argmax (ties -> lowest position, like
// the reference's strict `<` scan), the IoU decay, and the reference's end-to-hole removal, which
// is a two-pointer compaction: removed entries in front of the new length ("holes", ascending)
// receive the surviving entries behind it in descending position order. Block-wide scans give
// each hole and each mover its rank. The float arithmetic follows the CPU code operation by
// operation (built with --fmad=false; IEEE division); the gaussian weight is exp in double
// rounded to float.
//
// Device code only, with no CUDA header: tests/utils/cuda_emulation compiles this file for the
// CPU, one fiber per CUDA thread, so the kernels' logic is tested on machines without a GPU.
#pragma once

#include <climits>
#include <cmath>
#include <cstdint>

namespace {

#ifndef NMS_CUDA_THREADS
#define NMS_CUDA_THREADS 256
#endif
constexpr int kThreads = NMS_CUDA_THREADS;  // threads per block, a multiple of the warp size
static_assert(kThreads % 32 == 0 && kThreads <= 1024,
              "NMS_CUDA_THREADS must be a multiple of 32, at most 1024");
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

// std::max / std::min semantics (NaN handling included), kept segment first.
__device__ __forceinline__ float ref_max(float a, float b) { return (a < b) ? b : a; }
__device__ __forceinline__ float ref_min(float a, float b) { return (b < a) ? b : a; }

__device__ __forceinline__ float overlap(float ax1, float ax2, float aarea, float bx1, float bx2,
                                         float barea) {
  const float xx1 = ref_max(ax1, bx1);
  const float xx2 = ref_min(ax2, bx2);
  const float inter = ref_max(0.0f, __fsub_rn(xx2, xx1));
  return __fdiv_rn(inter, __fsub_rn(__fadd_rn(aarea, barea), inter));
}

// (score, pos) a beats b: higher score, or the same score at a lower position.
__device__ __forceinline__ bool beats(float a_score, int a_pos, float b_score, int b_pos) {
  return a_score > b_score || (a_score == b_score && a_pos < b_pos);
}

// Warp-wide argmax of (score, pos): lane 0 ends with the warp's best; all 32 lanes call it.
__device__ __forceinline__ void warp_argmax(float& score, int& pos) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other_score = __shfl_down_sync(kFullMask, score, offset);
    const int other_pos = __shfl_down_sync(kFullMask, pos, offset);
    if (beats(other_score, other_pos, score, pos)) {
      score = other_score;
      pos = other_pos;
    }
  }
}

// Block-wide argmax of (score, pos); every thread of the block must call it.
__device__ int block_argmax(float score, int pos, float* s_score, int* s_pos) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  warp_argmax(score, pos);
  if (lane == 0) {
    s_score[warp] = score;
    s_pos[warp] = pos;
  }
  __syncthreads();
  if (warp == 0) {
    score = lane < kWarps ? s_score[lane] : -INFINITY;
    pos = lane < kWarps ? s_pos[lane] : INT_MAX;
    warp_argmax(score, pos);
    if (lane == 0) s_pos[0] = pos;
  }
  __syncthreads();
  const int result = s_pos[0];
  __syncthreads();  // s_pos is reused by the next call
  return result;
}

// Block-wide exclusive prefix sum of `value`; `total` receives the sum. All threads call it.
__device__ int block_exclusive_scan(int value, int* s_warp, int* total) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  int inclusive = value;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int other = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  if (lane == 31) s_warp[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int warp_sum = lane < kWarps ? s_warp[lane] : 0;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int other = __shfl_up_sync(kFullMask, warp_sum, offset);
      if (lane >= offset) warp_sum += other;
    }
    if (lane < kWarps) s_warp[lane] = warp_sum;  // inclusive over warps
  }
  __syncthreads();
  const int before = (warp > 0 ? s_warp[warp - 1] : 0) + inclusive - value;
  *total = s_warp[kWarps - 1];
  __syncthreads();  // s_warp is reused by the next call
  return before;
}

// One block per problem b: candidates [offsets[b], offsets[b + 1]) of the flat arrays. The
// working arrays x1, x2, sc, area, inds are reordered in place; alive / hole_slot / mover are
// scratch of the same length. Writes dets rows (start, end, score) of the selections and
// counts[b] = number of selections; inds ends up holding problem-local input indices.
__global__ void softnms_kernel(const int64_t* __restrict__ offsets, float* x1, float* x2, float* sc,
                               float* area, int64_t* inds, int* alive, int* hole_slot, int* mover,
                               float* __restrict__ dets, int64_t* __restrict__ counts,
                               float iou_threshold, float sigma, float min_score, int method,
                               int max_keep) {
  __shared__ float s_score[kWarps];
  __shared__ int s_pos[kWarps];
  __shared__ int s_warp[kWarps];
  const int64_t base = offsets[blockIdx.x];
  x1 += base;
  x2 += base;
  sc += base;
  area += base;
  inds += base;
  alive += base;
  hole_slot += base;
  mover += base;
  dets += 3 * base;
  int n = static_cast<int>(offsets[blockIdx.x + 1] - base);
  const int limit = (max_keep > 0 && max_keep < n) ? max_keep : n;
  for (int p = threadIdx.x; p < n; p += kThreads) inds[p] = p;  // index local to the problem
  __syncthreads();

  int i = 0;
  for (; i < n && i < limit; ++i) {
    // 1. first maximum of sc[i..n-1]; NaN never wins unless it is at i (strict `<` scan)
    float best_score = -INFINITY;
    int best_pos = INT_MAX;
    for (int p = i + threadIdx.x; p < n; p += kThreads) {
      float key = sc[p];
      if (isnan(key)) key = (p == i) ? INFINITY : -INFINITY;
      if (beats(key, p, best_score, best_pos)) {
        best_score = key;
        best_pos = p;
      }
    }
    const int m = block_argmax(best_score, best_pos, s_score, s_pos);

    // 2. swap entries i and m; emit the selection
    if (threadIdx.x == 0) {
      float t = x1[i]; x1[i] = x1[m]; x1[m] = t;
      t = x2[i]; x2[i] = x2[m]; x2[m] = t;
      t = sc[i]; sc[i] = sc[m]; sc[m] = t;
      t = area[i]; area[i] = area[m]; area[m] = t;
      const int64_t k = inds[i]; inds[i] = inds[m]; inds[m] = k;
      dets[3 * i + 0] = x1[i];
      dets[3 * i + 1] = x2[i];
      dets[3 * i + 2] = sc[i];
    }
    __syncthreads();

    // 3. decay every later entry and flag the survivors
    const float ix1 = x1[i], ix2 = x2[i], iarea = area[i];
    const int lo = i + 1;
    for (int p = lo + threadIdx.x; p < n; p += kThreads) {
      const float ovr = overlap(ix1, ix2, iarea, x1[p], x2[p], area[p]);
      float weight = 1.0f;
      if (method == 0) {
        if (ovr >= iou_threshold) weight = 0.0f;
      } else if (method == 1) {
        if (ovr >= iou_threshold) weight = __fsub_rn(1.0f, ovr);
      } else {
        const float exponent = __fdiv_rn(-__fmul_rn(ovr, ovr), sigma);
        weight = static_cast<float>(exp(static_cast<double>(exponent)));
      }
      const float decayed = __fmul_rn(sc[p], weight);
      sc[p] = decayed;
      alive[p] = (decayed < min_score) ? 0 : 1;
    }
    __syncthreads();

    // 4. compaction: count survivors, rank holes (ascending) and movers (descending), copy
    int num_alive = 0;
    for (int chunk = lo; chunk < n; chunk += kThreads) {
      const int p = chunk + threadIdx.x;
      int chunk_total;
      block_exclusive_scan(p < n ? alive[p] : 0, s_warp, &chunk_total);
      num_alive += chunk_total;
    }
    const int front_end = lo + num_alive;  // the new length n
    int holes = 0;
    for (int chunk = lo; chunk < front_end; chunk += kThreads) {
      const int p = chunk + threadIdx.x;
      const int is_hole = (p < front_end && !alive[p]) ? 1 : 0;
      int chunk_total;
      const int rank = block_exclusive_scan(is_hole, s_warp, &chunk_total);
      if (is_hole) hole_slot[lo + holes + rank] = p;
      holes += chunk_total;
    }
    int movers = 0;
    for (int chunk = 0; chunk < n - front_end; chunk += kThreads) {
      const int p = n - 1 - (chunk + threadIdx.x);  // walking down from the end
      const int is_mover = (p >= front_end && alive[p]) ? 1 : 0;
      int chunk_total;
      const int rank = block_exclusive_scan(is_mover, s_warp, &chunk_total);
      if (is_mover) mover[lo + movers + rank] = p;
      movers += chunk_total;
    }
    __syncthreads();
    for (int r = threadIdx.x; r < holes; r += kThreads) {  // holes == movers
      const int dst = hole_slot[lo + r];
      const int src = mover[lo + r];
      x1[dst] = x1[src];
      x2[dst] = x2[src];
      sc[dst] = sc[src];
      area[dst] = area[src];
      inds[dst] = inds[src];
    }
    n = front_end;
    __syncthreads();
  }
  if (threadIdx.x == 0) counts[blockIdx.x] = i;
}

// Hard NMS of one problem whose candidates are already in descending score order: the greedy
// loop over positions, the suppression of later candidates done by the whole block.
__global__ void nms_kernel(const float* __restrict__ x1, const float* __restrict__ x2,
                           const float* __restrict__ area, int n, float iou_threshold,
                           int max_keep, int* suppressed, int64_t* keep_pos,
                           int64_t* __restrict__ count) {
  int kept = 0;
  const int limit = (max_keep > 0 && max_keep < n) ? max_keep : n;
  for (int a = 0; a < n && kept < limit; ++a) {
    if (suppressed[a]) continue;  // uniform: every thread reads the same synchronised flag
    if (threadIdx.x == 0) keep_pos[kept] = a;
    ++kept;
    for (int b = a + 1 + threadIdx.x; b < n; b += kThreads) {
      if (!suppressed[b] && overlap(x1[a], x2[a], area[a], x1[b], x2[b], area[b]) >= iou_threshold)
        suppressed[b] = 1;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) *count = kept;
}

}  // namespace
