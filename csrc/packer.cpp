// Best-fit-decreasing packer in O(n log n) and the packed-sample filler (see packer.h).
#include "packer.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

namespace optiml {
namespace {

// Capacities up to this use one bucket of bins per remaining-space value (fast, memory ~ capacity);
// larger ones fall back to an ordered set of (remaining, bin).
constexpr int64_t kMaxBucketCapacity = int64_t{1} << 20;

// Set of integers in [0, n) with "smallest member >= x" in O(log64 n): a 64-ary tree of bitmasks.
class NextSetBit {
 public:
  explicit NextSetBit(size_t n) {
    size_t m = n;
    do {
      m = (m + 63) / 64;
      levels_.emplace_back(m, 0);
    } while (m > 1);
  }

  void set(size_t i) {
    for (auto& words : levels_) {
      const bool was_nonzero = words[i >> 6] != 0;
      words[i >> 6] |= uint64_t{1} << (i & 63);
      if (was_nonzero) return;  // the levels above already know this word is non-empty
      i >>= 6;
    }
  }

  void clear(size_t i) {
    for (auto& words : levels_) {
      words[i >> 6] &= ~(uint64_t{1} << (i & 63));
      if (words[i >> 6] != 0) return;
      i >>= 6;
    }
  }

  // Smallest member >= i, or -1.
  int64_t next(size_t i) const {
    for (size_t k = 0; k < levels_.size(); ++k) {
      const size_t w = i >> 6;
      if (w >= levels_[k].size()) return -1;
      const uint64_t bits = levels_[k][w] & (~uint64_t{0} << (i & 63));
      if (bits != 0) {
        i = (w << 6) + __builtin_ctzll(bits);
        while (k > 0) {  // descend to the first member under this subtree
          --k;
          i = (i << 6) + __builtin_ctzll(levels_[k][i]);
        }
        return static_cast<int64_t>(i);
      }
      i = w + 1;  // continue with the next word, one level up
    }
    return -1;
  }

