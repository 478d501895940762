// What an engine pays per step (`make bench-engine`): the default decode through
// vashista_run against the one-call vashista_decode, with allocations per call, and with the
// pages in shuffled physical order and with int8 summaries; a 16K sequence through a block
// table of its own width against one 8x wider (vLLM sizes tables by the model's longest
// context); summary maintenance per appended token; summary memory with a shared prefix. Default
// shape (B=1, H_q=32, H_kv=8, D=128, bf16, S=16, P=64, K_c=128), random keys and values
// written into the pages by the "engine" and summarized in place; cold cache, round-robin,
// median of repeats. JSON in build/engine-bench.json.
#include "alloc_counter.h"
#include "default_problem.h"
#include "measure.h"
#include "method_types.h"
#include "vashista.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace vashista;

constexpr int H = bench::kKvHeads, G = bench::kGroupSize, D = bench::kHeadDim, S = bench::kPageSize;
using bench::check;

// One sequence of `tokens` random bf16 keys and values in HND pages 0..pages-1, a block
// table of `columns` columns (unused ones 0) mapping logical page j to physical page j or
// (shuffled) to a random permutation of them, summarized in place by vashista_summarize.
struct Sequence {
    int tokens, pages;
    std::vector<uint16_t> k, v;
    std::vector<int32_t> table;
    vashista_cache *cache = nullptr;

    Sequence(int tokens_, int columns, std::vector<uint16_t> *share_k = nullptr,
             std::vector<uint16_t> *share_v = nullptr, bool shuffled = false,
             vashista_dtype summary_dtype = VASHISTA_DTYPE_BF16)
        : tokens(tokens_), pages((tokens_ + S - 1) / S), table(columns, 0) {
        for (int j = 0; j < pages; ++j) table[j] = j;
        if (shuffled) std::shuffle(table.begin(), table.begin() + pages, std::mt19937(5));
        if (!share_k) {
            k.resize(size_t(pages) * H * S * D);
            v.resize(k.size());
            std::mt19937 rng(7);
            std::normal_distribution<float> n(0, 1);
            for (auto *x : {&k, &v})
                for (uint16_t &e : *x) e = to_bits16(DType::BF16, n(rng));
        }
        vashista_cache_desc desc{sizeof(vashista_cache_desc),
                                 1,
                                 H,
                                 D,
                                 S,
                                 pages,
                                 columns,
                                 VASHISTA_DTYPE_BF16,
                                 summary_dtype,
                                 VASHISTA_LAYOUT_HND,
                                 share_k ? share_k->data() : k.data(),
                                 share_v ? share_v->data() : v.data(),
                                 table.data(),
                                 0,
                                 0,
                                 0};
        check(vashista_cache_create(&desc, &cache), "vashista_cache_create");
        check(vashista_summarize(cache, 0, 0, tokens), "vashista_summarize");
    }
    ~Sequence() { vashista_cache_destroy(cache); }
};

struct Plan {
    vashista_plan *plan = nullptr;
    std::vector<uint8_t> workspace;
    Plan(vashista_cache *cache, const vashista_decode_config &cfg) {
        vashista_plan_desc pd;
        vashista_plan_desc_default(&pd, H * G);
        check(vashista_plan_create(cache, &cfg, &pd, &plan), "vashista_plan_create");
        workspace.resize(vashista_plan_workspace_size(plan));
    }
    ~Plan() { vashista_plan_destroy(plan); }
    void run(const float *q, const int32_t *lens, float *out) {
        check(vashista_run(plan, workspace.data(), workspace.size(), nullptr, q, lens, out, nullptr, nullptr, nullptr),
              "vashista_run");
    }
};

}  // namespace

