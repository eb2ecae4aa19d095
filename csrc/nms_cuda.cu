// 1-D hard NMS and soft NMS on CUDA: the host side, which prepares the working arrays and
// launches the kernels of nms_cuda_kernels.cuh (one thread block per problem).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <climits>
#include <tuple>

#include "nms_cuda_kernels.cuh"

// Hard NMS: int64 (K,) input indices kept, by descending score. The order is computed on the CPU
// with torch's sort so that exactly tied scores come out as in the CPU backends.
at::Tensor nms_cuda(const at::Tensor& segs, const at::Tensor& scores, double iou_threshold,
                    int64_t max_keep) {
  const c10::cuda::CUDAGuard guard(segs.device());
  const int64_t n = segs.size(0);
  auto long_opts = segs.options().dtype(at::kLong);
  if (n == 0) return at::empty({0}, long_opts);
  TORCH_CHECK(n < INT_MAX, "_nms_cuda.nms: too many segments: ", n);
  const at::Tensor order =
      std::get<1>(scores.cpu().contiguous().sort(0, /*descending=*/true)).to(segs.device());
  const at::Tensor sorted = segs.index_select(0, order);  // (N, 2) in score order
  const at::Tensor x1 = sorted.select(1, 0).contiguous();
  const at::Tensor x2 = sorted.select(1, 1).contiguous();
  const at::Tensor area = (x2 - x1 + 1e-6).contiguous();
  at::Tensor suppressed = at::zeros({n}, segs.options().dtype(at::kInt));
  at::Tensor keep_pos = at::empty({n}, long_opts);
  at::Tensor count = at::zeros({1}, long_opts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  nms_kernel<<<1, kThreads, 0, stream>>>(
      x1.data_ptr<float>(), x2.data_ptr<float>(), area.data_ptr<float>(), static_cast<int>(n),
      static_cast<float>(iou_threshold), static_cast<int>(max_keep), suppressed.data_ptr<int>(),
      keep_pos.data_ptr<int64_t>(), count.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t kept = count.item<int64_t>();
  return order.index_select(0, keep_pos.narrow(0, 0, kept));
}

// Soft NMS of B problems at once (offsets (B + 1,) int64 on the device, the flat candidate
// ranges). Returns dets float32 (N, 3) and inds int64 (N,) (indices local to each problem), whose
// first counts[b] rows from offsets[b] are problem b's selections, and counts int64 (B,).
std::tuple<at::Tensor, at::Tensor, at::Tensor> softnms_batched_cuda(
    const at::Tensor& segs, const at::Tensor& scores, const at::Tensor& offsets,
    double iou_threshold, double sigma, double min_score, int64_t method, int64_t max_keep) {
  const c10::cuda::CUDAGuard guard(segs.device());
  const int64_t n = segs.size(0);
  const int64_t num_problems = offsets.size(0) - 1;
  TORCH_CHECK(n < INT_MAX, "_nms_cuda.softnms: too many segments: ", n);
  at::Tensor x1 = segs.select(1, 0).contiguous().clone();
  at::Tensor x2 = segs.select(1, 1).contiguous().clone();
  at::Tensor sc = scores.contiguous().clone();
  at::Tensor area = (x2 - x1 + 1e-6).contiguous();
  at::Tensor inds = at::empty({n}, segs.options().dtype(at::kLong));  // set by the kernel
  auto int_opts = segs.options().dtype(at::kInt);
  at::Tensor alive = at::empty({n}, int_opts);
  at::Tensor hole_slot = at::empty({n}, int_opts);
  at::Tensor mover = at::empty({n}, int_opts);
  at::Tensor dets = at::zeros({n, 3}, segs.options());
  at::Tensor counts = at::zeros({num_problems}, segs.options().dtype(at::kLong));
  if (num_problems == 0 || n == 0) return std::make_tuple(dets, inds, counts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  softnms_kernel<<<static_cast<unsigned>(num_problems), kThreads, 0, stream>>>(
      offsets.data_ptr<int64_t>(), x1.data_ptr<float>(), x2.data_ptr<float>(), sc.data_ptr<float>(),
      area.data_ptr<float>(), inds.data_ptr<int64_t>(), alive.data_ptr<int>(),
      hole_slot.data_ptr<int>(), mover.data_ptr<int>(), dets.data_ptr<float>(),
      counts.data_ptr<int64_t>(), static_cast<float>(iou_threshold), static_cast<float>(sigma),
      static_cast<float>(min_score), static_cast<int>(method),
      static_cast<int>(max_keep > INT_MAX ? INT_MAX : max_keep));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return std::make_tuple(dets, inds, counts);
}
