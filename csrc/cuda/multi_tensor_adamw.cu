// Multi-tensor mixed-precision AdamW: two launches for any number of tensors.
//
// Tensors are reached through device tables of their addresses and split into kChunk-element
// chunks; block b handles chunk b of the table (tensor index, start), as apex's
// multi_tensor_apply does. The update reads the found-inf flag on the device and returns at once
// when it is set, so a skipped step needs no host sync. Explicitly rounded float ops keep results
// bit-stable under --use_fast_math (setup.py compiles with it).

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

struct ChunkTable {
  at::Tensor tensor_index;  // int32 [chunks]
  at::Tensor start;         // int64 [chunks]
  at::Tensor numel;         // int64 [tensors]
  int64_t chunks = 0;
};

at::Tensor to_device(const std::vector<int64_t>& values, const at::Device& device) {
  auto host = at::tensor(values, at::TensorOptions().dtype(at::kLong));
  return host.to(device);
}

at::Tensor addresses(const std::vector<at::Tensor>& tensors, const at::Device& device) {
  std::vector<int64_t> addr;
  addr.reserve(tensors.size());
  for (const auto& t : tensors) {
    TORCH_CHECK(t.is_cuda() && t.is_contiguous(), "multi-tensor AdamW needs contiguous CUDA tensors");
    addr.push_back(reinterpret_cast<int64_t>(t.data_ptr()));
  }
  return to_device(addr, device);
}

ChunkTable chunk_table(const std::vector<at::Tensor>& tensors, const at::Device& device) {
  std::vector<int64_t> index, start, numel;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const int64_t n = tensors[t].numel();
    numel.push_back(n);
    for (int64_t s = 0; s < n; s += kChunk) {
      index.push_back(static_cast<int64_t>(t));
      start.push_back(s);
    }
  }
  ChunkTable table;
  table.tensor_index = to_device(index, device).to(at::kInt);
  table.start = to_device(start, device);
  table.numel = to_device(numel, device);
  table.chunks = static_cast<int64_t>(index.size());
  return table;
}

__device__ __forceinline__ bool is_finite(float x) {
  return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

template <typename grad_t>
__global__ void non_finite_kernel(const int32_t* chunk_tensor, const int64_t* chunk_start,
                                  const int64_t* numel, const int64_t* grad_addr,
                                  const float* inv_scale, float* found_inf) {
  const int t = chunk_tensor[blockIdx.x];
  const int64_t start = chunk_start[blockIdx.x];
  const int64_t end = min(start + static_cast<int64_t>(kChunk), numel[t]);
  const grad_t* grad = reinterpret_cast<const grad_t*>(grad_addr[t]);
  const float scale = *inv_scale;
  bool bad = false;
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    bad |= !is_finite(__fmul_rn(static_cast<float>(grad[i]), scale));
  }
  if (bad) *found_inf = 1.0f;  // every writer writes 1: the race is harmless
}

template <typename param_t, typename grad_t>
__global__ void adamw_kernel(const int32_t* chunk_tensor, const int64_t* chunk_start,
                             const int64_t* numel, const int64_t* param_addr,
                             const int64_t* grad_addr, const int64_t* master_addr,
                             const int64_t* m_addr, const int64_t* v_addr,
                             const float* inv_scale, const float* found_inf, float beta1,
                             float beta2, float eps, float decay, float step_size,
                             float bc2_sqrt, bool has_master) {
  if (*found_inf != 0.0f) return;
  const int t = chunk_tensor[blockIdx.x];
  const int64_t start = chunk_start[blockIdx.x];
  const int64_t end = min(start + static_cast<int64_t>(kChunk), numel[t]);
  param_t* param = reinterpret_cast<param_t*>(param_addr[t]);
  const grad_t* grad = reinterpret_cast<const grad_t*>(grad_addr[t]);
  float* master = reinterpret_cast<float*>(has_master ? master_addr[t] : param_addr[t]);
  float* m = reinterpret_cast<float*>(m_addr[t]);
  float* v = reinterpret_cast<float*>(v_addr[t]);
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
  const auto device = grads[0].device();
  const ChunkTable table = chunk_table(grads, device);
  const at::Tensor grad_addr = addresses(grads, device);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads[0].scalar_type(), "non_finite_check", [&] {
    non_finite_kernel<scalar_t><<<table.chunks, kThreads, 0, stream>>>(
        table.tensor_index.data_ptr<int32_t>(), table.start.data_ptr<int64_t>(),
        table.numel.data_ptr<int64_t>(), grad_addr.data_ptr<int64_t>(),
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
  const auto device = params[0].device();
  const ChunkTable table = chunk_table(params, device);
  const at::Tensor param_addr = addresses(params, device);
  const at::Tensor grad_addr = addresses(grads, device);
  const at::Tensor master_addr = has_master ? addresses(masters, device) : param_addr;
  const at::Tensor m_addr = addresses(exp_avgs, device);
  const at::Tensor v_addr = addresses(exp_avg_sqs, device);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "adamw_param", [&] {
    using param_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads[0].scalar_type(), "adamw_grad", [&] {
      using grad_t = scalar_t;
      adamw_kernel<param_t, grad_t><<<table.chunks, kThreads, 0, stream>>>(
          table.tensor_index.data_ptr<int32_t>(), table.start.data_ptr<int64_t>(),
          table.numel.data_ptr<int64_t>(), param_addr.data_ptr<int64_t>(),
          grad_addr.data_ptr<int64_t>(), master_addr.data_ptr<int64_t>(),
          m_addr.data_ptr<int64_t>(), v_addr.data_ptr<int64_t>(), inv_scale.data_ptr<float>(),
          found_inf.data_ptr<float>(), static_cast<float>(beta1), static_cast<float>(beta2),
          static_cast<float>(eps), static_cast<float>(decay), static_cast<float>(step_size),
          static_cast<float>(bc2_sqrt), has_master);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
