// What an engine relies on: plan and run with its own workspace, q and out in its dtypes
// and strides, KV it wrote itself (summarize), rollback (truncate), failed calls that change
// nothing, its threads, and caches decoded from several threads at once.
#include "support/abi_fixture.h"
#include "vashista.h"

#include <catch2/catch.hpp>

#include <dirent.h>
#include <unistd.h>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <thread>
#include <utility>
#include <vector>

using namespace vashista;
using namespace vashista::testing;

namespace {

struct Plan {
    vashista_plan *plan = nullptr;
    std::vector<uint8_t> workspace;
    Plan(vashista_cache *cache, const vashista_decode_config &cfg, const vashista_plan_desc &desc) {
        REQUIRE(vashista_plan_create(cache, &cfg, &desc, &plan) == VASHISTA_OK);
        workspace.resize(vashista_plan_workspace_size(plan));
    }
    ~Plan() { vashista_plan_destroy(plan); }
};

// One step's outputs.
struct Step {
    std::vector<float> out, lse;
    std::vector<vashista_head_diag> diag;
    std::vector<int32_t> candidates;
};

Step decode(Fixture &f, const vashista_decode_config &cfg, const std::vector<int32_t> &lens) {
    const int n = f.p.seqs.batch * H * f.G;
    Step s{std::vector<float>(size_t(n) * D), std::vector<float>(n), std::vector<vashista_head_diag>(n),
           std::vector<int32_t>(size_t(n) * cfg.top_tokens)};
    REQUIRE(vashista_decode_with_candidates(f.cache, &cfg, f.p.q.q.data(), H * f.G, lens.data(), s.out.data(),
                                            s.lse.data(), s.diag.data(), s.candidates.data()) == VASHISTA_OK);
    return s;
}

// Bit-identical steps: the same kernels on the same inputs.
void require_same(const Step &a, const Step &b, const char *what = "") {
    INFO(what);
    REQUIRE(a.out == b.out);
    REQUIRE(a.lse == b.lse);
    REQUIRE(a.candidates == b.candidates);
    REQUIRE(a.diag.size() == b.diag.size());
    for (size_t i = 0; i < a.diag.size(); ++i) {
        const vashista_head_diag &x = a.diag[i], &y = b.diag[i];
        REQUIRE(std::memcmp(&x.support_gap, &y.support_gap, 4) == 0);  // NaN-safe bit equality
        REQUIRE(std::memcmp(&x.leakage, &y.leakage, 4) == 0);
        REQUIRE(std::memcmp(&x.error_bound, &y.error_bound, 4) == 0);
        REQUIRE(std::memcmp(&x.fw_gap, &y.fw_gap, 4) == 0);
        REQUIRE(x.candidates == y.candidates);
        REQUIRE(x.policy_taken == y.policy_taken);
        REQUIRE(x.certificate == y.certificate);
        REQUIRE(x.struct_size == y.struct_size);
    }
}

// A step against the reference at `lens` (the test_runtime tolerances): candidates exact,
// outputs within 1e-4, bounds within 0.1%.
void require_reference(const Fixture &f, const Step &s, const vashista_decode_config &cfg,
                       const std::vector<int32_t> &lens) {
    ref::Sequences seqs = f.p.seqs;
    seqs.seq_lens = lens;
    const ref::Summaries sum = ref::summarize(f.p.cache, seqs, ref::DType(int(f.summary_dtype)));
    const ref::SparseOptions opt = options_of(cfg);
    for (int b = 0; b < seqs.batch; ++b)
        for (int h = 0; h < H; ++h)
            for (int g = 0; g < f.G; ++g) {
                const ref::HeadResult r = ref::sparse_head(f.p.cache, seqs, f.p.q, sum, opt, b, h, g);
                const size_t i = (size_t(b) * H + h) * f.G + g;
                for (int d = 0; d < D; ++d) REQUIRE(s.out[i * D + d] == Approx(r.out[d]).margin(1e-4));
                for (int c = 0; c < cfg.top_tokens; ++c)
                    REQUIRE(s.candidates[i * cfg.top_tokens + c] ==
                            (c < int(r.candidates.size()) ? r.candidates[c] : -1));
                REQUIRE(s.diag[i].error_bound == Approx(r.error_bound).epsilon(1e-3).margin(1e-6));
            }
}

vashista_decode_config report_only() {
    vashista_decode_config cfg = default_config();
    cfg.policy = VASHISTA_POLICY_NONE;
    return cfg;
}

// CPU time (ns) each thread of this process has run, by thread id (Linux schedstat).
std::map<long, long long> thread_cpu_ns() {
    std::map<long, long long> t;
    DIR *dir = opendir("/proc/self/task");
    REQUIRE(dir != nullptr);
    while (dirent *e = readdir(dir)) {
        if (e->d_name[0] == '.') continue;
        std::ifstream in(std::string("/proc/self/task/") + e->d_name + "/schedstat");
        long long ns = 0;
        if (in >> ns) t[std::stol(e->d_name)] = ns;
    }
    closedir(dir);
    return t;
}

// CPU time run by threads other than this one between two snapshots.
long long other_threads_ns(const std::map<long, long long> &before, const std::map<long, long long> &after) {
    const long self = long(gettid());
    long long sum = 0;
    for (const auto &[tid, ns] : after)
        if (tid != self) sum += ns - (before.count(tid) ? before.at(tid) : 0);
    return sum;
}

}  // namespace

