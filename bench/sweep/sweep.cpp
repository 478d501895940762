// The benchmark behind `make bench` and `make bench-quick`: for each context length, in one
// run and round-robin, the sparse step in every routing mode (mean, bound and hier_bound over
// bf16 and int8 summaries, sketch), each with per-head and shared group routing, our dense kernel,
// and llama.cpp's CPU attention (flash attention and its mul_mat path) on the same data;
// bytes each must read, the floor the machine's measured bandwidth sets, the error against
// a double-precision dense reference, the certificate. Then the decode loop: 32 layers, one
// appended token and one step per layer. JSON for plot.py.
#include "default_problem.h"
#include "measure.h"
#include "problem.h"
#include "vashista.h"
#ifdef VASHISTA_HAVE_LLAMA_CPP
#include "llama_cpp.h"
#endif

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace {

using namespace vashista;

// The CPU default shape (the default library's and the demo's).
constexpr int H = bench::kKvHeads, G = bench::kGroupSize, D = bench::kHeadDim, S = bench::kPageSize, P = 64, KC = 128;
constexpr int kThreads = 2;

struct Options {
    std::vector<int> lengths{4096, 8192, 16384, 32768, 65536, 131072, 262144};
    std::vector<int> batch_lengths{4096, 8192, 16384, 32768};
    int batch = 8;
    int reps = 7;
    bool llama = true;
    // The decode loop: layers per token, distinct caches they cycle through, context, tokens.
    int loop_layers = 32, loop_caches = 8, loop_tokens = 131072, loop_steps = 5;
    std::string json_path = "build/bench-report/bench.json";
};

Options parse(int argc, char **argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) bench::usage_error("missing value after " + a);
            return argv[++i];
        };
        auto lengths = [&]() {
            const std::string v = value();
            return v == "none" ? std::vector<int>{} : bench::parse_int_list(v);
        };
        if (a == "--json")
            o.json_path = value();
        else if (a == "--reps")
            o.reps = std::stoi(value());
        else if (a == "--lengths")
            o.lengths = lengths();
        else if (a == "--batch-lengths")
            o.batch_lengths = lengths();
        else if (a == "--batch")
            o.batch = std::stoi(value());
        else if (a == "--no-llama-cpp")
            o.llama = false;
        else if (a == "--loop-layers")
            o.loop_layers = std::stoi(value());
        else if (a == "--loop-caches")
            o.loop_caches = std::stoi(value());
        else if (a == "--loop-tokens")
            o.loop_tokens = std::stoi(value());
        else if (a == "--loop-steps")
            o.loop_steps = std::stoi(value());
        else if (a == "--help" || a == "-h") {
            std::printf(
                "usage: vashista_bench [--lengths 4096,...,262144|none] [--batch-lengths 4096,...,32768|none]\n"
                "                      [--batch 8] [--reps 7] [--no-llama-cpp] [--json build/bench-report/bench.json]\n"
                "                      [--loop-layers 32 (0: no decode loop)] [--loop-caches 8] [--loop-tokens "
                "131072]\n"
                "                      [--loop-steps 5]\n");
            std::exit(0);
        } else
            bench::usage_error("unknown argument " + a);
    }
    if (o.reps < 1) bench::usage_error("--reps must be >= 1");
    if (o.batch < 1) bench::usage_error("--batch must be >= 1");
    for (int t : o.lengths)
        if (t < P * S) bench::usage_error("lengths must be at least P * S = " + std::to_string(P * S));
    for (int t : o.batch_lengths)
        if (t < P * S) bench::usage_error("batch lengths must be at least P * S = " + std::to_string(P * S));
    if (o.loop_layers < 0 || o.loop_caches < 1 || o.loop_steps < 1 || o.loop_steps > S)
        bench::usage_error("--loop-layers >= 0, --loop-caches >= 1, --loop-steps in [1, " + std::to_string(S) + "]");
    if (o.loop_layers > 0 && o.loop_tokens < P * S) bench::usage_error("--loop-tokens must be at least P * S");
    return o;
}

