// Channel LayerNorm of (B, C, T) float32 CPU tensors in one read and one write: the extension
// libs.modeling._layer_norm_cpu.
//
// The model keeps features channel-first, so the reference normalises over dim 1 with eight
// elementwise passes (mean, subtract, square, mean, add eps, sqrt, divide, affine), each reading
// and writing the whole tensor. Here each task takes one clip row and a block of kBlock columns:
// C x kBlock floats that stay in cache while the three loops over channels (sum, squared
// deviation, output) run, vectorised along time. Same operations per element as the reference
// ((x - mean) / sqrt(var + eps) * w + b, biased variance); the sums over channels accumulate in
// double, so they are at least as accurate as torch's float32 reductions (outputs agree to an ulp
// or two). No FMA contraction: the products and sums round as the reference's separate kernels do.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>

namespace {

constexpr int64_t kBlock = 64;  // columns per task: C x 64 floats (96 KiB at C = 384) stay in L2

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define LN_TARGETS __attribute__((target_clones("avx2", "default")))
#else
#define LN_TARGETS
#endif

void check(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 3 && x.is_contiguous(),
              "_layer_norm_cpu: x must be a contiguous float32 CPU tensor (B, C, T), got ", x.sizes());
  TORCH_CHECK(weight.numel() == x.size(1) && bias.numel() == x.size(1) && weight.is_contiguous() &&
                  bias.is_contiguous() && weight.scalar_type() == at::kFloat &&
                  bias.scalar_type() == at::kFloat,
              "_layer_norm_cpu: weight and bias must be contiguous float32 with C = ", x.size(1),
              " elements");
}

// One task of the forward pass: columns [t0, t0 + n) of clip row xb (C rows of stride T).
LN_TARGETS
void forward_block(const float* xb, float* ob, const float* w, const float* b, int64_t C, int64_t T,
                   int64_t n, float eps, float* mean_out, float* denom_out) {
  double acc[kBlock];
  float mu[kBlock];
  float den[kBlock];
  for (int64_t i = 0; i < n; ++i) acc[i] = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    const float* row = xb + c * T;
    for (int64_t i = 0; i < n; ++i) acc[i] += row[i];
  }
  for (int64_t i = 0; i < n; ++i) {
    mu[i] = static_cast<float>(acc[i] / C);
    acc[i] = 0.0;
  }
  for (int64_t c = 0; c < C; ++c) {
    const float* row = xb + c * T;
    for (int64_t i = 0; i < n; ++i) {
      const float d = row[i] - mu[i];
      acc[i] += d * d;
    }
  }
  for (int64_t i = 0; i < n; ++i) den[i] = std::sqrt(static_cast<float>(acc[i] / C) + eps);
  for (int64_t c = 0; c < C; ++c) {
    const float* row = xb + c * T;
    float* orow = ob + c * T;
    const float wc = w[c], bc = b[c];
    for (int64_t i = 0; i < n; ++i) orow[i] = (row[i] - mu[i]) / den[i] * wc + bc;
  }
  for (int64_t i = 0; i < n; ++i) {
    mean_out[i] = mu[i];
    denom_out[i] = den[i];
  }
}

// One task of the backward pass. With xh = (x - mean) / denom and g = dy * w:
// dx = (g - mean_c(g) - xh * mean_c(g * xh)) / denom; the task's share of dw (sum of dy * xh) and
// db (sum of dy) goes to its own rows dw_part / db_part (summed by the caller: deterministic).
// The per-channel sums over time run in kLanes independent accumulators, so they vectorise.
constexpr int64_t kLanes = 8;