TEST_CASE("plan and run give the one-call API's results and check the workspace", "[runtime][engine]") {
    Fixture f(4, {3000, 777});
    const vashista_decode_config cfg = report_only();
    const Step want = decode(f, cfg, f.p.seqs.seq_lens);
    vashista_plan_desc pd;
    vashista_plan_desc_default(&pd, H * 4);
    Plan plan(f.cache, cfg, pd);
    const int n = 2 * H * 4;
    Step got{std::vector<float>(size_t(n) * D), std::vector<float>(n), std::vector<vashista_head_diag>(n),
             std::vector<int32_t>(size_t(n) * cfg.top_tokens)};
    for (int repeat = 0; repeat < 2; ++repeat)
        REQUIRE(vashista_run(plan.plan, plan.workspace.data(), plan.workspace.size(), nullptr, f.p.q.q.data(),
                             f.p.seqs.seq_lens.data(), got.out.data(), got.lse.data(), got.diag.data(),
                             got.candidates.data()) == VASHISTA_OK);
    require_same(want, got);
    REQUIRE(got.diag[0].struct_size == sizeof(vashista_head_diag));

    // A workspace one byte short is refused before anything is written.
    std::vector<float> out(got.out.size(), 7.0f);
    REQUIRE(vashista_run(plan.plan, plan.workspace.data(), plan.workspace.size() - 1, nullptr, f.p.q.q.data(),
                         f.p.seqs.seq_lens.data(), out.data(), nullptr, nullptr,
                         nullptr) == VASHISTA_ERROR_INVALID_ARGUMENT);
    REQUIRE_THAT(vashista_last_error(), Catch::Contains("is below vashista_plan_workspace_size"));
    REQUIRE(std::all_of(out.begin(), out.end(), [](float x) { return x == 7.0f; }));
    // A workspace at an odd address works (the library aligns within it).
    std::vector<uint8_t> odd(plan.workspace.size() + 1);
    REQUIRE(vashista_run(plan.plan, odd.data() + 1, plan.workspace.size(), nullptr, f.p.q.q.data(),
                         f.p.seqs.seq_lens.data(), out.data(), nullptr, nullptr, nullptr) == VASHISTA_OK);
    REQUIRE(out == want.out);

    // Bad plan descriptions and configs name the field.
    vashista_plan *bad = nullptr;
    vashista_plan_desc wrong = pd;
    wrong.struct_size = sizeof(vashista_plan_desc) - 8;
    REQUIRE(vashista_plan_create(f.cache, &cfg, &wrong, &bad) == VASHISTA_ERROR_INVALID_ARGUMENT);
    REQUIRE_THAT(vashista_last_error(), Catch::Contains("desc->struct_size = "));
    REQUIRE(bad == nullptr);
    wrong = pd;
    wrong.q_heads = 7;
    REQUIRE(vashista_plan_create(f.cache, &cfg, &wrong, &bad) == VASHISTA_ERROR_SHAPE_MISMATCH);
    REQUIRE_THAT(vashista_last_error(), Catch::Contains("desc->q_heads = 7"));
    wrong = pd;
    wrong.q_stride_head = D - 1;
    REQUIRE(vashista_plan_create(f.cache, &cfg, &wrong, &bad) == VASHISTA_ERROR_INVALID_ARGUMENT);
    REQUIRE_THAT(vashista_last_error(), Catch::Contains("q_stride_head = 127 make rows of 128 elements overlap"));
    // Found by the fuzzer: sequences one element apart overlap (q was read, out would race).
    wrong = pd;
    wrong.out_stride_seq = 1;
    REQUIRE(vashista_plan_create(f.cache, &cfg, &wrong, &bad) == VASHISTA_ERROR_INVALID_ARGUMENT);
    REQUIRE_THAT(vashista_last_error(), Catch::Contains("desc->out_stride_seq = 1 and out_stride_head = 0 make rows"));
    // Heads outermost ([heads][sequences][D]) is a layout, not an overlap.
    wrong = pd;
    wrong.q_stride_seq = D;
    wrong.q_stride_head = 2 * D;
    REQUIRE(vashista_plan_create(f.cache, &cfg, &wrong, &bad) == VASHISTA_OK);
    vashista_plan_destroy(bad);
    bad = nullptr;
    wrong = pd;
    store_raw(wrong.out_dtype, 7);  // found by the fuzzer: read as an enum, UB
    REQUIRE(vashista_plan_create(f.cache, &cfg, &wrong, &bad) == VASHISTA_ERROR_INVALID_ARGUMENT);
    REQUIRE_THAT(vashista_last_error(), Catch::Contains("desc->out_dtype = 7 is not a vashista_dtype"));
    wrong = pd;
    wrong.q_dtype = VASHISTA_DTYPE_I8;  // a summary dtype only
    REQUIRE(vashista_plan_create(f.cache, &cfg, &wrong, &bad) == VASHISTA_ERROR_INVALID_ARGUMENT);
    REQUIRE_THAT(vashista_last_error(), Catch::Contains("desc->q_dtype = 3 is not a vashista_dtype of elements"));
    vashista_decode_config old = cfg;
    old.struct_size = 0;
    REQUIRE(vashista_plan_create(f.cache, &old, &pd, &bad) == VASHISTA_ERROR_INVALID_ARGUMENT);
    REQUIRE_THAT(vashista_last_error(),
                 Catch::Contains("config->struct_size = 0 is not sizeof(vashista_decode_config)"));
    REQUIRE(vashista_abi_version() == VASHISTA_ABI_VERSION);
}