using bench::append_all;
using bench::CachePtr;
using bench::check;
using bench::create_cache;
using bench::make_pages;
using bench::Pages;

#ifdef VASHISTA_HAVE_LLAMA_CPP
// The same tokens in llama.cpp's f16 cache (bf16 values are f16 values at these magnitudes,
// up to f16's subnormal range).
void fill_llama(bench::LlamaCppAttention &peer, const ref::Problem &p, int tokens) {
    std::vector<uint16_t> k(D), v(D);
    for (int b = 0; b < p.seqs.batch; ++b)
        for (int t = 0; t < tokens; ++t) {
            const int page = p.seqs.page_of(b, t, S);
            for (int h = 0; h < H; ++h) {
                for (int d = 0; d < D; ++d) {
                    k[d] = ref::to_bits16(ref::DType::F16, p.cache.k[p.cache.offset(page, t % S, h, d)]);
                    v[d] = ref::to_bits16(ref::DType::F16, p.cache.v[p.cache.offset(page, t % S, h, d)]);
                }
                peer.set_token(b, t, h, k.data(), v.data());
            }
        }
}
#endif

// One kernel of a sweep point: how to run it, where its answer lands, what it must read.
struct Kernel {
    std::string name, kind;  // kind: sparse, dense, llama.cpp
    nlohmann::json params;
    double bytes = 0;
    std::function<void()> run;
    std::vector<float> out;
    std::vector<vashista_head_diag> diag;
    bool certifies = false;  // bound or sketch routing: certified heads must sit within their bound
};

const char *routing_name(vashista_routing r) {
    return r == VASHISTA_ROUTING_MEAN     ? "mean"
           : r == VASHISTA_ROUTING_BOUND  ? "bound"
           : r == VASHISTA_ROUTING_SKETCH ? "sketch"
                                          : "hier_bound";
}

// Bytes the sparse step must read for B sequences of M pages each (bf16 pages): the page
// summary rows routing scores (mean: the mean row; bound: lo and hi; int8 rows are one byte
// per channel plus a bf16 scale per 16 channels), two f32 page scalars (value norm, key
// bound) of every page for the certificate, the keys of the routed pages (per query head, or
// once per GQA group when the group shares its pages), and the values of the K_c candidates
// per query head. Sketch routing reads every token's sketch instead of summary rows (codes
// and scales). hier_bound reads the f32 box of every super-page of R pages, and the rows of
// the pages of the Q super-pages each head expands (per KV head at most G Q R distinct pages
// with per-head routing, Q R shared) and of the sink and local pages.
double sparse_bytes(vashista_routing routing, bool int8, bool shared, double B, double M) {
    const double row = int8 ? D + 2.0 * D / kSummaryScaleGroup : 2.0 * D;
    const double scalars = H * M * 8, values = H * G * double(KC) * D * 2;
    if (routing == VASHISTA_ROUTING_SKETCH) {
        const double token = sketch_code_bytes(D, kSketchBitsDefault) + 2.0 * D / kSketchGroupDefault;
        return B * (M * S * H * token + scalars + 2 * values);
    }
    const double routed_keys = (shared ? H : H * G) * double(P) * S * D * 2;
    if (routing == VASHISTA_ROUTING_HIER_BOUND) {
        vashista_decode_config c;  // Q, and the sink and local pages, as the sweep runs them
        vashista_decode_config_default(&c);
        const double R = kSuperPagesDefault, Q = c.super_expand;
        const double expanded = std::min(M, (shared ? 1 : G) * Q * R + c.sink_pages + c.local_pages);
        return B * (H * std::ceil(M / R) * 2 * D * 4 + H * expanded * 2 * row + scalars + routed_keys + values);
    }
    const double rows = routing == VASHISTA_ROUTING_MEAN ? 1 : 2;
    return B * (H * M * rows * row + scalars + routed_keys + values);
}

nlohmann::json stats_json(const bench::Stats &s) {
    return {{"median_ms", s.median}, {"min_ms", s.min}, {"max_ms", s.max}};
}

