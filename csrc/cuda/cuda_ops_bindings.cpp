// Python bindings of optiml_engine._cuda_ops (built by setup.py only with a CUDA toolkit).

#include <torch/extension.h>

#include <vector>

void non_finite_check(const std::vector<at::Tensor>& grads, const at::Tensor& inv_scale,
                      const at::Tensor& found_inf);

void adamw_update(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                  const std::vector<at::Tensor>& masters, const std::vector<at::Tensor>& exp_avgs,
                  const std::vector<at::Tensor>& exp_avg_sqs, const at::Tensor& inv_scale,
                  const at::Tensor& found_inf, double beta1, double beta2, double eps,
                  double decay, double step_size, double bc2_sqrt);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "optiml-engine CUDA ops: multi-tensor mixed-precision AdamW";
  m.def("non_finite_check", &non_finite_check,
        "Set found_inf to 1 if any grad * inv_scale is inf or NaN");
  m.def("adamw_update", &adamw_update,
        "One AdamW step over tensors sharing dtypes; a no-op when found_inf != 0");
}