TEST_CASE("q and out in bf16 and f16 with an engine's strides", "[runtime][engine]") {
    // q values exactly representable in bf16, so the bf16 and f32 plans see the same query.
    Fixture f(4, {2000, 900}, ref::DataKind::Planted, KvLayout::HND, [](ref::Problem &p) {
        for (float &x : p.q.q) x = ref::round_to(DType::BF16, x);
    });
    const vashista_decode_config cfg = report_only();
    const int B = 2, QH = H * 4;
    const Step want = decode(f, cfg, f.p.seqs.seq_lens);
    // [tokens][heads][D] with padding: heads 136 elements apart, tokens 1200.
    const int64_t head_stride = D + 8, seq_stride = 1200;
    std::vector<uint16_t> q(size_t(B) * seq_stride, 0xffff);  // padding holds NaN: never read
    for (int b = 0; b < B; ++b)
        for (int hq = 0; hq < QH; ++hq)
            for (int x = 0; x < D; ++x)
                q[b * seq_stride + hq * head_stride + x] =
                    to_bits16(DType::BF16, f.p.q.q[(size_t(b) * QH + hq) * D + x]);
    for (vashista_dtype out_type : {VASHISTA_DTYPE_F16, VASHISTA_DTYPE_BF16, VASHISTA_DTYPE_F32}) {
        INFO("out dtype " << out_type);
        vashista_plan_desc pd;
        vashista_plan_desc_default(&pd, QH);
        pd.q_dtype = VASHISTA_DTYPE_BF16;
        pd.out_dtype = out_type;
        pd.q_stride_seq = seq_stride;
        pd.q_stride_head = head_stride;
        pd.out_stride_seq = seq_stride;
        pd.out_stride_head = head_stride;
        Plan plan(f.cache, cfg, pd);
        std::vector<uint8_t> out(size_t(B) * seq_stride * 4, 0x77);
        std::vector<float> lse(B * QH);
        REQUIRE(vashista_run(plan.plan, plan.workspace.data(), plan.workspace.size(), nullptr, q.data(),
                             f.p.seqs.seq_lens.data(), out.data(), lse.data(), nullptr, nullptr) == VASHISTA_OK);
        REQUIRE(lse == want.lse);
        const int bytes = out_type == VASHISTA_DTYPE_F32 ? 4 : 2;
        for (int b = 0; b < B; ++b)
            for (int hq = 0; hq < QH; ++hq)
                for (int x = 0; x < D + 8; ++x) {
                    const uint8_t *at = out.data() + (b * seq_stride + hq * head_stride + x) * bytes;
                    if (x >= D) {  // padding between heads is left alone
                        REQUIRE(at[0] == 0x77);
                        continue;
                    }
                    const float w = want.out[(size_t(b) * QH + hq) * D + x];
                    if (out_type == VASHISTA_DTYPE_F32) {
                        float v;
                        std::memcpy(&v, at, 4);
                        REQUIRE(v == w);
                    } else {
                        uint16_t v;
                        std::memcpy(&v, at, 2);
                        REQUIRE(v == to_bits16(DType(out_type), w));
                    }
                }
    }
    // A NaN in q is found through the strides and named by its position.
    q[1 * seq_stride + 3 * head_stride + 5] = 0x7fc0;
    vashista_plan_desc pd;
    vashista_plan_desc_default(&pd, QH);
    pd.q_dtype = VASHISTA_DTYPE_BF16;
    pd.q_stride_seq = seq_stride;
    pd.q_stride_head = head_stride;
    Plan plan(f.cache, cfg, pd);
    std::vector<float> out(size_t(B) * QH * D, 7.0f);
    REQUIRE(vashista_run(plan.plan, plan.workspace.data(), plan.workspace.size(), nullptr, q.data(),
                         f.p.seqs.seq_lens.data(), out.data(), nullptr, nullptr, nullptr) == VASHISTA_ERROR_NON_FINITE);
    REQUIRE_THAT(vashista_last_error(), Catch::Contains("q[1][3][5]"));
    REQUIRE(std::all_of(out.begin(), out.end(), [](float x) { return x == 7.0f; }));
}

