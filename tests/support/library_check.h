// One round through a linked kernel library's C API against the reference, for the tests of
// libraries built for other targets (several CPUs in one library, a GPU): a planted problem
// of two sequences (D = 64, G = 4, two KV heads, bf16 KV and summaries) appended (the
// summarize kernel), one sparse decode step with candidates (bound routing) and dense, each
// output poisoned first and compared with the reference.
#pragma once

#include "problem.h"
#include "reference.h"
#include "vashista.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

namespace vashista::testing {

// The decode variant the library was built with (top_pages, top_tokens, sink and local pages).
struct LibraryDecode {
    int top_pages = 8, top_tokens = 32, sink_pages = 0, local_pages = 0;
};

inline void check_library_matches_reference(const LibraryDecode &shape) {
    constexpr int H = 2, G = 4, D = 64, S = 16;
    ref::ProblemSpec spec;
    spec.kv_heads = H;
    spec.group = G;
    spec.head_dim = D;
    spec.seq_lens = {900, 131};
    spec.kind = ref::DataKind::Planted;
    spec.needle_score = 30;
    const ref::Problem p = ref::make_problem(spec);
    std::vector<uint8_t> k_pages(p.cache.k.size() * 2), v_pages(p.cache.v.size() * 2);
    const int B = p.seqs.batch, QH = H * G;
    vashista_cache_desc desc{sizeof(vashista_cache_desc),
                             B,
                             H,
                             D,
                             S,
                             p.cache.num_pages,
                             p.seqs.max_pages,
                             VASHISTA_DTYPE_BF16,
                             VASHISTA_DTYPE_BF16,
                             VASHISTA_LAYOUT_HND,
                             k_pages.data(),
                             v_pages.data(),
                             p.seqs.page_table.data(),
                             0,
                             0,
                             0};
    const ref::Summaries sum = ref::summarize(p.cache, p.seqs, ref::DType::BF16);
    vashista_decode_config cfg;
    vashista_decode_config_default(&cfg);
    cfg.top_pages = shape.top_pages;
    cfg.top_tokens = shape.top_tokens;
    cfg.sink_pages = shape.sink_pages;
    cfg.local_pages = shape.local_pages;
    cfg.policy = VASHISTA_POLICY_NONE;
    ref::SparseOptions opt;
    opt.top_pages = cfg.top_pages;
    opt.top_tokens = cfg.top_tokens;
    opt.sink_pages = cfg.sink_pages;
    opt.local_pages = cfg.local_pages;
    opt.routing = RoutingMode::Bound;

    vashista_cache *cache = nullptr;
    REQUIRE(vashista_cache_create(&desc, &cache) == VASHISTA_OK);
    for (int b = 0; b < B; ++b) {
        const int n = p.seqs.seq_lens[b];
        const std::vector<uint8_t> k = ref::token_bytes(p.cache, p.seqs, p.cache.k, b, 0, n);
        const std::vector<uint8_t> v = ref::token_bytes(p.cache, p.seqs, p.cache.v, b, 0, n);
        const vashista_status st = vashista_append(cache, b, 0, n, k.data(), v.data());
        INFO(vashista_last_error());
        REQUIRE(st == VASHISTA_OK);
    }
    // NaN where the kernels must write: an output left unwritten fails the comparison.
    std::vector<float> out(size_t(B) * QH * D, NAN), lse(B * QH, NAN), dense(size_t(B) * QH * D, NAN);
    std::vector<float> dense_lse(B * QH, NAN);
    std::vector<vashista_head_diag> diag(B * QH);
    std::vector<int32_t> cand(size_t(B) * QH * cfg.top_tokens, -7);
    const vashista_status st = vashista_decode_with_candidates(cache, &cfg, p.q.q.data(), QH, p.seqs.seq_lens.data(),
                                                               out.data(), lse.data(), diag.data(), cand.data());
    INFO(vashista_last_error());
    REQUIRE(st == VASHISTA_OK);
    const vashista_status dst =
        vashista_dense(cache, p.q.q.data(), QH, p.seqs.seq_lens.data(), 0.0f, dense.data(), dense_lse.data());
    INFO(vashista_last_error());
    REQUIRE(dst == VASHISTA_OK);
    vashista_cache_destroy(cache);
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int g = 0; g < G; ++g) {
                const ref::HeadResult r = ref::sparse_head(p.cache, p.seqs, p.q, sum, opt, b, h, g);
                const ref::DenseResult rd = ref::dense_head(p.cache, p.seqs, p.q, 0.0, b, h, g);
                const size_t i = (size_t(b) * H + h) * G + g;
                INFO("sequence " << b << ", head " << h << "." << g);
                for (int c = 0; c < cfg.top_tokens; ++c)
                    REQUIRE(cand[i * cfg.top_tokens + c] == (c < int(r.candidates.size()) ? r.candidates[c] : -1));
                for (int d = 0; d < D; ++d) {
                    REQUIRE(out[i * D + d] == Approx(r.out[d]).margin(1e-4));
                    REQUIRE(dense[i * D + d] == Approx(rd.out[d]).margin(1e-4));
                }
                REQUIRE(lse[i] == Approx(r.lse).margin(1e-4));
                REQUIRE(dense_lse[i] == Approx(rd.lse).margin(1e-4));
                REQUIRE(diag[i].error_bound == Approx(r.error_bound).epsilon(1e-3).margin(1e-6));
            }
}

}  // namespace vashista::testing