// One sweep point: B sequences of T tokens.
nlohmann::json sweep_point(const Options &opt, int B, int T, bench::Flusher &flusher, bool &all_correct) {
    std::printf("\n== B=%d, T=%d: H_q=%d, H_kv=%d, D=%d, bf16 pages of %d, P=%d, K_c=%d ==\n", B, T, H * G, H, D, S, P,
                KC);
    bench::Timer setup;
    ref::Problem p = bench::default_problem(B, T, 0, 42);
    Pages pages = make_pages(p);
    vashista_cache_desc full_desc = pages.desc;
    full_desc.sketch_bits = kSketchBitsDefault;
    full_desc.sketch_group = kSketchGroupDefault;
    full_desc.super_pages = kSuperPagesDefault;
    CachePtr full = create_cache(full_desc, "bf16 summaries, super-pages and sketch");
    append_all(full.get(), p, T);
    vashista_cache_desc int8_desc = pages.desc;
    int8_desc.summary_dtype = VASHISTA_DTYPE_I8;
    int8_desc.super_pages = kSuperPagesDefault;
    CachePtr compact = create_cache(int8_desc, "int8 summaries and super-pages");
    for (int b = 0; b < B; ++b) check(vashista_summarize(compact.get(), b, 0, T), "vashista_summarize (int8)");
    const std::vector<int32_t> seq_lens(B, T);
    const size_t out_size = size_t(B) * H * G * D;
    const double M = double(T) / S;

    std::vector<Kernel> kernels;
    kernels.reserve(20);  // the runs refer to their kernels' buffers
    vashista_decode_config base;
    vashista_decode_config_default(&base);
    base.policy = VASHISTA_POLICY_NONE;  // the sparse step alone; heads certified are counted
    for (vashista_routing routing :
         {VASHISTA_ROUTING_BOUND, VASHISTA_ROUTING_HIER_BOUND, VASHISTA_ROUTING_MEAN, VASHISTA_ROUTING_SKETCH})
        for (bool int8 : {false, true})
            for (vashista_group_routing group : {VASHISTA_GROUP_PER_HEAD, VASHISTA_GROUP_SHARED}) {
                if (routing == VASHISTA_ROUTING_SKETCH && int8) continue;  // sketch routing reads no summary rows
                const bool shared = group == VASHISTA_GROUP_SHARED;
                Kernel k;
                k.name = std::string(routing_name(routing)) + (int8 ? " int8" : "") + (shared ? " shared" : "");
                k.kind = "sparse";
                k.params = {{"routing", routing_name(routing)},
                            {"summary_dtype", int8 ? "int8" : "bfloat16"},
                            {"group_routing", shared ? "shared" : "per_head"}};
                k.bytes = sparse_bytes(routing, int8, shared, B, M);
                k.certifies = routing != VASHISTA_ROUTING_MEAN;
                kernels.push_back(std::move(k));
                Kernel &kk = kernels.back();
                kk.out.resize(out_size);
                kk.diag.resize(size_t(B) * H * G);
                vashista_decode_config cfg = base;
                cfg.routing = routing;
                cfg.group_routing = group;
                vashista_cache *cache = int8 ? compact.get() : full.get();
                const std::string what = "vashista_decode (" + kk.name + ")";
                kk.run = [&kk, cfg, cache, &p, &seq_lens, what] {
                    check(vashista_decode(cache, &cfg, p.q.q.data(), H * G, seq_lens.data(), kk.out.data(), nullptr,
                                          kk.diag.data()),
                          what);
                };
            }
    {
        Kernel k;
        k.name = "dense";
        k.kind = "dense";
        k.bytes = double(B) * T * H * D * 2 * 2;
        kernels.push_back(std::move(k));
        Kernel &kk = kernels.back();
        kk.out.resize(out_size);
        vashista_cache *cache = full.get();
        kk.run = [&kk, cache, &p, &seq_lens] {
            check(vashista_dense(cache, p.q.q.data(), H * G, seq_lens.data(), 0.0f, kk.out.data(), nullptr),
                  "vashista_dense");
        };
    }
#ifdef VASHISTA_HAVE_LLAMA_CPP
    std::unique_ptr<bench::LlamaCppAttention> peer;
    if (opt.llama) {
        peer = std::make_unique<bench::LlamaCppAttention>(B, T, H, G, D, kThreads);
        fill_llama(*peer, p, T);
        peer->set_q(p.q.q.data());
        struct Path {
            const char *name, *path;
            void (bench::LlamaCppAttention::*run)(float *);
        };
        const Path paths[] = {{"llama.cpp flash_attn", "flash_attn_ext", &bench::LlamaCppAttention::flash_attention},
                              {"llama.cpp mul_mat", "mul_mat+soft_max", &bench::LlamaCppAttention::mul_mat},
                              {"flash_attn head-major", "flash_attn_ext over a [kv_head][token][channel] copy",
                               &bench::LlamaCppAttention::flash_attention_head_major}};
        for (const Path &path : paths) {
            Kernel k;
            k.name = path.name;
            k.kind = "llama.cpp";
            k.params = {{"path", path.path}, {"kv_type", "float16"}};
            k.bytes = peer->kv_bytes();
            kernels.push_back(std::move(k));
            Kernel &kk = kernels.back();
            kk.out.resize(out_size);
            bench::LlamaCppAttention *pp = peer.get();
            const auto run = path.run;
            kk.run = [&kk, pp, run] { (pp->*run)(kk.out.data()); };
        }
    }
#endif
    std::printf("setup (synthetic KV, appends, summaries, peer's cache): %.1f s\n", setup.seconds());
    // The floor of this point: the read bandwidth measured now, beside the kernels.
    const double bandwidth = bench::measure_read_bandwidth_gbps();
    std::printf("read bandwidth now: %.1f GB/s\n", bandwidth);

    std::vector<std::function<void()>> runs;
    for (Kernel &k : kernels) runs.push_back(k.run);
    const std::vector<bench::Stats> times = bench::time_cold_round_robin(opt.reps, flusher, runs);

    // Errors against the double-precision dense reference, per kernel.
    std::vector<double> max_err(kernels.size(), 0), max_bound(kernels.size(), 0);
    std::vector<int> certified(kernels.size(), 0);
    bool correct = true;
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int g = 0; g < G; ++g) {
                const ref::DenseResult r = ref::dense_head(p.cache, p.seqs, p.q, 0.0, b, h, g);
                const size_t i = (size_t(b) * H + h) * G + g;
                for (size_t k = 0; k < kernels.size(); ++k) {
                    double err = 0;
                    for (int d = 0; d < D; ++d) err = std::max(err, std::abs(kernels[k].out[i * D + d] - r.out[d]));
                    max_err[k] = std::max(max_err[k], err);
                    if (kernels[k].diag.empty()) continue;
                    const vashista_head_diag &hd = kernels[k].diag[i];
                    if (hd.certificate == VASHISTA_CERTIFIED && hd.error_bound <= base.tolerance) {
                        ++certified[k];
                        max_bound[k] = std::max<double>(max_bound[k], hd.error_bound);
                    }
                    // A certified head sits within its bound; f32 accumulation of bf16 inputs
                    // adds at most ~1e-4 here.
                    if (kernels[k].certifies && hd.certificate == VASHISTA_CERTIFIED && err > hd.error_bound + 2e-4) {
                        std::printf("WRONG: %s, sequence %d head %d: error %.3g over its bound %.3g\n",
                                    kernels[k].name.c_str(), b, h * G + g, err, double(hd.error_bound));
                        correct = false;
                    }
                }
            }
    for (size_t k = 0; k < kernels.size(); ++k)
        if (kernels[k].kind == "dense" && max_err[k] > 2e-4) {
            std::printf("WRONG: dense is %.3g from the reference\n", max_err[k]);
            correct = false;
        }
    all_correct = all_correct && correct;

    const double dense_ms =
        times[std::find_if(kernels.begin(), kernels.end(), [](const Kernel &k) { return k.kind == "dense"; }) -
              kernels.begin()]
            .median;
    std::printf("%-22s %9s %9s %9s %9s %8s %8s %9s %10s %s\n", "kernel", "median", "min", "max", "floor", "x floor",
                "MB", "vs dense", "max error", "certified");
    nlohmann::json rows = nlohmann::json::array();
    for (size_t k = 0; k < kernels.size(); ++k) {
        const Kernel &kn = kernels[k];
        const double floor_ms = kn.bytes / bandwidth * 1e-6;
        const std::string cert = kn.diag.empty() ? "" : std::to_string(certified[k]) + "/" + std::to_string(B * H * G);
        std::printf("%-22s %7.3fms %7.3fms %7.3fms %7.3fms %7.1fx %8.1f %8.2fx %10.2g %s\n", kn.name.c_str(),
                    times[k].median, times[k].min, times[k].max, floor_ms, times[k].median / floor_ms, kn.bytes * 1e-6,
                    dense_ms / times[k].median, max_err[k], cert.c_str());
        nlohmann::json row = {{"kernel", kn.name},
                              {"kind", kn.kind},
                              {"params", kn.params},
                              {"bytes", kn.bytes},
                              {"floor_ms", floor_ms},
                              {"ratio_to_floor", times[k].median / floor_ms},
                              {"speedup_over_dense", dense_ms / times[k].median},
                              {"max_abs_err", max_err[k]},
                              {"samples_ms", times[k].samples}};
        row.update(stats_json(times[k]));
        if (!kn.diag.empty()) {
            row["heads_certified"] = certified[k];
            row["largest_certified_bound"] = max_bound[k];
        }
        rows.push_back(row);
    }
    std::printf("%s\n",
                correct ? "correct: every certified head within its bound, dense within 2e-4" : "WRONG: see above");
    return {{"batch", B},
            {"T", T},
            {"bandwidth_gbps", bandwidth},
            {"reps", opt.reps},
            {"tolerance", base.tolerance},
            {"correct", correct},
            {"kernels", rows}};
}

