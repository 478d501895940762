// One kernel library for many CPUs: every variant of vashista_multitarget_kernels is compiled
// for AVX-512, AVX2 and baseline x86-64, and a call runs the best one the CPU supports.
// Halide's CPU-feature query is narrowed (halide_set_custom_can_use_target_features) to
// the ISA level in VASHISTA_FORCE_ISA_LEVEL (2 AVX-512, 1 AVX2, 0 baseline); ctest runs
// this once per level, since a multi-target kernel picks its code once per process.
// Every kernel must run that level's code and match the reference.
#include "HalideRuntime.h"
#include "problem.h"
#include "reference.h"
#include "vashista.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>
#include <vector>

using namespace vashista;

namespace {

constexpr int H = 2, G = 4, D = 64, S = 16;

// The widest ISA level the feature query admits, and the levels of the code it admitted
// (how many times).
int g_allowed = 2, g_chosen = 0;
std::set<int> g_levels;

bool has(const uint64_t *features, int bit) { return (features[bit / 64] >> (bit % 64)) & 1; }

int level(const uint64_t *features) {
    if (has(features, halide_target_feature_avx512)) return 2;
    if (has(features, halide_target_feature_avx2)) return 1;
    return 0;
}

int narrowed(int count, const uint64_t *features) {
    if (level(features) > g_allowed || !halide_default_can_use_target_features(count, features)) return 0;
    g_levels.insert(level(features));
    ++g_chosen;
    return 1;
}

}  // namespace

TEST_CASE("a multi-target library runs the forced ISA level's code and matches the reference",
          "[runtime][multitarget]") {
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
                             0};
    const char *forced = std::getenv("VASHISTA_FORCE_ISA_LEVEL");
    REQUIRE(forced != nullptr);
    g_allowed = std::atoi(forced);
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    if (g_allowed == 2 && !avx512) {
        // ctest reports this run as skipped (SKIP_REGULAR_EXPRESSION).
        WARN("skipped: this CPU has no AVX-512, so the AVX-512 path cannot run here");
        return;
    }
    INFO("ISA level allowed: " << g_allowed);
    halide_set_custom_can_use_target_features(narrowed);
    const ref::Summaries sum = ref::summarize(p.cache, p.seqs, ref::DType::BF16);
    vashista_decode_config cfg;
    vashista_decode_config_default(&cfg);
    cfg.top_pages = 8;
    cfg.top_tokens = 32;
    cfg.sink_pages = 0;
    cfg.local_pages = 0;
    cfg.policy = VASHISTA_POLICY_NONE;
    ref::SparseOptions opt;
    opt.top_pages = cfg.top_pages;
    opt.top_tokens = cfg.top_tokens;
    opt.routing = RoutingMode::Bound;
    // Append (the summarize kernel), sparse decode and dense, each with this level's code.
    vashista_cache *cache = nullptr;
    REQUIRE(vashista_cache_create(&desc, &cache) == VASHISTA_OK);
    for (int b = 0; b < B; ++b) {
        const int n = p.seqs.seq_lens[b];
        const std::vector<uint8_t> k = ref::token_bytes(p.cache, p.seqs, p.cache.k, b, 0, n);
        const std::vector<uint8_t> v = ref::token_bytes(p.cache, p.seqs, p.cache.v, b, 0, n);
        REQUIRE(vashista_append(cache, b, 0, n, k.data(), v.data()) == VASHISTA_OK);
    }
    std::vector<float> out(size_t(B) * QH * D), lse(B * QH), dense(size_t(B) * QH * D), dense_lse(B * QH);
    std::vector<vashista_head_diag> diag(B * QH);
    std::vector<int32_t> cand(size_t(B) * QH * cfg.top_tokens);
    REQUIRE(vashista_decode_with_candidates(cache, &cfg, p.q.q.data(), QH, p.seqs.seq_lens.data(), out.data(),
                                            lse.data(), diag.data(), cand.data()) == VASHISTA_OK);
    REQUIRE(vashista_dense(cache, p.q.q.data(), QH, p.seqs.seq_lens.data(), 0.0f, dense.data(), dense_lse.data()) ==
            VASHISTA_OK);
    vashista_cache_destroy(cache);
    // A kernel runs the widest of its targets the query admits (it may ask about narrower
    // ones too): the widest admitted is the forced level, except for the baseline, the last
    // target, which a kernel takes without asking.
    if (g_allowed > 0) {
        REQUIRE(g_chosen >= 3);  // summarize, decode and dense asked at least once each
        REQUIRE(*g_levels.rbegin() == g_allowed);
    } else {
        REQUIRE(g_levels.empty());
    }
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int g = 0; g < G; ++g) {
                const ref::HeadResult r = ref::sparse_head(p.cache, p.seqs, p.q, sum, opt, b, h, g);
                const ref::DenseResult rd = ref::dense_head(p.cache, p.seqs, p.q, 0.0, b, h, g);
                const size_t i = (size_t(b) * H + h) * G + g;
                for (int c = 0; c < cfg.top_tokens; ++c)
                    REQUIRE(cand[i * cfg.top_tokens + c] == (c < int(r.candidates.size()) ? r.candidates[c] : -1));
                for (int d = 0; d < D; ++d) {
                    REQUIRE(out[i * D + d] == Approx(r.out[d]).margin(1e-4));
                    REQUIRE(dense[i * D + d] == Approx(rd.out[d]).margin(1e-4));
                }
                REQUIRE(diag[i].error_bound == Approx(r.error_bound).epsilon(1e-3).margin(1e-6));
            }
}
