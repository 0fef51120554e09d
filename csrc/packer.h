// Sample packer: best-fit-decreasing bin packing of example lengths, and filling the packed
// token / label / mask arrays. Plain C++ over raw buffers; module.cpp binds it to numpy.
#pragma once

#include <cstdint>
#include <vector>

namespace optiml {

// Result of packing: bin b holds examples flat[offsets[b] .. offsets[b+1]) in placement order.
struct Packing {
  std::vector<int64_t> flat;
  std::vector<int64_t> offsets;
};

// Best-fit decreasing: examples by length descending (ties: ascending index); each goes into the
// open bin with the least remaining space that fits (ties: lowest bin index), else a new bin.
// Throws std::invalid_argument for a length < 1 or > capacity, naming the index.
// `force_ordered_set` picks the std::set path that large capacities use (for tests).
Packing pack_lengths(const int64_t* lengths, int64_t n, int64_t capacity,
                     bool force_ordered_set = false);

// Buffers of one packed batch, each [num_bins * seq_length], row-major.
struct SampleBuffers {
  int64_t* tokens;
  int64_t* labels;
  float* loss_mask;
  int64_t* position_ids;
  int64_t* doc_ids;
};

// Example e is `eos src[src_begin[e] .. +src_keep[e]) tgt[tgt_begin[e] .. +tgt_len[e]) eos`.
// Bins come from pack_lengths over the lengths src_keep + tgt_len + 2 (each <= seq_length).
void fill_samples(const int64_t* src, const int64_t* src_begin, const int64_t* src_keep,
                  const int64_t* tgt, const int64_t* tgt_begin, const int64_t* tgt_len,
                  const int64_t* bin_flat, const int64_t* bin_offsets, int64_t num_bins,
                  int64_t seq_length, int64_t eos_id, int64_t pad_id, SampleBuffers out);

}  // namespace optiml