LN_TARGETS
void backward_block(const float* xb, const float* gb, float* dx_out, const float* w, int64_t C,
                    int64_t T, int64_t n, const float* mean, const float* denom, double* dw_part,
                    double* db_part) {
  double s1[kBlock];
  double s2[kBlock];
  float inv[kBlock];
  float xh[kBlock];
  for (int64_t i = 0; i < n; ++i) {
    s1[i] = s2[i] = 0.0;
    inv[i] = 1.0f / denom[i];
  }
  const int64_t full = n - n % kLanes;
  for (int64_t c = 0; c < C; ++c) {
    const float* row = xb + c * T;
    const float* grow = gb + c * T;
    const float wc = w[c];
    double dw_lanes[kLanes] = {0.0};
    double db_lanes[kLanes] = {0.0};
    for (int64_t i = 0; i < n; ++i) {
      xh[i] = (row[i] - mean[i]) * inv[i];
      const float g = grow[i] * wc;
      s1[i] += g;
      s2[i] += g * xh[i];
    }
    for (int64_t i0 = 0; i0 < full; i0 += kLanes) {
      for (int64_t j = 0; j < kLanes; ++j) {
        dw_lanes[j] += grow[i0 + j] * xh[i0 + j];
        db_lanes[j] += grow[i0 + j];
      }
    }
    for (int64_t i = full; i < n; ++i) {
      dw_lanes[i - full] += grow[i] * xh[i];
      db_lanes[i - full] += grow[i];
    }
    for (int64_t j = 0; j < kLanes; ++j) {
      dw_part[c] += dw_lanes[j];
      db_part[c] += db_lanes[j];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const float* row = xb + c * T;
    const float* grow = gb + c * T;
    float* orow = dx_out + c * T;
    const float wc = w[c];
    for (int64_t i = 0; i < n; ++i) {
      const float h = (row[i] - mean[i]) * inv[i];
      const float mean_g = static_cast<float>(s1[i] / C);
      const float mean_gx = static_cast<float>(s2[i] / C);
      orow[i] = (grow[i] * wc - mean_g - h * mean_gx) * inv[i];
    }
  }
}

int64_t num_blocks(int64_t T) { return (T + kBlock - 1) / kBlock; }

// Runs fn(task, row, t0, n) for every (clip row, block of kBlock columns) on torch's threads; task
// numbers the pairs row-major, so per-task partial sums can be reduced in a fixed order.
template <typename Fn>
void for_each_block(int64_t B, int64_t T, const Fn& fn) {
  const int64_t blocks = num_blocks(T);
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / blocks, t0 = (task % blocks) * kBlock;
      fn(task, row, t0, std::min(kBlock, T - t0));
    }
  });
}

// x (B, C, T) -> (out (B, C, T), mean (B, T), denom = sqrt(var + eps) (B, T))
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& weight,
                                                       const at::Tensor& bias, double eps) {
  check(x, weight, bias);
  const int64_t B = x.size(0), C = x.size(1), T = x.size(2);
  auto out = at::empty_like(x);
  auto mean = at::empty({B, T}, x.options());
  auto denom = at::empty({B, T}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* mp = mean.data_ptr<float>();
  float* dp = denom.data_ptr<float>();
  for_each_block(B, T, [&](int64_t, int64_t row, int64_t t0, int64_t n) {
    const int64_t offset = row * C * T + t0;
    forward_block(xp + offset, op + offset, wp, bp, C, T, n, static_cast<float>(eps), mp + row * T + t0,
                  dp + row * T + t0);
  });
  return {out, mean, denom};
}

// -> (dx (B, C, T), dw (C,), db (C,))
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                        const at::Tensor& weight, const at::Tensor& mean,
                                                        const at::Tensor& denom) {
  check(x, weight, weight);
  TORCH_CHECK(grad_out.sizes() == x.sizes() && grad_out.is_contiguous() && grad_out.scalar_type() == at::kFloat,
              "_layer_norm_cpu: grad_out must be contiguous float32 of x's shape");
  const int64_t B = x.size(0), C = x.size(1), T = x.size(2);
  auto dx = at::empty_like(x);
  auto dw_part = at::zeros({B * num_blocks(T), C}, x.options().dtype(at::kDouble));
  auto db_part = at::zeros({B * num_blocks(T), C}, x.options().dtype(at::kDouble));
  const float* xp = x.data_ptr<float>();
  const float* gp = grad_out.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* mp = mean.data_ptr<float>();
  const float* dp = denom.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  double* dwp = dw_part.data_ptr<double>();
  double* dbp = db_part.data_ptr<double>();
  for_each_block(B, T, [&](int64_t task, int64_t row, int64_t t0, int64_t n) {
    const int64_t offset = row * C * T + t0;
    backward_block(xp + offset, gp + offset, dxp + offset, wp, C, T, n, mp + row * T + t0, dp + row * T + t0,
                   dwp + task * C, dbp + task * C);
  });
  return {dx, dw_part.sum(0).to(at::kFloat), db_part.sum(0).to(at::kFloat)};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "channel LayerNorm forward: (out, mean, denom)");
  m.def("backward", &backward, "channel LayerNorm backward: (dx, dweight, dbias)");
}
