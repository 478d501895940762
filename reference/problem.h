// Synthetic decode problems: paged KV with shuffled physical pages, and queries.
#pragma once

#include "reference.h"

#include <cstdint>
#include <vector>

namespace vashista::ref {

enum class DataKind {
    Gaussian,  // q, k, v ~ N(0, 1)
    Planted,   // Gaussian plus, per query head, needle tokens aligned with q, an
               // attention sink at token 0 and a local window of recent tokens
    Dyadic,    // values in {-1, -1/2, 0, 1/2, 1}: exact scores, many exact ties
};

struct ProblemSpec {
    int kv_heads = 2, group = 4, head_dim = 64, page_size = 16;
    std::vector<int> seq_lens{100};
    int extra_pages = 2;  // block-table columns beyond the longest sequence
    int spare_pages = 3;  // physical pages no sequence uses
    KvLayout layout = KvLayout::HND;
    DType dtype = DType::BF16;
    DataKind kind = DataKind::Gaussian;
    double needle_score = 12.0;  // planted: scaled score of a needle
    int needles = 4;             // planted: per query head
    int window = 32;             // planted: local window length
    uint64_t seed = 1;
};

struct Problem {
    Cache cache;
    Sequences seqs;
    Queries q;
};

Problem make_problem(const ProblemSpec &spec);

// Tokens [start, start + n) of sequence b of `src` (the cache's k or v), as
// vashista_append takes them: [n][kv_heads][head_dim] in the cache's dtype.
std::vector<uint8_t> token_bytes(const Cache &cache, const Sequences &seqs, const std::vector<float> &src, int b,
                                 int start, int n);

}  // namespace vashista::ref
