// Where the sparse step's time goes (make bench): the default decode (bound routing over bf16
// summaries, per-head groups) of the bench's shape, compiled with Halide's sampling profiler,
// run cold at each context length; the profiler's time per Func summed into the method's
// stages. A separate program because the profiled kernels carry their own Halide runtime.
#include "measure.h"
#include "problem.h"
#include "vashista.h"

#include <HalideRuntime.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace {

using namespace vashista;

constexpr int H = 8, G = 4, D = 128, S = 16;

void check(vashista_status s, const char *what) {
    if (s != VASHISTA_OK) {
        std::fprintf(stderr, "%s failed: %s: %s\n", what, vashista_status_name(s), vashista_last_error());
        std::exit(2);
    }
}

// The method's stages by the Funcs of the decode definition (generators/algorithm.cpp).
// Routing: the page scores and the top-P pass (route_*); selection: the routed pages' token
// scores and the top-K_c pass (select_*); solve and output: the candidates' exact scores,
// the weights and the value sum; diagnostics: the gap, the leakage and the bound. The first
// matching prefix wins (out_norm is a diagnostic, out the output).
std::string stage_of(const std::string &func) {
    static const std::vector<std::pair<const char *, const char *>> prefixes = {
        {"out_norm", "diagnostics"},     {"q_l1", "diagnostics"},
        {"inside_stats", "diagnostics"}, {"outside_stats", "diagnostics"},
        {"support_gap", "diagnostics"},  {"leakage", "diagnostics"},
        {"error_bound", "diagnostics"},  {"value_norm", "diagnostics"},
        {"record", "diagnostics"},       {"diag", "diagnostics"},
        {"page_rows", "routing"},        {"head_page_score", "routing"},
        {"route_", "routing"},           {"pages", "routing"},
        {"token_", "selection"},         {"select_", "selection"},
        {"cand_location", "selection"},  {"candidates", "selection"},
        {"cand_", "solve+output"},       {"max_score", "solve+output"},
        {"min_score", "solve+output"},   {"weight", "solve+output"},
        {"alpha", "solve+output"},       {"out", "solve+output"},
        {"lse", "solve+output"},         {"waiting for parallel tasks", "waiting on parallel tasks"},
        {"halide_malloc", "allocation"}, {"halide_free", "allocation"}};
    for (const auto &[prefix, stage] : prefixes)
        if (func.rfind(prefix, 0) == 0) return stage;
    return "other";
}

}  // namespace

int main(int argc, char **argv) {
    std::vector<int> lengths{8192, 32768, 131072};
    int reps = 40;  // a sample every 500 us: some 800 samples at 128K
    std::string json_path = "build/bench-report/stages.json";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc)
            bench::usage_error("usage: vashista_bench_stages [--lengths 8192,...] [--reps 7] [--json F]");
        if (a == "--lengths")
            lengths = bench::parse_int_list(argv[++i]);
        else if (a == "--reps")
            reps = std::stoi(argv[++i]);
        else if (a == "--json")
            json_path = argv[++i];
        else
            bench::usage_error("unknown argument " + a);
    }
    vashista_set_num_threads(2);
    bench::Flusher flusher;
    nlohmann::json out = nlohmann::json::array();
    std::printf(
        "\n== where the sparse step's time goes (bound routing, bf16 summaries, per-head groups; Halide's "
        "sampling profiler, cold, %d runs) ==\n",
        reps);
    for (int T : lengths) {
        ref::ProblemSpec spec;
        spec.kv_heads = H;
        spec.group = G;
        spec.head_dim = D;
        spec.page_size = S;
        spec.seq_lens = {T};
        spec.extra_pages = 0;
        spec.spare_pages = 0;
        spec.kind = ref::DataKind::Planted;
        spec.needle_score = 40.0;
        spec.seed = 42;
        ref::Problem p = ref::make_problem(spec);
        std::vector<uint8_t> k(p.cache.k.size() * 2), v(p.cache.v.size() * 2);
        vashista_cache_desc desc{sizeof(vashista_cache_desc),
                                 1,
                                 H,
                                 D,
                                 S,
                                 p.cache.num_pages,
                                 p.seqs.max_pages,
                                 VASHISTA_DTYPE_BF16,
                                 VASHISTA_DTYPE_BF16,
                                 VASHISTA_LAYOUT_HND,
                                 k.data(),
                                 v.data(),
                                 p.seqs.page_table.data(),
                                 0,
                                 0};
        vashista_cache *cache = nullptr;
        check(vashista_cache_create(&desc, &cache), "vashista_cache_create");
        const auto kb = ref::token_bytes(p.cache, p.seqs, p.cache.k, 0, 0, T);
        const auto vb = ref::token_bytes(p.cache, p.seqs, p.cache.v, 0, 0, T);
        check(vashista_append(cache, 0, 0, T, kb.data(), vb.data()), "vashista_append");
        vashista_decode_config cfg;
        vashista_decode_config_default(&cfg);
        cfg.policy = VASHISTA_POLICY_NONE;
        std::vector<float> o(size_t(H) * G * D);
        const int32_t len = T;
        check(vashista_decode(cache, &cfg, p.q.q.data(), H * G, &len, o.data(), nullptr, nullptr), "warm-up");
        halide_profiler_reset();
        halide_profiler_state *state = halide_profiler_get_state();
        state->sleep_time = 500;  // microseconds between samples (default 1000; the sampler shares the 2 cores)
        for (int r = 0; r < reps; ++r) {
            flusher.flush();
            check(vashista_decode(cache, &cfg, p.q.q.data(), H * G, &len, o.data(), nullptr, nullptr),
                  "vashista_decode");
        }
        // The decode pipeline's Funcs (the other pipelines of a step, if any, are reported whole).
        std::map<std::string, double> stages, funcs;
        double total = 0;
        halide_profiler_lock(state);
        for (auto *pl = state->pipelines; pl; pl = static_cast<halide_profiler_pipeline_stats *>(pl->next)) {
            if (pl->runs == 0) continue;
            const bool decode = std::strstr(pl->name, "_decode_") != nullptr;
            for (int f = 0; f < pl->num_funcs; ++f) {
                const double ms = double(pl->funcs[f].time) * 1e-6 / reps;
                if (ms <= 0) continue;
                const std::string name = pl->funcs[f].name;
                const std::string stage = decode ? stage_of(name) : std::string(pl->name);
                stages[stage] += ms;
                funcs[name] += ms;
                total += ms;
            }
        }
        halide_profiler_unlock(state);
        std::printf("T = %6d: %.2f ms per step profiled:", T, total);
        for (const auto &[stage, ms] : stages) std::printf("  %s %.2f", stage.c_str(), ms);
        std::printf("\n");
        for (const auto &[name, ms] : funcs)
            if (stages.count("other") && stage_of(name) == "other")
                std::printf("    other: %s %.3f ms\n", name.c_str(), ms);
        out.push_back({{"T", T}, {"total_ms", total}, {"stages_ms", stages}, {"funcs_ms", funcs}, {"reps", reps}});
        vashista_cache_destroy(cache);
    }
    halide_profiler_reset();  // no report of its own at exit: the figures are above
    bench::write_json(json_path, out);
    std::printf("wrote %s\n", json_path.c_str());
    return 0;
}
