// The decode demo behind `make run`: sparse (bound routing over bf16 and over int8
// summaries, and sketch routing with an 8-bit sketch in groups of 16 channels) vs dense decode on the built-in default
// shape (B=1, H_q=32, H_kv=8, D=128, bf16, S=16, P=64, K_c=128) over synthetic KV with planted structure, cold cache,
// round-robin, median of repeats. Exits non-zero if a sparse answer is wrong: farther from the double-precision dense
// reference than its own certificate allows (plus rounding), or if the dense kernel disagrees with the reference.
#include "default_problem.h"
#include "measure.h"
#include "problem.h"
#include "vashista.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace {

using namespace vashista;

struct Options {
    std::vector<int> lengths{8192, 32768, 131072};
    int reps = 7;
    std::string json_path = "build/demo.json";
};

Options parse(int argc, char **argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) bench::usage_error("missing value after " + a);
            return argv[++i];
        };
        if (a == "--json")
            o.json_path = value();
        else if (a == "--reps")
            o.reps = std::stoi(value());
        else if (a == "--lengths")
            o.lengths = bench::parse_int_list(value());
        else if (a == "--help" || a == "-h") {
            std::printf("usage: vashista_demo [--lengths 8192,32768,131072] [--reps 7] [--json build/demo.json]\n");
            std::exit(0);
        } else
            bench::usage_error("unknown argument " + a);
    }
    if (o.reps < 1) bench::usage_error("--reps must be >= 1");
    return o;
}

using bench::check;

}  // namespace