// The decode loop: per generated token, each of `layers` layers appends the token's K and V
// (a layer that shares its cache with an earlier one rewrites the same token, which costs
// the same) and decodes one step over T + i tokens. The layers cycle through `caches` distinct caches
// (all of them together far larger than the L3, so each layer finds its KV in memory, as 32
// distinct layers would). Reported per token and as attention tokens per second.
nlohmann::json decode_loop(const Options &opt) {
    const int T0 = opt.loop_tokens, L = opt.loop_layers, C = std::min(opt.loop_caches, L);
    std::printf("\n== decode loop: %d layers cycling through %d caches, T = %d + %d generated tokens ==\n", L, C, T0,
                opt.loop_steps);
    struct Layer {
        std::vector<float> q;
        std::vector<uint8_t> new_k, new_v;  // the tokens the loop appends: [steps][H][D] bf16
        Pages pages;
        std::vector<int32_t> page_table;
        CachePtr cache;
#ifdef VASHISTA_HAVE_LLAMA_CPP
        std::unique_ptr<bench::LlamaCppAttention> peer;
#endif
    };
    std::vector<Layer> layers(C);
    bench::Timer setup;
    for (int c = 0; c < C; ++c) {
        Layer &l = layers[c];
        ref::Problem p = bench::default_problem(1, T0 + opt.loop_steps, 1, 1000 + c);
        l.q = p.q.q;
        l.pages = make_pages(p);
        l.page_table = p.seqs.page_table;
        l.pages.desc.page_table = l.page_table.data();
        l.pages.desc.super_pages = kSuperPagesDefault;  // hier_bound's boxes, kept on every append
        l.cache = create_cache(l.pages.desc, "decode loop");
        append_all(l.cache.get(), p, T0);
        l.new_k = ref::token_bytes(p.cache, p.seqs, p.cache.k, 0, T0, opt.loop_steps);
        l.new_v = ref::token_bytes(p.cache, p.seqs, p.cache.v, 0, T0, opt.loop_steps);
#ifdef VASHISTA_HAVE_LLAMA_CPP
        if (opt.llama) {
            l.peer = std::make_unique<bench::LlamaCppAttention>(1, T0 + opt.loop_steps, H, G, D, kThreads);
            fill_llama(*l.peer, p, T0);
            l.peer->set_q(l.q.data());
        }
#endif
        std::printf("  cache %d of %d ready (%.0f s)\n", c + 1, C, setup.seconds());
    }
    vashista_decode_config cfg, hier;  // the default (bound routing), and hier_bound
    vashista_decode_config_default(&cfg);
    hier = cfg;
    hier.routing = VASHISTA_ROUTING_HIER_BOUND;
    std::vector<float> out(size_t(H) * G * D);
    std::vector<vashista_head_diag> diag(H * G);
    std::vector<double> sparse_ms, hier_ms, dense_ms, llama_ms, llama_mm_ms, append_us;
    int fallbacks = 0, hier_fallbacks = 0;
    for (int i = 0; i < opt.loop_steps; ++i) {
        const int32_t len = T0 + i + 1;
        // Sparse: append (pages, summary of the page the token lands in, its super-page's box),
        // then decode; bound routing, then hier_bound (whose pass writes the token again).
        for (const vashista_decode_config *c : {&cfg, &hier}) {
            double append_s = 0;
            bench::Timer sparse;
            for (int layer = 0; layer < L; ++layer) {
                Layer &l = layers[layer % C];
                bench::Timer a;
                check(vashista_append(l.cache.get(), 0, T0 + i, 1, &l.new_k[size_t(i) * H * D * 2],
                                      &l.new_v[size_t(i) * H * D * 2]),
                      "vashista_append");
                append_s += a.seconds();
                check(vashista_decode(l.cache.get(), c, l.q.data(), H * G, &len, out.data(), nullptr, diag.data()),
                      "vashista_decode");
                for (const auto &d : diag)
                    (c == &cfg ? fallbacks : hier_fallbacks) += d.policy_taken == VASHISTA_TAKEN_DENSE;
            }
            (c == &cfg ? sparse_ms : hier_ms).push_back(sparse.seconds() * 1e3);
            append_us.push_back(append_s * 1e6 / L);
        }
        // Dense over the same caches (the token is already in its page).
        bench::Timer dense;
        for (int layer = 0; layer < L; ++layer) {
            Layer &l = layers[layer % C];
            check(vashista_dense(l.cache.get(), l.q.data(), H * G, &len, 0.0f, out.data(), nullptr), "vashista_dense");
        }
        dense_ms.push_back(dense.seconds() * 1e3);
#ifdef VASHISTA_HAVE_LLAMA_CPP
        if (opt.llama) {
            // llama.cpp's two paths: flash attention, then mul_mat (the token written once more).
            for (int path = 0; path < 2; ++path) {
                std::vector<uint16_t> k(D), v(D);
                bench::Timer llama;
                for (int layer = 0; layer < L; ++layer) {
                    Layer &l = layers[layer % C];
                    for (int h = 0; h < H; ++h) {
                        std::memcpy(k.data(), &l.new_k[(size_t(i) * H + h) * D * 2], D * 2);
                        std::memcpy(v.data(), &l.new_v[(size_t(i) * H + h) * D * 2], D * 2);
                        for (int d = 0; d < D; ++d) {  // bf16 bits to f16 bits
                            k[d] = ref::to_bits16(ref::DType::F16, ref::from_bits16(ref::DType::BF16, k[d]));
                            v[d] = ref::to_bits16(ref::DType::F16, ref::from_bits16(ref::DType::BF16, v[d]));
                        }
                        l.peer->set_token(0, T0 + i, h, k.data(), v.data());
                    }
                    if (path == 0)
                        l.peer->flash_attention(out.data());
                    else
                        l.peer->mul_mat(out.data());
                }
                (path == 0 ? llama_ms : llama_mm_ms).push_back(llama.seconds() * 1e3);
            }
        }
#endif
        std::printf("  token %d: sparse %.1f ms (hier_bound %.1f ms), dense %.1f ms", i + 1, sparse_ms.back(),
                    hier_ms.back(), dense_ms.back());
        if (!llama_ms.empty())
            std::printf(", llama.cpp flash_attn %.1f ms, mul_mat %.1f ms", llama_ms.back(), llama_mm_ms.back());
        std::printf("\n");
    }
    const bench::Stats s = bench::summarize(sparse_ms), hb = bench::summarize(hier_ms), d = bench::summarize(dense_ms),
                       a = bench::summarize(append_us);
    std::printf(
        "per token (%d layers, median of %d): sparse %.1f ms (%.3g tokens/s), hier_bound %.1f ms (%.3g "
        "tokens/s), dense %.1f ms (%.3g tokens/s)",
        L, opt.loop_steps, s.median, 1e3 / s.median, hb.median, 1e3 / hb.median, d.median, 1e3 / d.median);
    nlohmann::json j = {{"layers", L},
                        {"caches", C},
                        {"T", T0},
                        {"steps", opt.loop_steps},
                        {"sparse", stats_json(s)},
                        {"dense", stats_json(d)},
                        {"sparse_tokens_per_s", 1e3 / s.median},
                        {"sparse_hier_bound", stats_json(hb)},
                        {"sparse_hier_bound_tokens_per_s", 1e3 / hb.median},
                        {"hier_bound_heads_fallen_back", hier_fallbacks},
                        {"dense_tokens_per_s", 1e3 / d.median},
                        {"append_us_per_layer", a.median},
                        {"heads_fallen_back", fallbacks}};
    if (!llama_ms.empty()) {
        const bench::Stats ll = bench::summarize(llama_ms), mm = bench::summarize(llama_mm_ms);
        std::printf(", llama.cpp flash_attn %.1f ms (%.3g tokens/s), mul_mat %.1f ms (%.3g tokens/s)", ll.median,
                    1e3 / ll.median, mm.median, 1e3 / mm.median);
        j["llama_cpp_flash_attn"] = stats_json(ll);
        j["llama_cpp_tokens_per_s"] = 1e3 / ll.median;
        j["llama_cpp_mul_mat"] = stats_json(mm);
        j["llama_cpp_mul_mat_tokens_per_s"] = 1e3 / mm.median;
    }
    std::printf(
        "\nsummary upkeep (vashista_append of one token, one layer: page summary and super-page box): %.1f us; heads "
        "fallen back to dense: %d (hier_bound: %d)\n",
        a.median, fallbacks, hier_fallbacks);
    return j;
}

}  // namespace