TEST_CASE("a wide block table changes nothing but the table", "[runtime][engine]") {
    // The same sequences through a table of their own width and one 8x wider, with every
    // extra column pointing out of range: a step reads only the columns of pages in use.
    Fixture f(4, {3000, 777});
    const vashista_decode_config cfg = report_only();
    const Step want = decode(f, cfg, f.p.seqs.seq_lens);
    const int B = 2, M = f.p.seqs.max_pages, wide_m = 8 * M;
    std::vector<int32_t> wide(size_t(B) * wide_m, 1 << 30);
    for (int b = 0; b < B; ++b) std::copy_n(&f.p.seqs.page_table[size_t(b) * M], M, &wide[size_t(b) * wide_m]);
    Fixture g(4, {3000, 777});
    // g's cache is described with the wide table (same pages), appended through it.
    vashista_cache_desc desc = g.describe();
    desc.max_pages = wide_m;
    desc.page_table = wide.data();
    vashista_cache *cache = nullptr;
    REQUIRE(vashista_cache_create(&desc, &cache) == VASHISTA_OK);
    for (int b = 0; b < B; ++b) {
        const int len = f.p.seqs.seq_lens[b];
        auto k = g.tokens(g.p.cache.k, b, 0, len), v = g.tokens(g.p.cache.v, b, 0, len);
        REQUIRE(vashista_append(cache, b, 0, len, k.data(), v.data()) == VASHISTA_OK);
    }
    vashista_cache_destroy(g.cache);
    g.cache = cache;
    require_same(want, decode(g, cfg, f.p.seqs.seq_lens));
}