int main(int argc, char **argv) {
    const Options opt = parse(argc, argv);
    const int H = bench::kKvHeads, G = bench::kGroupSize, D = bench::kHeadDim, S = bench::kPageSize, P = 64, KC = 128;
    const double bandwidth = bench::measure_read_bandwidth_gbps();
    std::printf("machine read bandwidth: %.1f GB/s (1 GiB buffer, 2 threads); cache flush %zu MB between runs\n",
                bandwidth, bench::flush_bytes() >> 20);
    nlohmann::json records = nlohmann::json::array();
    bool all_correct = true;

    for (int T : opt.lengths) {
        std::printf("\n== T = %d: B=1, H_q=%d, H_kv=%d, D=%d, bf16, S=%d, P=%d, K_c=%d ==\n", T, H * G, H, D, S, P, KC);
        bench::Timer setup_timer;
        ref::Problem p = bench::default_problem(1, T, 0, 42);
        std::printf("synthetic KV (needles, sink, local window): %.1f s\n", setup_timer.seconds());

        // Caller-owned pages, filled through vashista_append (which builds summaries and the sketch).
        bench::Pages pages = bench::make_pages(p);
        vashista_cache_desc &desc = pages.desc;
        desc.sketch_bits = kSketchBitsDefault;
        desc.sketch_group = kSketchGroupDefault;
        bench::CachePtr cache_owner = bench::create_cache(desc, "bf16 summaries and sketch");
        vashista_cache *cache = cache_owner.get();
        bench::Timer append_timer;
        bench::append_all(cache, p, T);
        std::printf("appended %d tokens with summaries and sketch: %.2f s\n", T, append_timer.seconds());
        // The same pages with compact (int8) summaries: a second cache over the KV just
        // written, summarized in place.
        vashista_cache_desc compact_desc = desc;
        compact_desc.summary_dtype = VASHISTA_DTYPE_I8;
        compact_desc.sketch_bits = 0;
        bench::CachePtr compact_owner = bench::create_cache(compact_desc, "int8 summaries");
        vashista_cache *compact = compact_owner.get();
        check(vashista_summarize(compact, 0, 0, T), "vashista_summarize (int8 summaries)");

        vashista_decode_config cfg;
        vashista_decode_config_default(&cfg);
        vashista_decode_config sketch_cfg = cfg;
        sketch_cfg.routing = VASHISTA_ROUTING_SKETCH;
        const int32_t seq_lens[1] = {T};
        std::vector<float> sparse_out(size_t(H) * G * D), sketch_out(sparse_out.size()), dense_out(sparse_out.size());
        std::vector<float> compact_out(sparse_out.size());
        std::vector<float> lse(H * G);
        std::vector<vashista_head_diag> diag(H * G), sketch_diag(H * G), compact_diag(H * G);
        bench::Flusher flusher;
        const std::vector<std::function<void()>> steps = {
            [&] {
                check(vashista_decode(cache, &cfg, p.q.q.data(), H * G, seq_lens, sparse_out.data(), lse.data(),
                                      diag.data()),
                      "vashista_decode");
            },
            [&] {
                check(vashista_decode(cache, &sketch_cfg, p.q.q.data(), H * G, seq_lens, sketch_out.data(), lse.data(),
                                      sketch_diag.data()),
                      "vashista_decode (sketch)");
            },
            [&] {
                check(vashista_dense(cache, p.q.q.data(), H * G, seq_lens, 0.0f, dense_out.data(), nullptr),
                      "vashista_dense");
            },
            [&] {
                check(vashista_decode(compact, &cfg, p.q.q.data(), H * G, seq_lens, compact_out.data(), lse.data(),
                                      compact_diag.data()),
                      "vashista_decode (int8 summaries)");
            }};
        const std::vector<bench::Stats> times = bench::time_cold_round_robin(opt.reps, flusher, steps);
        const bench::Stats &sparse_ms = times[0], &sketch_ms = times[1], &dense_ms = times[2], &compact_ms = times[3];

        // Against the double-precision dense reference.
        double max_err = 0, max_dense_err = 0, max_bound = 0, worst_excess = -1e30;
        double sketch_max_err = 0, sketch_max_bound = 0;
        int sketch_heads_sparse = 0;
        std::vector<double> gaps;
        int heads_sparse = 0, heads_dense = 0, heads_reported = 0, heads_widened = 0;
        // int8 summaries: heads certified, and the bound's ratio to the bf16 summaries' per head.
        int compact_heads_sparse = 0;
        double compact_max_err = 0, compact_max_bound = 0;
        std::vector<double> looser;
        for (int h = 0; h < H; ++h)
            for (int g = 0; g < G; ++g) {
                const int i = h * G + g;
                ref::DenseResult r = ref::dense_head(p.cache, p.seqs, p.q, 0.0, 0, h, g);
                double err = 0, derr = 0, serr = 0;
                for (int d = 0; d < D; ++d) {
                    err = std::max(err, std::abs(sparse_out[size_t(i) * D + d] - r.out[d]));
                    derr = std::max(derr, std::abs(dense_out[size_t(i) * D + d] - r.out[d]));
                    serr = std::max(serr, std::abs(sketch_out[size_t(i) * D + d] - r.out[d]));
                }
                // The sketch step's heads within their certificates too.
                const auto &sd = sketch_diag[i];
                const bool sketch_sparse = sd.policy_taken != VASHISTA_TAKEN_DENSE;
                sketch_max_err = std::max(sketch_max_err, serr);
                if (sketch_sparse) {
                    ++sketch_heads_sparse;
                    sketch_max_bound = std::max<double>(sketch_max_bound, sd.error_bound);
                }
                worst_excess = std::max(worst_excess, serr - ((sketch_sparse ? sd.error_bound : 0.0) + 2e-4));
                double cerr = 0;
                for (int d = 0; d < D; ++d) cerr = std::max(cerr, std::abs(compact_out[size_t(i) * D + d] - r.out[d]));
                const auto &cd = compact_diag[i];
                const bool compact_sparse = cd.policy_taken != VASHISTA_TAKEN_DENSE;
                compact_max_err = std::max(compact_max_err, cerr);
                if (compact_sparse) {
                    ++compact_heads_sparse;
                    compact_max_bound = std::max<double>(compact_max_bound, cd.error_bound);
                }
                if (diag[i].error_bound > 0) looser.push_back(double(cd.error_bound) / diag[i].error_bound);
                worst_excess = std::max(worst_excess, cerr - ((compact_sparse ? cd.error_bound : 0.0) + 2e-4));
                max_err = std::max(max_err, err);
                max_dense_err = std::max(max_dense_err, derr);
                const auto &hd = diag[i];
                gaps.push_back(hd.support_gap);
                switch (hd.policy_taken) {
                    case VASHISTA_TAKEN_SPARSE:
                        ++heads_sparse;
                        break;
                    case VASHISTA_TAKEN_DENSE:
                        ++heads_dense;
                        break;
                    case VASHISTA_TAKEN_REPORTED:
                        ++heads_reported;
                        break;
                    case VASHISTA_TAKEN_WIDENED:
                        ++heads_widened;
                        break;
                }
                // A sparse head must sit within its certificate; f32 accumulation of
                // bf16 inputs adds at most ~1e-4 here.
                const double allowed = (hd.policy_taken == VASHISTA_TAKEN_DENSE ? 0.0 : hd.error_bound) + 2e-4;
                if (hd.policy_taken != VASHISTA_TAKEN_DENSE) max_bound = std::max<double>(max_bound, hd.error_bound);
                worst_excess = std::max(worst_excess, err - allowed);
            }
        std::sort(gaps.begin(), gaps.end());
        const bool correct = worst_excess <= 0 && max_dense_err <= 2e-4;
        all_correct = all_correct && correct;

        // Byte floors: bound-mode summaries once per KV head (lo and hi), the keys of P
        // pages and the values of K_c tokens per query head; dense reads all of K and V.
        const double M = double(p.cache.num_pages);
        const double sparse_bytes = H * M * D * 2 * 2 + H * G * (double(P) * S * D * 2 + double(KC) * D * 2);
        const double dense_bytes = double(T) * H * D * 2 * 2;
        // Sketch: every token's codes and scales, two f32 page scalars per page and KV head,
        // K and V of the K_c candidates per query head.
        const double sketch_token_bytes = sketch_code_bytes(D, kSketchBitsDefault) + 2.0 * D / kSketchGroupDefault;
        const double sketch_bytes = double(T) * H * sketch_token_bytes + H * M * 8 + H * G * double(KC) * D * 2 * 2;
        // int8 summaries: lo and hi codes and a bf16 scale per 16 channels instead of bf16 rows.
        const double compact_bytes = sparse_bytes - H * M * D * 2 * 2 + H * M * (D * 2 + 2.0 * D / kSummaryScaleGroup);
        std::sort(looser.begin(), looser.end());
        std::printf("sparse step  %8.3f ms  (min %.3f, max %.3f; floor %.3f ms for %.1f MB)\n", sparse_ms.median,
                    sparse_ms.min, sparse_ms.max, sparse_bytes / bandwidth * 1e-6, sparse_bytes * 1e-6);
        std::printf("dense step   %8.3f ms  (min %.3f, max %.3f; floor %.3f ms for %.1f MB)\n", dense_ms.median,
                    dense_ms.min, dense_ms.max, dense_bytes / bandwidth * 1e-6, dense_bytes * 1e-6);
        std::printf("sketch step  %8.3f ms  (min %.3f, max %.3f; floor %.3f ms for %.1f MB)\n", sketch_ms.median,
                    sketch_ms.min, sketch_ms.max, sketch_bytes / bandwidth * 1e-6, sketch_bytes * 1e-6);
        std::printf("int8 summ.   %8.3f ms  (min %.3f, max %.3f; floor %.3f ms for %.1f MB)\n", compact_ms.median,
                    compact_ms.min, compact_ms.max, compact_bytes / bandwidth * 1e-6, compact_bytes * 1e-6);
        std::printf("speedup      %8.2fx (bound routing), %.2fx (sketch routing), %.2fx (int8 summaries) over dense\n",
                    dense_ms.median / sparse_ms.median, dense_ms.median / sketch_ms.median,
                    dense_ms.median / compact_ms.median);
        std::printf(
            "int8 summaries: %d of %d heads certified at tolerance %.0e (largest bound %.3g), max |int8 - dense_ref| "
            "= %.3g, bound / bf16 summaries' bound per head: median %.3g, max %.3g\n",
            compact_heads_sparse, H * G, double(cfg.tolerance), compact_max_bound, compact_max_err,
            looser.empty() ? 0.0 : looser[looser.size() / 2], looser.empty() ? 0.0 : looser.back());
        std::printf(
            "sketch: %d of %d heads certified at tolerance %.0e (largest bound %.3g), max |sketch - dense_ref| "
            "= %.3g\n",
            sketch_heads_sparse, H * G, double(cfg.tolerance), sketch_max_bound, sketch_max_err);
        std::printf(
            "max |sparse - dense_ref| = %.3g   max |dense - dense_ref| = %.3g   largest certified bound = %.3g\n",
            max_err, max_dense_err, max_bound);
        std::printf("support gap: min %.2f  median %.2f  max %.2f\n", gaps.front(), gaps[gaps.size() / 2], gaps.back());
        std::printf("policy (dense, tolerance %.0e): %d heads sparse, %d widened, %d dense fallback, %d reported\n",
                    double(cfg.tolerance), heads_sparse, heads_widened, heads_dense, heads_reported);
        std::printf("%s\n",
                    correct ? "correct: every head within its certificate" : "WRONG: a head exceeds its certificate");
        records.push_back({{"T", T},
                           {"sparse_ms", sparse_ms.median},
                           {"sparse_ms_min", sparse_ms.min},
                           {"sparse_ms_max", sparse_ms.max},
                           {"dense_ms", dense_ms.median},
                           {"dense_ms_min", dense_ms.min},
                           {"dense_ms_max", dense_ms.max},
                           {"speedup", dense_ms.median / sparse_ms.median},
                           {"max_abs_err", max_err},
                           {"sketch_ms", sketch_ms.median},
                           {"sketch_ms_min", sketch_ms.min},
                           {"sketch_ms_max", sketch_ms.max},
                           {"sketch_speedup", dense_ms.median / sketch_ms.median},
                           {"sketch_floor_ms", sketch_bytes / bandwidth * 1e-6},
                           {"sketch_bytes", sketch_bytes},
                           {"sketch_heads_certified", sketch_heads_sparse},
                           {"sketch_max_abs_err", sketch_max_err},
                           {"int8_ms", compact_ms.median},
                           {"int8_ms_min", compact_ms.min},
                           {"int8_ms_max", compact_ms.max},
                           {"int8_speedup", dense_ms.median / compact_ms.median},
                           {"int8_floor_ms", compact_bytes / bandwidth * 1e-6},
                           {"int8_bytes", compact_bytes},
                           {"int8_heads_certified", compact_heads_sparse},
                           {"int8_max_abs_err", compact_max_err},
                           {"int8_error_bound", compact_max_bound},
                           {"int8_bound_ratio_median", looser.empty() ? 0.0 : looser[looser.size() / 2]},
                           {"sketch_error_bound", sketch_max_bound},
                           {"sparse_bytes", sparse_bytes},
                           {"dense_bytes", dense_bytes},
                           {"dense_max_abs_err", max_dense_err},
                           {"error_bound", max_bound},
                           {"support_gap_min", gaps.front()},
                           {"support_gap_median", gaps[gaps.size() / 2]},
                           {"heads_sparse", heads_sparse},
                           {"heads_widened", heads_widened},
                           {"heads_dense", heads_dense},
                           {"heads_reported", heads_reported},
                           {"policy", "dense"},
                           {"tolerance", cfg.tolerance},
                           {"bandwidth_gbps", bandwidth},
                           {"sparse_floor_ms", sparse_bytes / bandwidth * 1e-6},
                           {"dense_floor_ms", dense_bytes / bandwidth * 1e-6},
                           {"reps", opt.reps},
                           {"correct", correct}});
    }
    bench::write_json(opt.json_path, records);
    std::printf("\nwrote %s\n", opt.json_path.c_str());
    return all_correct ? 0 : 1;
}