int main(int argc, char **argv) {
    const Options opt = parse(argc, argv);
    vashista_set_num_threads(kThreads);
    const double bandwidth = bench::measure_read_bandwidth_gbps();
    std::printf(
        "machine read bandwidth: %.1f GB/s (1 GiB buffer, %d threads); cache flush %zu MB before each run; "
        "median of %d, round-robin\n",
        bandwidth, kThreads, bench::flush_bytes() >> 20, opt.reps);
    nlohmann::json result = {{"bandwidth_gbps", bandwidth}, {"threads", kThreads}, {"reps", opt.reps}};
#ifdef VASHISTA_HAVE_LLAMA_CPP
    if (opt.llama) {
        result["peer"] = bench::LlamaCppAttention::description();
        std::printf("peer: %s\n", bench::LlamaCppAttention::description().c_str());
    } else
        std::printf("peer: llama.cpp skipped (--no-llama-cpp)\n");
#else
    std::printf(
        "peer: llama.cpp not built into this bench (make bench fetches and builds it; see tools/setup.sh bench)\n");
    result["peer"] = nullptr;
#endif
    bool all_correct = true;
    bench::Flusher flusher;
    nlohmann::json points = nlohmann::json::array();
    for (int T : opt.lengths) points.push_back(sweep_point(opt, 1, T, flusher, all_correct));
    for (int T : opt.batch_lengths) points.push_back(sweep_point(opt, opt.batch, T, flusher, all_correct));
    result["points"] = points;
    if (opt.loop_layers > 0) result["decode_loop"] = decode_loop(opt);
    result["correct"] = all_correct;
    bench::write_json(opt.json_path, result);
    std::printf("\nwrote %s\n", opt.json_path.c_str());
    return all_correct ? 0 : 1;
}
