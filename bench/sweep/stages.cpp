// Where the sparse step's time goes (make bench): the default decode (bound routing over bf16
// summaries, per-head groups) of the bench's shape and the same with hier_bound routing,
// compiled with Halide's sampling profiler, run cold at each context length; the profiler's
// time per Func summed into the method's stages. A separate program because the profiled
// kernels carry their own Halide runtime.
#include "default_problem.h"
#include "measure.h"

#include <HalideRuntime.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace {

using namespace vashista;

constexpr int H = bench::kKvHeads, G = bench::kGroupSize, D = bench::kHeadDim;
using bench::check;

// The method's stages by the Funcs of the decode definition (generators/algorithm.cpp).
// Routing: the page scores and the top-P pass (route_*; hier_bound's super-page scores and
// top-Q pass, super_*, and its pool of pages); selection: the routed pages' token
// scores and the top-K_c pass (select_*); solve and output: the candidates' exact scores,
// the weights and the value sum; diagnostics: the gap, the leakage and the bound. The first
// matching prefix wins (out_norm is a diagnostic, out the output).
std::string stage_of(const std::string &func) {
    static const std::vector<std::pair<const char *, const char *>> prefixes = {
        {"out_norm", "diagnostics"},
        {"q_l1", "diagnostics"},
        {"inside_stats", "diagnostics"},
        {"outside_stats", "diagnostics"},
        {"support_gap", "diagnostics"},
        {"leakage", "diagnostics"},
        {"error_bound", "diagnostics"},
        {"value_norm", "diagnostics"},
        {"record", "diagnostics"},
        {"diag", "diagnostics"},
        {"page_rows", "routing"},
        {"head_page_score", "routing"},
        {"route_", "routing"},
        {"pages", "routing"},
        {"routed", "routing"},
        {"super_", "routing"},
        {"pool_page", "routing"},
        {"token_", "selection"},
        {"select_", "selection"},
        {"cand_location", "selection"},
        {"candidates", "selection"},
        {"cand_", "solve+output"},
        {"max_score", "solve+output"},
        {"min_score", "solve+output"},
        {"weight", "solve+output"},
        {"alpha", "solve+output"},
        {"out", "solve+output"},
        {"lse", "solve+output"},
        {"waiting for parallel tasks", "waiting on parallel tasks"},
        {"halide_malloc", "allocation"},
        {"halide_free", "allocation"}};
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
        "\n== where the sparse step's time goes (bound and hier_bound routing, bf16 summaries, per-head groups; "
        "Halide's sampling profiler, cold, %d runs) ==\n",
        reps);
    for (int T : lengths) {
        const ref::Problem p = bench::default_problem(1, T, 0, 42);
        bench::Pages pages = bench::make_pages(p);
        pages.desc.super_pages = kSuperPagesDefault;
        bench::CachePtr owner = bench::create_cache(pages.desc, "bf16 summaries and super-pages");
        vashista_cache *cache = owner.get();
        bench::append_all(cache, p, T);
        for (vashista_routing routing : {VASHISTA_ROUTING_BOUND, VASHISTA_ROUTING_HIER_BOUND}) {
            const char *routing_name = routing == VASHISTA_ROUTING_BOUND ? "bound" : "hier_bound";
            vashista_decode_config cfg;
            vashista_decode_config_default(&cfg);
            cfg.policy = VASHISTA_POLICY_NONE;
            cfg.routing = routing;
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
            std::printf("T = %6d, %-10s: %.2f ms per step profiled:", T, routing_name, total);
            for (const auto &[stage, ms] : stages) std::printf("  %s %.2f", stage.c_str(), ms);
            std::printf("\n");
            for (const auto &[name, ms] : funcs)
                if (stages.count("other") && stage_of(name) == "other")
                    std::printf("    other: %s %.3f ms\n", name.c_str(), ms);
            out.push_back({{"T", T},
                           {"routing", routing_name},
                           {"total_ms", total},
                           {"stages_ms", stages},
                           {"funcs_ms", funcs},
                           {"reps", reps}});
        }
    }
    halide_profiler_reset();  // no report of its own at exit: the figures are above
    bench::write_json(json_path, out);
    std::printf("wrote %s\n", json_path.c_str());
    return 0;
}