int main(int argc, char **argv) {
    int reps = 7, tokens = 131072;
    std::string json_path = "build/engine-bench.json";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) bench::usage_error("missing value after " + a);
            return argv[++i];
        };
        if (a == "--reps")
            reps = std::stoi(value());
        else if (a == "--tokens")
            tokens = std::stoi(value());
        else if (a == "--json")
            json_path = value();
        else if (a == "--help" || a == "-h") {
            std::printf("usage: vashista_engine_bench [--tokens 131072] [--reps 7] [--json build/engine-bench.json]\n");
            return 0;
        } else
            bench::usage_error("unknown argument " + a);
    }
    if (reps < 1 || tokens < S) bench::usage_error("--reps must be >= 1 and --tokens >= 16");
    const double bandwidth = bench::measure_read_bandwidth_gbps();
    std::printf("machine read bandwidth: %.1f GB/s; cache flush %zu MB between runs\n", bandwidth,
                bench::flush_bytes() >> 20);
    bench::Flusher flusher;
    nlohmann::json report;
    report["read_bandwidth_gbps"] = bandwidth;
    vashista_decode_config cfg;
    vashista_decode_config_default(&cfg);
    cfg.policy = VASHISTA_POLICY_NONE;  // the sparse step itself: random data certifies no head
    std::vector<float> q(size_t(H) * G * D), out(q.size());
    std::mt19937 rng(11);
    std::normal_distribution<float> n(0, 1);
    for (float &x : q) x = n(rng);

    {  // 1. The default step through run and through the one-call API.
        std::printf("\n== decode at T = %d: vashista_run against vashista_decode ==\n", tokens);
        Sequence seq(tokens, (tokens + S - 1) / S);
        Plan plan(seq.cache, cfg);
        // The same pages in a shuffled order, as an engine's allocator leaves them: routing
        // reads each page's summary where the page lies.
        Sequence scattered(tokens, (tokens + S - 1) / S, &seq.k, &seq.v, true);
        Plan scattered_plan(scattered.cache, cfg);
        // Compact (int8) summaries of the same pages, in order and shuffled.
        Sequence compact(tokens, (tokens + S - 1) / S, &seq.k, &seq.v, false, VASHISTA_DTYPE_I8);
        Sequence compact_scattered(tokens, (tokens + S - 1) / S, &seq.k, &seq.v, true, VASHISTA_DTYPE_I8);
        Plan compact_plan(compact.cache, cfg), compact_scattered_plan(compact_scattered.cache, cfg);
        const int32_t lens[1] = {tokens};
        auto one_call = [&] {
            check(vashista_decode(seq.cache, &cfg, q.data(), H * G, lens, out.data(), nullptr, nullptr),
                  "vashista_decode");
        };
        auto run = [&] { plan.run(q.data(), lens, out.data()); };
        const std::vector<std::function<void()>> steps{run, one_call,
                                                       [&] { scattered_plan.run(q.data(), lens, out.data()); },
                                                       [&] { compact_plan.run(q.data(), lens, out.data()); },
                                                       [&] { compact_scattered_plan.run(q.data(), lens, out.data()); }};
        const auto times = bench::time_cold_round_robin(reps, flusher, steps);
        const long run_allocs = bench::allocations_in(run), call_allocs = bench::allocations_in(one_call);
        std::printf("vashista_run     %7.3f ms (min %.3f, max %.3f), %ld allocations per call, workspace %.1f MB\n",
                    times[0].median, times[0].min, times[0].max, run_allocs, plan.workspace.size() / 1e6);
        std::printf("vashista_decode  %7.3f ms (min %.3f, max %.3f), %ld allocations per call\n", times[1].median,
                    times[1].min, times[1].max, call_allocs);
        std::printf("vashista_run     %7.3f ms (min %.3f, max %.3f), the pages in shuffled physical order\n",
                    times[2].median, times[2].min, times[2].max);
        std::printf("vashista_run     %7.3f ms (min %.3f, max %.3f), int8 summaries\n", times[3].median, times[3].min,
                    times[3].max);
        std::printf("vashista_run     %7.3f ms (min %.3f, max %.3f), int8 summaries, shuffled pages\n", times[4].median,
                    times[4].min, times[4].max);
        report["decode"] = {{"tokens", tokens},
                            {"run_ms", times[0].median},
                            {"run_min_ms", times[0].min},
                            {"run_max_ms", times[0].max},
                            {"run_allocations", run_allocs},
                            {"one_call_ms", times[1].median},
                            {"one_call_min_ms", times[1].min},
                            {"one_call_max_ms", times[1].max},
                            {"one_call_allocations", call_allocs},
                            {"run_shuffled_pages_ms", times[2].median},
                            {"run_int8_summaries_ms", times[3].median},
                            {"run_int8_summaries_shuffled_pages_ms", times[4].median},
                            {"workspace_bytes", plan.workspace.size()}};

        // 3. Summary maintenance per appended token, at the end of this sequence.
        std::printf("\n== summary maintenance per appended token (T = %d) ==\n", tokens);
        const int appends = 256;
        check(vashista_truncate(seq.cache, 0, tokens - appends), "vashista_truncate");
        bench::Timer summarize_timer;
        for (int t = tokens - appends; t < tokens; ++t) check(vashista_summarize(seq.cache, 0, t, 1), "summarize");
        const double summarize_us = summarize_timer.seconds() * 1e6 / appends;
        check(vashista_truncate(seq.cache, 0, tokens - appends), "vashista_truncate");
        std::vector<uint16_t> kt(size_t(H) * D), vt(kt.size());
        bench::Timer append_timer;
        for (int t = tokens - appends; t < tokens; ++t) {
            const int page = t / S, slot = t % S;
            for (int h = 0; h < H; ++h)
                for (int d = 0; d < D; ++d) {
                    const size_t at = ((size_t(page) * H + h) * S + slot) * D + d;
                    kt[size_t(h) * D + d] = seq.k[at];
                    vt[size_t(h) * D + d] = seq.v[at];
                }
            check(vashista_append(seq.cache, 0, t, 1, kt.data(), vt.data()), "append");
        }
        const double append_us = append_timer.seconds() * 1e6 / appends;
        std::printf("vashista_summarize %.1f us per token, vashista_append %.1f us per token (one token a call)\n",
                    summarize_us, append_us);
        report["maintenance"] = {{"summarize_us_per_token", summarize_us}, {"append_us_per_token", append_us}};
    }

    {  // 2. Work bounded by the sequence, not the block table.
        const int len = 16384, narrow = 1024, wide = 8192;
        std::printf("\n== T = %d through block tables of %d and %d columns ==\n", len, narrow, wide);
        Sequence a(len, narrow);
        Sequence b(len, wide, &a.k, &a.v);
        Plan pa(a.cache, cfg), pb(b.cache, cfg);
        const int32_t lens[1] = {len};
        std::vector<float> out_b(out.size());
        const std::vector<std::function<void()>> steps{[&] { pa.run(q.data(), lens, out.data()); },
                                                       [&] { pb.run(q.data(), lens, out_b.data()); }};
        const auto times = bench::time_cold_round_robin(reps, flusher, steps);
        const bool same = out == out_b;
        std::printf("%d columns %7.3f ms, %d columns %7.3f ms: ratio %.2f, outputs %s\n", narrow, times[0].median, wide,
                    times[1].median, times[1].median / times[0].median, same ? "identical" : "DIFFERENT");
        report["block_table"] = {{"tokens", len},
                                 {"narrow_columns", narrow},
                                 {"wide_columns", wide},
                                 {"narrow_ms", times[0].median},
                                 {"wide_ms", times[1].median},
                                 {"identical", same}};
        if (!same) return 1;
    }
    {  // 4. Summary memory with prefix caching: B = 64 sequences whose 8192-column tables share
       // a 64K-token prefix (4096 pages), each with 64 pages of its own.
        const int batch = 64, columns = 8192, prefix_pages = 4096, own_pages = 64;
        const int num_pages = prefix_pages + batch * own_pages;
        std::vector<int32_t> table(size_t(batch) * columns, 0);
        for (int b = 0; b < batch; ++b) {
            for (int j = 0; j < prefix_pages; ++j) table[size_t(b) * columns + j] = j;
            for (int j = 0; j < own_pages; ++j)
                table[size_t(b) * columns + prefix_pages + j] = prefix_pages + b * own_pages + j;
        }
        uint16_t page_placeholder[1] = {0};  // the pages are not read: the cache is only sized
        vashista_cache_desc desc{sizeof(vashista_cache_desc),
                                 batch,
                                 H,
                                 D,
                                 S,
                                 num_pages,
                                 columns,
                                 VASHISTA_DTYPE_BF16,
                                 VASHISTA_DTYPE_BF16,
                                 VASHISTA_LAYOUT_HND,
                                 page_placeholder,
                                 page_placeholder,
                                 table.data(),
                                 0,
                                 0,
                                 0};
        const size_t bytes = vashista_cache_memory_size(&desc);
        vashista_cache_desc compact_desc = desc;
        compact_desc.summary_dtype = VASHISTA_DTYPE_I8;
        const size_t compact_bytes = vashista_cache_memory_size(&compact_desc);
        vashista_cache *cache = nullptr;
        bench::start_counting_allocations();
        check(vashista_cache_create(&desc, &cache), "vashista_cache_create");
        bench::stop_counting_allocations();
        const long long allocated = bench::counted_bytes();
        vashista_cache_destroy(cache);
        // Summaries per (sequence, logical page), as the cache kept them before: 3 x D bf16 and
        // two f32 bounds per KV head and two int32 per (sequence, page).
        const double per_sequence = double(batch) * columns * (H * (3 * D * 2 + 2 * 4) + 8) + 4.0 * num_pages;
        std::printf("\n== summary memory, B = %d sharing a %d-token prefix, %d-column tables ==\n", batch,
                    prefix_pages * S, columns);
        std::printf(
            "per physical page: %.1f MB (vashista_cache_memory_size; cache_create asked for %.1f MB); "
            "per sequence and logical page it would be %.0f MB; int8 summaries %.1f MB\n",
            bytes / 1e6, allocated / 1e6, per_sequence / 1e6, compact_bytes / 1e6);
        report["summary_memory"] = {{"batch", batch},
                                    {"prefix_tokens", prefix_pages * S},
                                    {"num_pages", num_pages},
                                    {"columns", columns},
                                    {"bytes", bytes},
                                    {"allocated_bytes", allocated},
                                    {"per_sequence_layout_bytes", per_sequence},
                                    {"int8_summaries_bytes", compact_bytes}};
    }
    bench::write_json(json_path, report);
    std::printf("\nwrote %s\n", json_path.c_str());
    return 0;
}