 private:
  std::vector<std::vector<uint64_t>> levels_;  // levels_[0] is the finest
};

// Example indices by length descending, ties by ascending index, and their lengths in that order
// (kept alongside so placement reads lengths sequentially instead of missing cache per example).
struct Order {
  std::vector<int64_t> index;
  std::vector<int64_t> length;
};

Order decreasing_order(const int64_t* lengths, int64_t n, int64_t capacity) {
  Order order{std::vector<int64_t>(n), std::vector<int64_t>(n)};
  if (capacity <= kMaxBucketCapacity) {  // counting sort: O(n + capacity), stable
    std::vector<int64_t> start(capacity + 2, 0);
    for (int64_t i = 0; i < n; ++i) ++start[capacity - lengths[i] + 1];
    for (int64_t v = 1; v <= capacity + 1; ++v) start[v] += start[v - 1];
    auto lengths_out = order.length.begin();
    for (int64_t v = 0; v < capacity; ++v)  // slot v holds length capacity - v
      std::fill(lengths_out + start[v], lengths_out + start[v + 1], capacity - v);
    for (int64_t i = 0; i < n; ++i) order.index[start[capacity - lengths[i]]++] = i;
  } else {
    std::vector<std::pair<int64_t, int64_t>> keyed(n);  // (-length, index): sorts as required
    for (int64_t i = 0; i < n; ++i) keyed[i] = {-lengths[i], i};
    std::sort(keyed.begin(), keyed.end());
    for (int64_t k = 0; k < n; ++k) {
      order.length[k] = -keyed[k].first;
      order.index[k] = keyed[k].second;
    }
  }
  return order;
}

// Bin of each placement (in `order`), using buckets of bins keyed by remaining space.
int64_t place_bucketed(const std::vector<int64_t>& lengths, int64_t capacity,
                       std::vector<int64_t>& bin_of) {
  // buckets[r]: min-heap of the open bins with exactly r tokens free; `nonempty` indexes them.
  std::vector<std::vector<int64_t>> buckets(capacity + 1);
  NextSetBit nonempty(capacity + 1);
  const auto lowest_first = std::greater<int64_t>();
  int64_t num_bins = 0;
  for (size_t k = 0; k < lengths.size(); ++k) {
    const int64_t len = lengths[k];
    const int64_t r = nonempty.next(len);
    int64_t bin, left;
    if (r < 0) {
      bin = num_bins++;
      left = capacity - len;
    } else {
      auto& heap = buckets[r];
      std::pop_heap(heap.begin(), heap.end(), lowest_first);
      bin = heap.back();
      heap.pop_back();
      if (heap.empty()) nonempty.clear(r);
      left = r - len;
    }
    bin_of[k] = bin;
    if (left > 0) {  // a full bin can take nothing more (lengths are >= 1)
      auto& heap = buckets[left];
      heap.push_back(bin);
      std::push_heap(heap.begin(), heap.end(), lowest_first);
      nonempty.set(left);
    }
  }
  return num_bins;
}

// Same placement with an ordered set of (remaining, bin): memory independent of capacity.
int64_t place_ordered_set(const std::vector<int64_t>& lengths, int64_t capacity,
                          std::vector<int64_t>& bin_of) {
  std::set<std::pair<int64_t, int64_t>> open;
  int64_t num_bins = 0;
  for (size_t k = 0; k < lengths.size(); ++k) {
    const int64_t len = lengths[k];
    auto it = open.lower_bound({len, std::numeric_limits<int64_t>::min()});
    int64_t bin, left;
    if (it == open.end()) {
      bin = num_bins++;
      left = capacity - len;
    } else {
      bin = it->second;
      left = it->first - len;
      open.erase(it);
    }
    bin_of[k] = bin;
    if (left > 0) open.emplace(left, bin);
  }
  return num_bins;
}

}  // namespace

Packing pack_lengths(const int64_t* lengths, int64_t n, int64_t capacity, bool force_ordered_set) {
  if (capacity < 1) throw std::invalid_argument("capacity must be >= 1, got " +
                                                std::to_string(capacity));
  for (int64_t i = 0; i < n; ++i) {
    if (lengths[i] < 1 || lengths[i] > capacity) {
      throw std::invalid_argument("example " + std::to_string(i) + " has length " +
                                  std::to_string(lengths[i]) + ", outside [1, " +
                                  std::to_string(capacity) + "]");
    }
  }
  const Order order = decreasing_order(lengths, n, capacity);
  std::vector<int64_t> bin_of(n);
  const bool bucketed = capacity <= kMaxBucketCapacity && !force_ordered_set;
  const int64_t num_bins = bucketed ? place_bucketed(order.length, capacity, bin_of)
                                    : place_ordered_set(order.length, capacity, bin_of);

  // Group placements by bin, keeping placement order inside each bin (a stable counting sort).
  Packing packing;
  packing.offsets.assign(num_bins + 1, 0);
  for (int64_t k = 0; k < n; ++k) ++packing.offsets[bin_of[k] + 1];
  for (int64_t b = 0; b < num_bins; ++b) packing.offsets[b + 1] += packing.offsets[b];
  std::vector<int64_t> cursor(packing.offsets.begin(), packing.offsets.end() - 1);
  packing.flat.resize(n);
  for (int64_t k = 0; k < n; ++k) packing.flat[cursor[bin_of[k]]++] = order.index[k];
  return packing;
}

void fill_samples(const int64_t* src, const int64_t* src_begin, const int64_t* src_keep,
                  const int64_t* tgt, const int64_t* tgt_begin, const int64_t* tgt_len,
                  const int64_t* bin_flat, const int64_t* bin_offsets, int64_t num_bins,
                  int64_t seq_length, int64_t eos_id, int64_t pad_id, SampleBuffers out) {
  for (int64_t b = 0; b < num_bins; ++b) {
    const int64_t row = b * seq_length;
    int64_t* tokens = out.tokens + row;
    int64_t* labels = out.labels + row;
    float* mask = out.loss_mask + row;
    int64_t* pos = out.position_ids + row;
    int64_t* doc = out.doc_ids + row;
    int64_t at = 0, doc_id = 0;
    for (int64_t j = bin_offsets[b]; j < bin_offsets[b + 1]; ++j, ++doc_id) {
      const int64_t e = bin_flat[j];
      const int64_t ns = src_keep[e], nt = tgt_len[e], len = ns + nt + 2;
      if (at + len > seq_length) throw std::invalid_argument("packed examples overflow a sample");
      tokens[at] = eos_id;
      std::copy(src + src_begin[e], src + src_begin[e] + ns, tokens + at + 1);
      std::copy(tgt + tgt_begin[e], tgt + tgt_begin[e] + nt, tokens + at + 1 + ns);
      tokens[at + len - 1] = eos_id;
      for (int64_t i = 0; i < len; ++i) {
        pos[at + i] = i;
        doc[at + i] = doc_id;
        // Position i predicts token i+1; it is trained iff that is a target token or the
        // closing </s>, i.e. i in [ns, len - 2].
        labels[at + i] = i + 1 < len ? tokens[at + i + 1] : pad_id;
        mask[at + i] = (i >= ns && i + 1 < len) ? 1.0f : 0.0f;
      }
      at += len;
    }
    for (; at < seq_length; ++at) {  // padding: its own document id, so no row is fully masked
      tokens[at] = pad_id;
      labels[at] = pad_id;
      mask[at] = 0.0f;
      pos[at] = 0;
      doc[at] = doc_id;
    }
  }
}

}  // namespace optiml