TEST_CASE("summarize reads KV the engine wrote and truncate rolls back", "[runtime][engine]") {
    const vashista_decode_config cfg = report_only();
    // bf16 summaries, with and without a sketch (sketch routing), and int8 summaries.
    for (const auto &[sketch, summary] :
         {std::pair{0, VASHISTA_DTYPE_BF16}, std::pair{8, VASHISTA_DTYPE_BF16}, std::pair{0, VASHISTA_DTYPE_I8}}) {
        INFO("sketch bits " << sketch << ", summary dtype " << summary);
        Fixture f(4, {3000, 777}, ref::DataKind::Planted, KvLayout::HND, {}, sketch, summary);
        vashista_decode_config c = cfg;
        if (sketch) c.routing = VASHISTA_ROUTING_SKETCH;
        const Step want = decode(f, c, f.p.seqs.seq_lens);

        // The engine writes the pages itself (here: a copy of what append wrote) and
        // summarizes in uneven chunks.
        Fixture g(4, {1, 1}, ref::DataKind::Planted, KvLayout::HND, {}, sketch, summary);
        g.p = f.p;
        g.k_pages = f.k_pages;
        g.v_pages = f.v_pages;
        vashista_cache_desc desc = g.describe();
        vashista_cache *cache = nullptr;
        REQUIRE(vashista_cache_create(&desc, &cache) == VASHISTA_OK);
        vashista_cache_destroy(g.cache);
        g.cache = cache;
        for (int b = 0; b < 2; ++b)
            for (int start = 0; start < f.p.seqs.seq_lens[b];) {
                const int n = std::min(f.p.seqs.seq_lens[b] - start, 1 + (start * 11) % 61);
                REQUIRE(vashista_summarize(g.cache, b, start, n) == VASHISTA_OK);
                start += n;
            }
        require_same(want, decode(g, c, f.p.seqs.seq_lens), "summarized");

        // Truncated to 2500 tokens, the cache describes exactly those (the cut page's summary
        // recomputed without the tokens past the cut).
        REQUIRE(vashista_truncate(g.cache, 0, 2500) == VASHISTA_OK);
        REQUIRE(vashista_appended_tokens(g.cache, 0) == 2500);
        const std::vector<int32_t> cut{2500, 777};
        std::vector<int32_t> too_long{2501, 777};
        std::vector<float> out(want.out.size());
        REQUIRE(vashista_decode(g.cache, &c, g.p.q.q.data(), H * 4, too_long.data(), out.data(), nullptr, nullptr) ==
                VASHISTA_ERROR_OUT_OF_RANGE);
        require_reference(g, decode(g, c, cut), c, cut);
        // Rolling back a speculative step: 7 tokens whose keys are 8 in every channel widen
        // the cut page's box past any real key; after the rollback no trace of them is left.
        std::vector<uint16_t> k(size_t(7) * H * D, to_bits16(DType::BF16, 8.0f)), v = k;
        REQUIRE(vashista_append(g.cache, 0, 2500, 7, k.data(), v.data()) == VASHISTA_OK);
        REQUIRE(vashista_truncate(g.cache, 0, 2500) == VASHISTA_OK);
        require_reference(g, decode(g, c, cut), c, cut);
        k = f.tokens(f.p.cache.k, 0, 2500, 500);
        v = f.tokens(f.p.cache.v, 0, 2500, 500);
        REQUIRE(vashista_append(g.cache, 0, 2500, 500, k.data(), v.data()) == VASHISTA_OK);
        require_same(want, decode(g, c, f.p.seqs.seq_lens), "rolled back");

        REQUIRE(vashista_truncate(g.cache, 0, 3001) == VASHISTA_ERROR_INVALID_ARGUMENT);
        REQUIRE_THAT(vashista_last_error(), Catch::Contains("new_len = 3001 is not in [0, tokens appended = 3000]"));
        REQUIRE(vashista_summarize(g.cache, 1, 778, 4) == VASHISTA_ERROR_INVALID_ARGUMENT);
        REQUIRE_THAT(vashista_last_error(), Catch::Contains("start = 778"));
    }
}

