// The one pybind11 module of the project, `optiml_engine._C`: numpy bindings of the C++ helpers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "packer.h"

namespace py = pybind11;
using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

namespace {

py::array_t<int64_t> to_numpy(const std::vector<int64_t>& values) {
  py::array_t<int64_t> out(static_cast<py::ssize_t>(values.size()));
  if (!values.empty()) std::memcpy(out.mutable_data(), values.data(), values.size() * 8);
  return out;
}

void require_1d(const I64Array& a, const char* name) {
  if (a.ndim() != 1) throw std::invalid_argument(std::string(name) + " must be 1-D");
}

py::tuple pack_lengths_py(const I64Array& lengths, int64_t capacity, bool force_ordered_set) {
  require_1d(lengths, "lengths");
  optiml::Packing packing;
  {
    py::gil_scoped_release release;
    packing = optiml::pack_lengths(lengths.data(), lengths.size(), capacity, force_ordered_set);
  }
  return py::make_tuple(to_numpy(packing.flat), to_numpy(packing.offsets));
}

// Checks that every range the filler reads lies inside its array, so bad input cannot crash.
void check_ranges(const I64Array& flat, const I64Array& begin, const I64Array& count,
                  const char* name) {
  const int64_t size = flat.size();
  for (py::ssize_t e = 0; e < begin.size(); ++e) {
    const int64_t b = begin.data()[e], c = count.data()[e];
    if (b < 0 || c < 0 || b + c > size)
      throw std::invalid_argument(std::string(name) + " range of example " + std::to_string(e) +
                                  " is out of bounds");
  }
}

py::tuple fill_samples_py(const I64Array& src, const I64Array& src_begin, const I64Array& src_keep,
                          const I64Array& tgt, const I64Array& tgt_begin, const I64Array& tgt_len,
                          const I64Array& bin_flat, const I64Array& bin_offsets,
                          int64_t seq_length, int64_t eos_id, int64_t pad_id) {
  for (auto* a : {&src, &src_begin, &src_keep, &tgt, &tgt_begin, &tgt_len, &bin_flat,
                  &bin_offsets})
    require_1d(*a, "every input");
  const py::ssize_t m = src_begin.size();
  if (src_keep.size() != m || tgt_begin.size() != m || tgt_len.size() != m)
    throw std::invalid_argument("per-example arrays differ in length");
  if (bin_offsets.size() < 1 || seq_length < 2)
    throw std::invalid_argument("need bin_offsets of size num_bins + 1 and seq_length >= 2");
  check_ranges(src, src_begin, src_keep, "source");
  check_ranges(tgt, tgt_begin, tgt_len, "target");
  const int64_t num_bins = bin_offsets.size() - 1;
  const int64_t* off = bin_offsets.data();
  if (off[0] != 0 || off[num_bins] != bin_flat.size())
    throw std::invalid_argument("bin_offsets must run from 0 to len(bin_flat)");
  for (int64_t b = 0; b < num_bins; ++b)
    if (off[b + 1] < off[b]) throw std::invalid_argument("bin_offsets must be non-decreasing");
  for (py::ssize_t j = 0; j < bin_flat.size(); ++j)
    if (bin_flat.data()[j] < 0 || bin_flat.data()[j] >= m)
      throw std::invalid_argument("bin_flat holds an example index out of range");

  const std::vector<py::ssize_t> shape{num_bins, seq_length};
  py::array_t<int64_t> tokens(shape), labels(shape), position_ids(shape), doc_ids(shape);
  py::array_t<float> loss_mask(shape);
  optiml::SampleBuffers out{tokens.mutable_data(), labels.mutable_data(), loss_mask.mutable_data(),
                            position_ids.mutable_data(), doc_ids.mutable_data()};
  {
    py::gil_scoped_release release;
    optiml::fill_samples(src.data(), src_begin.data(), src_keep.data(), tgt.data(),
                         tgt_begin.data(), tgt_len.data(), bin_flat.data(), off, num_bins,
                         seq_length, eos_id, pad_id, out);
  }
  return py::make_tuple(tokens, labels, loss_mask, position_ids, doc_ids);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "optiml-engine C++ helpers over numpy arrays (sample packing)";
  m.def("pack_lengths", &pack_lengths_py, py::arg("lengths"), py::arg("capacity"),
        py::arg("force_ordered_set") = false,
        "Best-fit-decreasing packing of int64 lengths; returns (flat example indices, bin "
        "offsets). Use optiml_engine.data.packing.pack_lengths instead.");
  m.def("fill_samples", &fill_samples_py, py::arg("src"), py::arg("src_begin"),
        py::arg("src_keep"), py::arg("tgt"), py::arg("tgt_begin"), py::arg("tgt_len"),
        py::arg("bin_flat"), py::arg("bin_offsets"), py::arg("seq_length"), py::arg("eos_id"),
        py::arg("pad_id"),
        "Fill (tokens, labels, loss_mask, position_ids, doc_ids), each [num_bins, seq_length].");
}
