// 1-D hard NMS and soft NMS on float32 CPU tensors: the extension libs.utils._nms_cpu.
//
// The loops reproduce the GroundNLQ/ActionFormer reference bit for bit (spec section 7): the same
// float32 operation order, the same tie-breaking (torch's unstable descending sort for hard NMS;
// the first maximum of the current working array for soft NMS) and the same end-to-hole removal
// that reorders that array. `max_keep` stops after that many selections, which returns exactly the
// first rows of the full run (selected scores are non-increasing).
// ATen and torch's pybind casters only: half the compile time of <torch/extension.h>
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

namespace {

constexpr double kAreaEps = 1e-6;  // added to every length, as the reference does

void check_inputs(const at::Tensor& segs, const at::Tensor& scores) {
  TORCH_CHECK(segs.device().is_cpu() && scores.device().is_cpu(),
              "_nms_cpu: segs and scores must be CPU tensors");
  TORCH_CHECK(segs.scalar_type() == at::kFloat && scores.scalar_type() == at::kFloat,
              "_nms_cpu: segs and scores must be float32, got ", segs.scalar_type(), " / ",
              scores.scalar_type());
  TORCH_CHECK(segs.dim() == 2 && segs.size(1) == 2, "_nms_cpu: segs must be (N, 2), got ",
              segs.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == segs.size(0),
              "_nms_cpu: scores must be (N,) with N = ", segs.size(0), ", got ", scores.sizes());
}

// IoU of segment a with segment b in the reference's order: std::max / std::min with the kept
// segment first, intersection clamped at 0 by std::max (a NaN width becomes 0).
inline float overlap(float ax1, float ax2, float aarea, float bx1, float bx2, float barea) {
  const float xx1 = std::max(ax1, bx1);
  const float xx2 = std::min(ax2, bx2);
  const float inter = std::max(0.0f, xx2 - xx1);
  return inter / (aarea + barea - inter);
}

// Lengths plus epsilon, computed with the same tensor expression as the reference (float32).
std::vector<float> areas_of(const at::Tensor& x1, const at::Tensor& x2) {
  const at::Tensor area = (x2 - x1 + kAreaEps).contiguous();
  const float* p = area.data_ptr<float>();
  return std::vector<float>(p, p + area.numel());
}

std::vector<float> column(const at::Tensor& segs, int64_t c) {
  const at::Tensor col = segs.select(1, c).contiguous();
  const float* p = col.data_ptr<float>();
  return std::vector<float>(p, p + col.numel());
}

}  // namespace

// Hard NMS. Returns int64 (K,): input indices of the kept segments in descending score order.
at::Tensor nms(const at::Tensor& segs, const at::Tensor& scores, double iou_threshold,
               int64_t max_keep) {
  check_inputs(segs, scores);
  const int64_t n = segs.size(0);
  const int64_t limit = max_keep > 0 ? std::min(max_keep, n) : n;
  const float thr = static_cast<float>(iou_threshold);

  const std::vector<float> x1 = column(segs, 0);
  const std::vector<float> x2 = column(segs, 1);
  const std::vector<float> area = areas_of(segs.select(1, 0), segs.select(1, 1));
  // torch's unstable sort, as the reference: it decides the order of exactly tied scores
  const at::Tensor order_t = std::get<1>(scores.contiguous().sort(0, /*descending=*/true));
  const int64_t* order = order_t.data_ptr<int64_t>();

  std::vector<uint8_t> suppressed(n, 0);
  at::Tensor keep_t = at::empty({limit}, segs.options().dtype(at::kLong));
  int64_t* keep = keep_t.data_ptr<int64_t>();
  int64_t kept = 0;
  for (int64_t a = 0; a < n && kept < limit; ++a) {
    const int64_t i = order[a];
    if (suppressed[i]) continue;
    keep[kept++] = i;
    for (int64_t b = a + 1; b < n; ++b) {
      const int64_t j = order[b];
      if (suppressed[j]) continue;
      if (overlap(x1[i], x2[i], area[i], x1[j], x2[j], area[j]) >= thr) suppressed[j] = 1;
    }
  }
  return keep_t.narrow(0, 0, kept).clone();
}