TEST_CASE("a page sequences share has one summary: vashista_share_prefix, memory by num_pages", "[runtime][engine]") {
    const vashista_decode_config c = report_only();
    const int prefix = 768;  // 48 full pages of sequence 0 that sequence 1 maps too
    auto share = [&](ref::Problem &p) {
        for (int j = 0; j < prefix / S; ++j) p.seqs.page_table[size_t(p.seqs.max_pages) + j] = p.seqs.page_table[j];
    };
    Fixture f(4, {3000, 777}, ref::DataKind::Planted, KvLayout::HND, share);  // both appended in full
    const Step want = decode(f, c, f.p.seqs.seq_lens);
    require_reference(f, want, c, f.p.seqs.seq_lens);

    // The engine wrote the pages; sequence 0 is summarized, sequence 1 takes the prefix as it
    // is and summarizes only its own 9 tokens.
    Fixture g(4, {1, 1});
    g.p = f.p;
    g.k_pages = f.k_pages;
    g.v_pages = f.v_pages;
    vashista_cache_desc desc = g.describe();
    vashista_cache *cache = nullptr;
    REQUIRE(vashista_cache_create(&desc, &cache) == VASHISTA_OK);
    vashista_cache_destroy(g.cache);
    g.cache = cache;
    REQUIRE(vashista_summarize(g.cache, 0, 0, 3000) == VASHISTA_OK);
    REQUIRE(vashista_share_prefix(g.cache, 1, prefix + 1) == VASHISTA_ERROR_INVALID_ARGUMENT);
    REQUIRE_THAT(vashista_last_error(), Catch::Contains("sequence 1 page 48 (physical page " +
                                                        std::to_string(g.p.seqs.page_table[g.p.seqs.max_pages + 48]) +
                                                        ") holds 1 of its tokens but has a summary of 0"));
    REQUIRE(vashista_appended_tokens(g.cache, 1) == 0);
    REQUIRE(vashista_share_prefix(g.cache, 1, prefix) == VASHISTA_OK);
    REQUIRE(vashista_appended_tokens(g.cache, 1) == prefix);
    REQUIRE(vashista_summarize(g.cache, 1, prefix, 777 - prefix) == VASHISTA_OK);
    require_same(want, decode(g, c, f.p.seqs.seq_lens), "shared prefix");

    // The cache's memory: per physical page and KV head 3 x D bf16 summary values and two
    // f32 bounds, and per page an int32 count and a uint64 epoch; the block table's width does
    // not enter (without super-pages).
    vashista_cache_desc wider = desc;
    wider.max_pages *= 8;
    REQUIRE(vashista_cache_memory_size(&wider) == vashista_cache_memory_size(&desc));
    vashista_cache_desc more_pages = desc;
    more_pages.num_pages *= 2;
    REQUIRE(vashista_cache_memory_size(&more_pages) - vashista_cache_memory_size(&desc) ==
            size_t(desc.num_pages) * (H * (3 * D * 2 + 2 * 4) + 4 + 8));
    vashista_cache_desc bad = desc;
    bad.head_dim = 0;
    REQUIRE(vashista_cache_memory_size(&bad) == 0);
    REQUIRE(vashista_cache_memory_size(nullptr) == 0);
}

namespace {

// An engine's parallel-for: runs the tasks on the calling thread and counts the loops; fails
// every loop while `fail_loops` is set.
struct EnginePool {
    std::atomic<int> loops{0};
    std::atomic<bool> fail_loops{false};
};

int engine_parallel_for(void *engine_ctx, int32_t count, vashista_task_fn task, void *task_ctx) {
    auto *pool = static_cast<EnginePool *>(engine_ctx);
    ++pool->loops;
    if (pool->fail_loops) return -1;
    for (int32_t i = 0; i < count; ++i)
        if (int rc = task(task_ctx, i)) return rc;
    return 0;
}

}  // namespace

TEST_CASE("an engine's parallel-for runs the kernels and a failed append changes nothing", "[runtime][engine]") {
    Fixture f(4, {3000, 777});
    const vashista_decode_config cfg = report_only();
    const Step want = decode(f, cfg, f.p.seqs.seq_lens);
    EnginePool pool;
    vashista_set_parallel_for(engine_parallel_for, &pool);
    const Step got = decode(f, cfg, f.p.seqs.seq_lens);
    const int decode_loops = pool.loops;

    // The summary step fails: the token count, the pages and the summaries stay as they were.
    const std::vector<uint8_t> k_before = f.k_pages, v_before = f.v_pages;
    auto k = f.tokens(f.p.cache.v, 0, 100, 20), v = f.tokens(f.p.cache.k, 0, 100, 20);
    pool.fail_loops = true;
    const int before = pool.loops;
    const vashista_status append = vashista_append(f.cache, 0, 100, 20, k.data(), v.data());
    const int append_loops = pool.loops - before;
    const std::string message = vashista_last_error();
    const vashista_status summarize = vashista_summarize(f.cache, 0, 2990, 10);
    pool.fail_loops = false;
    vashista_set_parallel_for(nullptr, nullptr);
    REQUIRE(decode_loops > 0);
    require_same(want, got);
    REQUIRE(append_loops > 0);  // the summary kernel ran its loop on the engine's pool
    REQUIRE(append == VASHISTA_ERROR_KERNEL);
    REQUIRE_THAT(message, Catch::Contains("returned Halide error"));
    REQUIRE(summarize == VASHISTA_ERROR_KERNEL);
    REQUIRE(vashista_appended_tokens(f.cache, 0) == 3000);
    REQUIRE(f.k_pages == k_before);
    REQUIRE(f.v_pages == v_before);
    require_same(want, decode(f, cfg, f.p.seqs.seq_lens));
}

