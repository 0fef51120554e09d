// Multi-tensor mixed-precision AdamW: two launches for any number of tensors.
//
// Tensors are split into kChunk-element chunks and block b handles global chunk b, as apex's
// multi_tensor_apply does. The launch table is per tensor, not per chunk: one int64 row of
// [first chunk, numel, address of each operand] per tensor, copied to the device in one
// transfer, and each block finds its tensor by binary search over the first-chunk column. So
// a step of OPT-1.3B (~390 tensors, ~317k chunks) moves a few KB to the device, not MBs.
// The update reads the found-inf flag on the device and returns at once when it is set, so a
// skipped step needs no host sync. Explicitly rounded float ops keep results bit-stable under
// --use_fast_math (setup.py compiles with it).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <vector>

namespace {

constexpr int kChunk = 4096;
constexpr int kThreads = 512;

// Columns of one tensor's row in the launch table; operands absent from a launch are 0.
enum Column { kFirstChunk = 0, kNumel, kParam, kGrad, kMaster, kExpAvg, kExpAvgSq, kColumns };

struct LaunchTable {
  at::Tensor rows;  // int64 [tensors, kColumns] on the device
  int64_t tensors = 0;
  int64_t chunks = 0;
};

int64_t address(const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous(), "multi-tensor AdamW needs contiguous CUDA tensors");
  return reinterpret_cast<int64_t>(t.data_ptr());
}

// `operands[c]` is the list for column c (kParam..kExpAvgSq), empty when unused.
LaunchTable launch_table(const std::vector<const std::vector<at::Tensor>*>& operands,
                         const std::vector<at::Tensor>& sized_by, const at::Device& device) {
  const int64_t n = static_cast<int64_t>(sized_by.size());
  auto host = at::zeros({n, kColumns}, at::TensorOptions().dtype(at::kLong));
  auto row = host.accessor<int64_t, 2>();
  int64_t chunks = 0;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t numel = sized_by[t].numel();
    row[t][kFirstChunk] = chunks;
    row[t][kNumel] = numel;
    chunks += (numel + kChunk - 1) / kChunk;
    for (size_t c = 0; c < operands.size(); ++c) {
      const auto* list = operands[c];
      if (list != nullptr && !list->empty()) {
        TORCH_CHECK((*list)[t].numel() == numel, "adamw: operands of tensor ", t, " differ in size");
        row[t][kParam + c] = address((*list)[t]);
      }
    }
  }
  LaunchTable table;
  table.rows = host.to(device);
  table.tensors = n;
  table.chunks = chunks;
  return table;
}

// The tensor holding global chunk `chunk`: the last row whose first chunk is <= chunk.
__device__ __forceinline__ int find_tensor(const int64_t* rows, int tensors, int64_t chunk) {
  int lo = 0, hi = tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (rows[mid * kColumns + kFirstChunk] <= chunk) lo = mid; else hi = mid - 1;
  }
  return lo;
}

__device__ __forceinline__ bool is_finite(float x) {
  return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

template <typename grad_t>
__global__ void non_finite_kernel(const int64_t* rows, int tensors, const float* inv_scale,
                                  float* found_inf) {
  const int t = find_tensor(rows, tensors, blockIdx.x);
  const int64_t* row = rows + t * kColumns;
  const int64_t start = (blockIdx.x - row[kFirstChunk]) * kChunk;
  const int64_t end = min(start + static_cast<int64_t>(kChunk), row[kNumel]);
  const grad_t* grad = reinterpret_cast<const grad_t*>(row[kGrad]);
  const float scale = *inv_scale;
  bool bad = false;
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    bad |= !is_finite(__fmul_rn(static_cast<float>(grad[i]), scale));
  }
  if (bad) *found_inf = 1.0f;  // every writer writes 1: the race is harmless
}