// Soft NMS. method 0: score x 0 when IoU >= thr; 1: x (1 - IoU) when IoU >= thr; 2: x
// exp(-IoU^2 / sigma). Returns dets float32 (n, 3) = (start, end, decayed score) in selection
// order and inds int64 (n,), the input index of each row.
std::tuple<at::Tensor, at::Tensor> softnms(const at::Tensor& segs, const at::Tensor& scores,
                                           double iou_threshold, double sigma, double min_score,
                                           int64_t method, int64_t max_keep) {
  check_inputs(segs, scores);
  TORCH_CHECK(method >= 0 && method <= 2, "_nms_cpu.softnms: method must be 0, 1 or 2, got ",
              method);
  const int64_t n0 = segs.size(0);
  const int64_t limit = max_keep > 0 ? std::min(max_keep, n0) : n0;
  const float thr = static_cast<float>(iou_threshold);
  const float sig = static_cast<float>(sigma);
  const float min_sc = static_cast<float>(min_score);

  // working arrays, reordered in place exactly like the reference's
  std::vector<float> x1 = column(segs, 0);
  std::vector<float> x2 = column(segs, 1);
  std::vector<float> area = areas_of(segs.select(1, 0), segs.select(1, 1));
  const at::Tensor sc_t = scores.contiguous();
  std::vector<float> sc(sc_t.data_ptr<float>(), sc_t.data_ptr<float>() + n0);
  std::vector<int64_t> inds(n0);
  for (int64_t k = 0; k < n0; ++k) inds[k] = k;

  at::Tensor dets_t = at::empty({n0, 3}, segs.options());
  float* dets = dets_t.data_ptr<float>();
  int64_t n = n0;
  int64_t i = 0;
  for (; i < n && i < limit; ++i) {
    // first maximum of sc[i..n-1]: replace only on strictly greater
    int64_t best = i;
    float best_score = sc[i];
    for (int64_t p = i + 1; p < n; ++p) {
      if (best_score < sc[p]) {
        best_score = sc[p];
        best = p;
      }
    }
    std::swap(x1[i], x1[best]);
    std::swap(x2[i], x2[best]);
    std::swap(sc[i], sc[best]);
    std::swap(area[i], area[best]);
    std::swap(inds[i], inds[best]);
    dets[3 * i + 0] = x1[i];
    dets[3 * i + 1] = x2[i];
    dets[3 * i + 2] = sc[i];

    for (int64_t p = i + 1; p < n; ++p) {
      const float ovr = overlap(x1[i], x2[i], area[i], x1[p], x2[p], area[p]);
      float weight = 1.0f;
      if (method == 0) {
        if (ovr >= thr) weight = 0.0f;
      } else if (method == 1) {
        if (ovr >= thr) weight = 1.0f - ovr;
      } else {
        weight = std::exp(-(ovr * ovr) / sig);  // float overload, as the reference
      }
      sc[p] *= weight;
      if (sc[p] < min_sc) {  // remove: the last entry takes its place and is examined next
        x1[p] = x1[n - 1];
        x2[p] = x2[n - 1];
        sc[p] = sc[n - 1];
        area[p] = area[n - 1];
        inds[p] = inds[n - 1];
        --n;
        --p;
      }
    }
  }
  at::Tensor inds_t = at::empty({i}, segs.options().dtype(at::kLong));
  std::copy(inds.begin(), inds.begin() + i, inds_t.data_ptr<int64_t>());
  return std::make_tuple(dets_t.narrow(0, 0, i).clone(), inds_t);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "1-D hard and soft NMS (float32, CPU), matching the GroundNLQ reference";
  m.def("nms", &nms, "hard NMS: kept indices in descending score order", py::arg("segs"),
        py::arg("scores"), py::arg("iou_threshold"), py::arg("max_keep") = -1);
  m.def("softnms", &softnms, "soft NMS: (dets (n, 3), inds (n,)) in selection order",
        py::arg("segs"), py::arg("scores"), py::arg("iou_threshold"), py::arg("sigma"),
        py::arg("min_score"), py::arg("method") = 2, py::arg("max_keep") = -1);
}