TEST_CASE("one thread: no other thread runs while the library decodes", "[runtime][engine]") {
    Fixture f(4, {3000, 3000});
    const vashista_decode_config cfg = report_only();
    auto work = [&] {
        for (int i = 0; i < 30; ++i) decode(f, cfg, f.p.seqs.seq_lens);
    };
    work();  // the pool's threads exist from here on
    const int32_t was = vashista_set_num_threads(0);
    REQUIRE(was >= 0);
    auto t0 = thread_cpu_ns();
    work();
    const long long pooled = other_threads_ns(t0, thread_cpu_ns());
    vashista_set_num_threads(1);
    decode(f, cfg, f.p.seqs.seq_lens);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the pool's threads stop spinning
    t0 = thread_cpu_ns();
    work();
    const long long single = other_threads_ns(t0, thread_cpu_ns());
    vashista_set_num_threads(was);
    INFO("CPU time of other threads: pooled " << pooled << " ns, one thread " << single << " ns");
    if (std::thread::hardware_concurrency() > 1) REQUIRE(pooled > 0);  // the measurement sees the pool
    REQUIRE(single == 0);
    REQUIRE(vashista_set_num_threads(-1) == -1);
}

TEST_CASE("caches decoded from several threads at once give the serial results", "[runtime][engine]") {
    constexpr int kThreads = 4;
    std::vector<std::unique_ptr<Fixture>> caches;
    std::vector<Step> serial;
    const vashista_decode_config cfg = report_only();
    for (int t = 0; t < kThreads; ++t) {
        caches.push_back(std::make_unique<Fixture>(4, std::vector<int>{1500 + 300 * t, 400 + t}));
        serial.push_back(decode(*caches.back(), cfg, caches.back()->p.seqs.seq_lens));
    }
    std::vector<std::vector<float>> outs(kThreads);
    std::vector<int> failures(kThreads, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&, t] {
            Fixture &f = *caches[t];
            std::vector<float> out(serial[t].out.size());
            for (int i = 0; i < 10; ++i) {
                if (vashista_decode(f.cache, &cfg, f.p.q.q.data(), H * 4, f.p.seqs.seq_lens.data(), out.data(), nullptr,
                                    nullptr) != VASHISTA_OK ||
                    out != serial[t].out)
                    ++failures[t];
            }
            outs[t] = out;
        });
    for (auto &th : threads) th.join();
    for (int t = 0; t < kThreads; ++t) {
        INFO("thread " << t);
        REQUIRE(failures[t] == 0);
        REQUIRE(outs[t] == serial[t].out);
    }
}

TEST_CASE("dense scores past f32's range are an error, not a non-finite output", "[runtime][engine]") {
    // Found by the fuzzer: vashista_dense returned OK with NaN outputs for scale = 1e30.
    Fixture f(4, {300, 77});
    std::vector<float> out(size_t(2) * H * 4 * D, 7.0f), lse(2 * H * 4, 7.0f);
    REQUIRE(vashista_dense(f.cache, f.p.q.q.data(), H * 4, f.p.seqs.seq_lens.data(), 1e30f, out.data(), lse.data()) ==
            VASHISTA_ERROR_NON_FINITE);
    REQUIRE_THAT(vashista_last_error(), Catch::Contains("dense output of sequence 0 query head 0 is not finite"));
    REQUIRE(std::all_of(out.begin(), out.end(), [](float x) { return x == 7.0f; }));
    REQUIRE(std::all_of(lse.begin(), lse.end(), [](float x) { return x == 7.0f; }));
}