template <typename param_t, typename grad_t>
__global__ void adamw_kernel(const int64_t* rows, int tensors, const float* inv_scale,
                             const float* found_inf, float beta1, float beta2, float eps,
                             float decay, float step_size, float bc2_sqrt, bool has_master) {
  if (*found_inf != 0.0f) return;
  const int t = find_tensor(rows, tensors, blockIdx.x);
  const int64_t* row = rows + t * kColumns;
  const int64_t start = (blockIdx.x - row[kFirstChunk]) * kChunk;
  const int64_t end = min(start + static_cast<int64_t>(kChunk), row[kNumel]);
  param_t* param = reinterpret_cast<param_t*>(row[kParam]);
  const grad_t* grad = reinterpret_cast<const grad_t*>(row[kGrad]);
  float* master = reinterpret_cast<float*>(has_master ? row[kMaster] : row[kParam]);
  float* m = reinterpret_cast<float*>(row[kExpAvg]);
  float* v = reinterpret_cast<float*>(row[kExpAvgSq]);
  const float scale = *inv_scale;
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    const float g = __fmul_rn(static_cast<float>(grad[i]), scale);
    const float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(1.0f - beta1, g));
    const float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(1.0f - beta2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
    const float p = __fsub_rn(__fmul_rn(master[i], decay), __fmul_rn(step_size, __fdiv_rn(mi, denom)));
    m[i] = mi;
    v[i] = vi;
    master[i] = p;
    if (has_master) param[i] = static_cast<param_t>(p);
  }
}

void check_scalar(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.scalar_type() == at::kFloat && t.numel() == 1,
              name, " must be a one-element fp32 CUDA tensor");
}

}  // namespace

void non_finite_check(const std::vector<at::Tensor>& grads, const at::Tensor& inv_scale,
                      const at::Tensor& found_inf) {
  if (grads.empty()) return;
  check_scalar(inv_scale, "inv_scale");
  check_scalar(found_inf, "found_inf");
  const c10::cuda::CUDAGuard guard(grads[0].device());
  const LaunchTable table = launch_table({nullptr, &grads}, grads, grads[0].device());
  if (table.chunks == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads[0].scalar_type(), "non_finite_check", [&] {
    non_finite_kernel<scalar_t><<<table.chunks, kThreads, 0, stream>>>(
        table.rows.data_ptr<int64_t>(), static_cast<int>(table.tensors),
        inv_scale.data_ptr<float>(), found_inf.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void adamw_update(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                  const std::vector<at::Tensor>& masters, const std::vector<at::Tensor>& exp_avgs,
                  const std::vector<at::Tensor>& exp_avg_sqs, const at::Tensor& inv_scale,
                  const at::Tensor& found_inf, double beta1, double beta2, double eps,
                  double decay, double step_size, double bc2_sqrt) {
  if (params.empty()) return;
  const bool has_master = !masters.empty();
  TORCH_CHECK(grads.size() == params.size() && exp_avgs.size() == params.size() &&
                  exp_avg_sqs.size() == params.size() &&
                  (!has_master || masters.size() == params.size()),
              "adamw_update: tensor lists differ in length");
  TORCH_CHECK(has_master || params[0].scalar_type() == at::kFloat,
              "adamw_update: bf16/fp16 params need fp32 master weights");
  check_scalar(inv_scale, "inv_scale");
  check_scalar(found_inf, "found_inf");
  const c10::cuda::CUDAGuard guard(params[0].device());
  const std::vector<at::Tensor> none;
  const LaunchTable table = launch_table(
      {&params, &grads, has_master ? &masters : &none, &exp_avgs, &exp_avg_sqs}, params,
      params[0].device());
  if (table.chunks == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "adamw_param", [&] {
    using param_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads[0].scalar_type(), "adamw_grad", [&] {
      using grad_t = scalar_t;
      adamw_kernel<param_t, grad_t><<<table.chunks, kThreads, 0, stream>>>(
          table.rows.data_ptr<int64_t>(), static_cast<int>(table.tensors),
          inv_scale.data_ptr<float>(), found_inf.data_ptr<float>(), static_cast<float>(beta1),
          static_cast<float>(beta2), static_cast<float>(eps), static_cast<float>(decay),
          static_cast<float>(step_size), static_cast<float>(bc2_sqrt), has_master);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
