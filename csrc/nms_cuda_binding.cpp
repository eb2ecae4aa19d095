// Python binding of the CUDA NMS kernels (nms_cuda.cu): the extension libs.utils._nms_cuda.
// Same functions and results as libs.utils._nms_cpu, for float32 CUDA tensors.
#include <torch/extension.h>

#include <tuple>

at::Tensor nms_cuda(const at::Tensor& segs, const at::Tensor& scores, double iou_threshold,
                    int64_t max_keep);
std::tuple<at::Tensor, at::Tensor, at::Tensor> softnms_batched_cuda(
    const at::Tensor& segs, const at::Tensor& scores, const at::Tensor& offsets,
    double iou_threshold, double sigma, double min_score, int64_t method, int64_t max_keep);

namespace {

void check_inputs(const at::Tensor& segs, const at::Tensor& scores) {
  TORCH_CHECK(segs.is_cuda() && scores.is_cuda(), "_nms_cuda: segs and scores must be CUDA tensors");
  TORCH_CHECK(segs.device() == scores.device(), "_nms_cuda: segs and scores on different devices");
  TORCH_CHECK(segs.scalar_type() == at::kFloat && scores.scalar_type() == at::kFloat,
              "_nms_cuda: segs and scores must be float32, got ", segs.scalar_type(), " / ",
              scores.scalar_type());
  TORCH_CHECK(segs.dim() == 2 && segs.size(1) == 2, "_nms_cuda: segs must be (N, 2), got ",
              segs.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == segs.size(0),
              "_nms_cuda: scores must be (N,) with N = ", segs.size(0), ", got ", scores.sizes());
}

void check_method(int64_t method) {
  TORCH_CHECK(method >= 0 && method <= 2, "_nms_cuda.softnms: method must be 0, 1 or 2, got ",
              method);
}

}  // namespace

at::Tensor nms(const at::Tensor& segs, const at::Tensor& scores, double iou_threshold,
               int64_t max_keep) {
  check_inputs(segs, scores);
  return nms_cuda(segs.contiguous(), scores.contiguous(), iou_threshold, max_keep);
}

// Several problems at once, one thread block each: offsets (B + 1,) int64 delimit them.
std::tuple<at::Tensor, at::Tensor, at::Tensor> softnms_batched(
    const at::Tensor& segs, const at::Tensor& scores, const at::Tensor& offsets,
    double iou_threshold, double sigma, double min_score, int64_t method, int64_t max_keep) {
  check_inputs(segs, scores);
  check_method(method);
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1 && offsets.scalar_type() == at::kLong,
              "_nms_cuda.softnms_batched: offsets must be int64 (B + 1,)");
  const at::Tensor offsets_dev = offsets.to(segs.device()).contiguous();
  return softnms_batched_cuda(segs, scores, offsets_dev, iou_threshold, sigma, min_score, method,
                              max_keep);
}

// One problem: (dets (n, 3), inds (n,)) in selection order, like _nms_cpu.softnms.
std::tuple<at::Tensor, at::Tensor> softnms(const at::Tensor& segs, const at::Tensor& scores,
                                           double iou_threshold, double sigma, double min_score,
                                           int64_t method, int64_t max_keep) {
  check_inputs(segs, scores);
  check_method(method);
  const at::Tensor offsets = at::tensor({int64_t{0}, segs.size(0)}, at::kLong);
  auto result = softnms_batched(segs, scores, offsets, iou_threshold, sigma, min_score, method,
                                max_keep);
  const int64_t count = std::get<2>(result).item<int64_t>();
  return std::make_tuple(std::get<0>(result).narrow(0, 0, count),
                         std::get<1>(result).narrow(0, 0, count));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "1-D hard and soft NMS on CUDA (float32), matching libs.utils._nms_cpu";
  m.def("nms", &nms, "hard NMS: kept indices in descending score order", py::arg("segs"),
        py::arg("scores"), py::arg("iou_threshold"), py::arg("max_keep") = -1);
  m.def("softnms", &softnms, "soft NMS: (dets (n, 3), inds (n,)) in selection order",
        py::arg("segs"), py::arg("scores"), py::arg("iou_threshold"), py::arg("sigma"),
        py::arg("min_score"), py::arg("method") = 2, py::arg("max_keep") = -1);
  m.def("softnms_batched", &softnms_batched,
        "soft NMS of B problems (one block each): (dets (N, 3), local inds (N,), counts (B,))",
        py::arg("segs"), py::arg("scores"), py::arg("offsets"), py::arg("iou_threshold"),
        py::arg("sigma"), py::arg("min_score"), py::arg("method") = 2, py::arg("max_keep") = -1);
}
