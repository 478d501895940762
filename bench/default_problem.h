// What the bench programs share (demo, engine, sweep, stages): the CPU default shape, its
// synthetic problem, caller-owned bf16 HND pages with a cache over them, and the one way
// they stop on a library error.
#pragma once

#include "problem.h"
#include "vashista.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace vashista::bench {

// The default library's decode shape: H_kv = 8, G = 4, D = 128, pages of 16 tokens.
constexpr int kKvHeads = 8, kGroupSize = 4, kHeadDim = 128, kPageSize = 16;

inline void check(vashista_status s, const std::string &what) {
    if (s != VASHISTA_OK) {
        std::fprintf(stderr, "%s failed: %s: %s\n", what.c_str(), vashista_status_name(s), vashista_last_error());
        std::exit(2);
    }
}

// `batch` sequences of `tokens` tokens of the default shape with planted needles, an attention
// sink and a local window, pages in shuffled physical order; extra_pages block-table columns
// past the longest sequence, each mapping one spare physical page.
inline ref::Problem default_problem(int batch, int tokens, int extra_pages, uint64_t seed) {
    ref::ProblemSpec spec;
    spec.kv_heads = kKvHeads;
    spec.group = kGroupSize;
    spec.head_dim = kHeadDim;
    spec.page_size = kPageSize;
    spec.seq_lens.assign(batch, tokens);
    spec.extra_pages = extra_pages;
    spec.spare_pages = extra_pages;
    spec.kind = ref::DataKind::Planted;
    spec.needle_score = 40.0;
    spec.seed = seed;
    return ref::make_problem(spec);
}

// Caller-owned bf16 HND pages for `p` (empty until appended) and a cache desc over them with
// bf16 summaries and no sketch. Moving a Pages keeps the desc's pointers valid.
struct Pages {
    std::vector<uint8_t> k, v;
    vashista_cache_desc desc{};
};

inline Pages make_pages(const ref::Problem &p) {
    Pages pg;
    pg.k.resize(p.cache.k.size() * 2);
    pg.v.resize(p.cache.v.size() * 2);
    pg.desc = vashista_cache_desc{sizeof(vashista_cache_desc),
                                  p.seqs.batch,
                                  p.cache.kv_heads,
                                  p.cache.head_dim,
                                  p.cache.page_size,
                                  p.cache.num_pages,
                                  p.seqs.max_pages,
                                  VASHISTA_DTYPE_BF16,
                                  VASHISTA_DTYPE_BF16,
                                  VASHISTA_LAYOUT_HND,
                                  pg.k.data(),
                                  pg.v.data(),
                                  p.seqs.page_table.data(),
                                  0,
                                  0,
                                  0};
    return pg;
}

struct CacheDeleter {
    void operator()(vashista_cache *c) const { vashista_cache_destroy(c); }
};
using CachePtr = std::unique_ptr<vashista_cache, CacheDeleter>;

inline CachePtr create_cache(const vashista_cache_desc &desc, const std::string &what) {
    vashista_cache *c = nullptr;
    check(vashista_cache_create(&desc, &c), "vashista_cache_create (" + what + ")");
    return CachePtr(c);
}

// Appends the first `tokens` tokens of every sequence through vashista_append (pages,
// summaries, sketch), 4096 at a time.
inline void append_all(vashista_cache *cache, const ref::Problem &p, int tokens) {
    const int chunk = 4096;
    for (int b = 0; b < p.seqs.batch; ++b)
        for (int start = 0; start < tokens; start += chunk) {
            const int n = std::min(chunk, tokens - start);
            const auto k = ref::token_bytes(p.cache, p.seqs, p.cache.k, b, start, n);
            const auto v = ref::token_bytes(p.cache, p.seqs, p.cache.v, b, start, n);
            check(vashista_append(cache, b, start, n, k.data(), v.data()), "vashista_append");
        }
}

}  // namespace vashista::bench
