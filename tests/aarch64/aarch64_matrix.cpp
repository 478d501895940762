// Runs on AArch64 (here under qemu-user-static): every variant of the cross-built library
// vashista_arm (CMakeLists.txt lists them) through the C ABI, against the reference on
// synthetic problems with partial pages: exact candidate sets, outputs within 1e-4, the
// certificate's bound within 1e-3 of the reference's, and dense. Prints
// "N passed, M failed" and exits non-zero on any failure.
#include "problem.h"
#include "reference.h"
#include "vashista.h"

#include <cmath>
#include <cstdio>
#include <vector>

using namespace vashista;

namespace {

constexpr int H = 2, D = 64, S = 16;

struct Case {
    ref::DType dtype;
    KvLayout layout;
    int group;
    RoutingMode routing;
    Solver solver;
    GroupRouting group_routing;
    int sink, local;
};

vashista_dtype abi_dtype(ref::DType t) {
    return t == ref::DType::F32 ? VASHISTA_DTYPE_F32 : t == ref::DType::F16 ? VASHISTA_DTYPE_F16 : VASHISTA_DTYPE_BF16;
}

int passed = 0, failed = 0;  // heads (and calls)
int problems = 0;            // mismatches, the first 20 printed

void check(bool ok, const char *what, int c, int head, double got, double want) {
    if (ok) return;
    if (problems < 20) std::printf("case %d head %d: %s = %g, reference %g\n", c, head, what, got, want);
    ++problems;
}

void run_case(int index, const Case &k) {
    ref::ProblemSpec spec;
    spec.kv_heads = H;
    spec.group = k.group;
    spec.head_dim = D;
    spec.seq_lens = {300, 37};
    spec.layout = k.layout;
    spec.dtype = k.dtype;
    spec.kind = ref::DataKind::Planted;
    spec.needle_score = 30;
    spec.seed = 7 + index;
    const ref::Problem p = ref::make_problem(spec);
    const size_t bytes = k.dtype == ref::DType::F32 ? 4 : 2;
    std::vector<uint8_t> k_pages(p.cache.k.size() * bytes), v_pages(p.cache.v.size() * bytes);
    const bool sketch = k.routing == RoutingMode::Sketch;
    const int B = p.seqs.batch, QH = H * k.group;
    vashista_cache_desc desc{sizeof(vashista_cache_desc),
                             B,
                             H,
                             D,
                             S,
                             p.cache.num_pages,
                             p.seqs.max_pages,
                             abi_dtype(k.dtype),
                             abi_dtype(k.dtype),
                             k.layout == KvLayout::HND ? VASHISTA_LAYOUT_HND : VASHISTA_LAYOUT_NHD,
                             k_pages.data(),
                             v_pages.data(),
                             p.seqs.page_table.data(),
                             sketch ? kSketchBitsDefault : 0,
                             sketch ? kSketchGroupDefault : 0,
                             0};
    vashista_cache *cache = nullptr;
    if (vashista_cache_create(&desc, &cache) != VASHISTA_OK) {
        std::printf("case %d: vashista_cache_create: %s\n", index, vashista_last_error());
        ++failed;
        return;
    }
    for (int b = 0; b < B; ++b) {
        const int n = p.seqs.seq_lens[b];
        const auto kb = ref::token_bytes(p.cache, p.seqs, p.cache.k, b, 0, n);
        const auto vb = ref::token_bytes(p.cache, p.seqs, p.cache.v, b, 0, n);
        if (vashista_append(cache, b, 0, n, kb.data(), vb.data()) != VASHISTA_OK) {
            std::printf("case %d: vashista_append: %s\n", index, vashista_last_error());
            ++failed;
        }
    }
    vashista_decode_config cfg;
    vashista_decode_config_default(&cfg);
    cfg.top_pages = 8;
    cfg.top_tokens = 32;
    cfg.routing = k.routing == RoutingMode::Mean     ? VASHISTA_ROUTING_MEAN
                  : k.routing == RoutingMode::Sketch ? VASHISTA_ROUTING_SKETCH
                                                     : VASHISTA_ROUTING_BOUND;
    cfg.solver = k.solver == Solver::EG          ? VASHISTA_SOLVER_EG
                 : k.solver == Solver::Sparsemax ? VASHISTA_SOLVER_SPARSEMAX
                                                 : VASHISTA_SOLVER_SOFTMAX;
    cfg.group_routing = k.group_routing == GroupRouting::Shared ? VASHISTA_GROUP_SHARED : VASHISTA_GROUP_PER_HEAD;
    cfg.sink_pages = k.sink;
    cfg.local_pages = k.local;
    cfg.policy = VASHISTA_POLICY_NONE;
    std::vector<float> out(size_t(B) * QH * D), lse(B * QH);
    std::vector<vashista_head_diag> diag(B * QH);
    std::vector<int32_t> cand(size_t(B) * QH * cfg.top_tokens);
    if (vashista_decode_with_candidates(cache, &cfg, p.q.q.data(), QH, p.seqs.seq_lens.data(), out.data(), lse.data(),
                                        diag.data(), cand.data()) != VASHISTA_OK) {
        std::printf("case %d: vashista_decode_with_candidates: %s\n", index, vashista_last_error());
        ++failed;
        vashista_cache_destroy(cache);
        return;
    }
    const ref::Summaries sum = ref::summarize(p.cache, p.seqs, k.dtype);
    ref::SparseOptions opt;
    opt.top_pages = cfg.top_pages;
    opt.top_tokens = cfg.top_tokens;
    opt.routing = k.routing;
    opt.solver = k.solver;
    opt.group_routing = k.group_routing;
    opt.sink_pages = k.sink;
    opt.local_pages = k.local;
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int g = 0; g < k.group; ++g) {
                const ref::HeadResult r = ref::sparse_head(p.cache, p.seqs, p.q, sum, opt, b, h, g);
                const int i = (b * H + h) * k.group + g;
                const int before = problems;
                for (int c = 0; c < cfg.top_tokens; ++c) {
                    const int want = c < int(r.candidates.size()) ? r.candidates[c] : -1;
                    check(cand[size_t(i) * cfg.top_tokens + c] == want, "candidate", index, i,
                          cand[size_t(i) * cfg.top_tokens + c], want);
                }
                for (int d = 0; d < D; ++d) {
                    const double e = std::abs(out[size_t(i) * D + d] - r.out[d]);
                    check(e <= 1e-4, "out", index, i, out[size_t(i) * D + d], r.out[d]);
                }
                const double bound = diag[i].error_bound;
                check(std::isinf(r.error_bound) ? bound == r.error_bound
                                                : std::abs(bound - r.error_bound) <= 1e-3 * r.error_bound + 1e-6,
                      "error_bound", index, i, bound, r.error_bound);
                ++(problems == before ? passed : failed);
            }
    if (k.dtype == ref::DType::BF16 && k.group == 4 && k.routing == RoutingMode::Bound) {
        std::vector<float> dense(size_t(B) * QH * D), dense_lse(B * QH);
        if (vashista_dense(cache, p.q.q.data(), QH, p.seqs.seq_lens.data(), 0.0f, dense.data(), dense_lse.data()) !=
            VASHISTA_OK) {
            std::printf("case %d: vashista_dense: %s\n", index, vashista_last_error());
            ++failed;
        }
        for (int b = 0; b < B; ++b)
            for (int h = 0; h < H; ++h)
                for (int g = 0; g < k.group; ++g) {
                    const ref::DenseResult r = ref::dense_head(p.cache, p.seqs, p.q, 0.0, b, h, g);
                    const int i = (b * H + h) * k.group + g;
                    const int before = problems;
                    for (int d = 0; d < D; ++d)
                        check(std::abs(dense[size_t(i) * D + d] - r.out[d]) <= 1e-4, "dense out", index, i,
                              dense[size_t(i) * D + d], r.out[d]);
                    ++(problems == before ? passed : failed);
                }
    }
    vashista_cache_destroy(cache);
}

}  // namespace

int main() {
    using R = RoutingMode;
    using L = KvLayout;
    const Case cases[] = {
        {ref::DType::BF16, L::HND, 4, R::Bound, Solver::Softmax, GroupRouting::PerHead, 0, 0},
        {ref::DType::BF16, L::HND, 4, R::Mean, Solver::Softmax, GroupRouting::PerHead, 0, 0},
        {ref::DType::BF16, L::HND, 4, R::Sketch, Solver::Softmax, GroupRouting::PerHead, 1, 1},
        {ref::DType::F16, L::NHD, 1, R::Bound, Solver::EG, GroupRouting::PerHead, 0, 0},
        {ref::DType::F32, L::HND, 4, R::Bound, Solver::Sparsemax, GroupRouting::Shared, 0, 0},
        {ref::DType::F32, L::NHD, 1, R::Bound, Solver::Softmax, GroupRouting::PerHead, 1, 2},
    };
    int index = 0;
    for (const Case &k : cases) run_case(index++, k);
    std::printf("aarch64 kernel matrix: %d heads and calls checked, %d mismatches\n%d passed, %d failed\n",
                passed + failed, problems, passed, failed);
    return failed ? 1 : 0;
}
