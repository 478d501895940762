// The fused decode kernel (JIT, hand schedule) against the reference over a matrix of
// dtypes, layouts, group sizes, solvers, routing modes and group routings, on batches
// with mixed sequence lengths: T not a multiple of S, T < P*S, K_c above the valid
// tokens. Candidate sets must match exactly; dyadic data makes many exact ties.
#include "kernel_check.h"
#include "problem_buffers.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>

using namespace vashista;

namespace {

struct Case {
    Halide::Type kv;
    KvLayout layout;
    int group;
    Solver solver;
    RoutingMode routing;
    GroupRouting group_routing;
};

std::vector<Case> matrix() {
    const Halide::Type dtypes[] = {Halide::Float(32), Halide::Float(16), Halide::BFloat(16)};
    const int groups[] = {1, 4, 8};
    std::vector<Case> cases;
    int i = 0;
    for (Solver s : {Solver::Softmax, Solver::EG, Solver::FW, Solver::Sparsemax})
        for (RoutingMode r : {RoutingMode::Mean, RoutingMode::Bound, RoutingMode::Sketch})
            for (GroupRouting gr : {GroupRouting::PerHead, GroupRouting::Shared}) {
                cases.push_back({dtypes[i % 3], i % 2 ? KvLayout::NHD : KvLayout::HND, groups[(i / 2) % 3], s, r, gr});
                ++i;
            }
    return cases;
}

std::string describe(const DecodeConfig &c) {
    return type_name(c.kv_type) + " " + to_string(c.layout) + " G=" + std::to_string(c.group_size) + " " +
           to_string(c.solver) + " " + to_string(c.routing) +
           (c.routing == RoutingMode::Sketch
                ? " bits " + std::to_string(c.sketch_bits) + " group " + std::to_string(c.sketch_group)
                : std::string()) +
           " " + to_string(c.group_routing) + " summary " + type_name(c.summary_type) + " sink " +
           std::to_string(c.sink_pages) + " local " + std::to_string(c.local_pages);
}

}  // namespace

TEST_CASE("fused decode matches the reference across the matrix", "[kernels]") {
    int index = 0;
    for (const Case &k : matrix()) {
        ++index;
        DecodeConfig cfg;
        cfg.head_dim = 32;
        cfg.page_size = 16;
        cfg.top_pages = 4;
        cfg.top_tokens = 16;
        cfg.group_size = k.group;
        cfg.kv_type = k.kv;
        // bf16 summaries of f32 keys (rounded outward) in every other f32 case, int8
        // summaries in every fourth case; sink and local pages on in some cases.
        cfg.summary_type = index % 4 == 2                           ? Halide::Int(8)
                           : k.kv == Halide::Float(32) && index % 2 ? Halide::BFloat(16)
                                                                    : k.kv;
        cfg.sink_pages = index % 2;
        cfg.local_pages = index % 3 == 0 ? 1 : 0;
        cfg.layout = k.layout;
        cfg.solver = k.solver;
        cfg.routing = k.routing;
        cfg.group_routing = k.group_routing;
        // Sketch routing: 8- and 4-bit codes, scale groups of 8, 16 and 32 channels.
        cfg.sketch_bits = index % 2 ? 4 : 8;
        cfg.sketch_group = 8 << (index % 3);
        auto jit = test::compile_decode(cfg);
        for (ref::DataKind kind : {ref::DataKind::Gaussian, ref::DataKind::Dyadic, ref::DataKind::Planted}) {
            ref::ProblemSpec spec;
            spec.kv_heads = 2;
            spec.group = k.group;
            spec.head_dim = 32;
            spec.seq_lens = {100, 37, 5, 260};  // partial pages, T < P*S, K_c > valid tokens
            spec.layout = k.layout;
            spec.dtype = dtype_of(k.kv);
            spec.kind = kind;
            spec.seed = 7 + int(kind);
            ref::Problem p = ref::make_problem(spec);
            ref::Summaries sum =
                ref::summarize(p.cache, p.seqs, dtype_of(cfg.summary_type), cfg.sketch_bits, cfg.sketch_group);
            test::DecodeBuffers buf = test::decode_buffers(p, cfg, sum, ref::default_scale(32));
            run(*jit, buf);
            test::Tolerance tol;
            if (k.solver == Solver::Sparsemax || k.solver == Solver::FW) tol.out = 2e-4;
            test::Comparison c = test::compare_with_reference(p, cfg, buf, sum, tol);
            INFO(describe(cfg) << " data " << int(kind) << ": " << c.first_problem);
            CHECK(c.candidate_mismatches == 0);
            CHECK(c.page_mismatches == 0);
            CHECK(c.max_out_err <= tol.out);
            CHECK(c.max_lse_err <= tol.lse);
            CHECK(c.max_diag_err <= 0);
        }
    }
}

TEST_CASE("the summarize kernel's summaries are the reference's, bit for bit", "[kernels]") {
    // Every summary dtype of f32, f16 and bf16 keys, both layouts; pages a sequence fills in
    // part; keys across many magnitudes so int8 scales and codes are exercised.
    for (Halide::Type kv : {Halide::Float(32), Halide::Float(16), Halide::BFloat(16)})
        for (Halide::Type st : {kv, Halide::BFloat(16), Halide::Int(8)})
            for (KvLayout layout : {KvLayout::HND, KvLayout::NHD}) {
                SummaryConfig cfg;
                cfg.head_dim = 32;
                cfg.page_size = 16;
                cfg.kv_type = kv;
                cfg.summary_type = st;
                cfg.layout = layout;
                GeneratorJit jit("vashista_summarize", generator_params(cfg), Halide::get_host_target());
                ref::ProblemSpec spec;
                spec.kv_heads = 2;
                spec.head_dim = 32;
                spec.seq_lens = {100, 37, 5};
                spec.layout = layout;
                spec.dtype = dtype_of(kv);
                spec.seed = 3;
                ref::Problem p = ref::make_problem(spec);
                std::mt19937 rng(4);
                std::uniform_int_distribution<int> exponent(-12, 12);
                for (float &x : p.cache.k) x = ref::round_to(spec.dtype, std::ldexp(x, exponent(rng)));
                const DType sd = dtype_of(st);
                ref::Summaries sum = ref::summarize(p.cache, p.seqs, sd);
                ProblemBuffers pb = problem_buffers(p, sum, sd);
                std::vector<std::pair<int, int>> touched;
                for (int b = 0; b < p.seqs.batch; ++b)
                    for (int j = 0; j * 16 < p.seqs.seq_lens[b]; ++j) touched.push_back({b, j});
                const int n = int(touched.size()), H = 2, groups = summary_scale_groups(32, sd);
                Halide::Buffer<int32_t> t(2, n);
                for (int i = 0; i < n; ++i) t(0, i) = touched[i].first, t(1, i) = touched[i].second;
                Halide::Buffer<> rows(st, 32, kSummaryChannels, H, n), scales(Halide::BFloat(16), groups, H, n);
                Halide::Buffer<float> norms(H, n), absmax(H, n);
                jit.buffer("k_cache", Halide::Buffer<>(std::move(pb.k_cache)))
                    .buffer("v_cache", Halide::Buffer<>(std::move(pb.v_cache)))
                    .buffer("page_table", Halide::Buffer<int32_t>(std::move(pb.page_table)))
                    .buffer("seq_lens", Halide::Buffer<int32_t>(std::move(pb.seq_lens)))
                    .buffer("touched", t)
                    .buffer("summary", rows)
                    .buffer("value_norm", norms)
                    .buffer("key_absmax", absmax)
                    .buffer("summary_scale", scales)
                    .run();
                // The reference's rows in the summary dtype, as the decode kernels read them.
                const auto &want_rows = pb.summary, &want_scales = pb.summary_scale;
                auto at = [](const Halide::Runtime::Buffer<void> &buf, std::vector<int> pos) {
                    return buf.raw_buffer()->address_of(pos.data());
                };
                int mismatches = 0;
                std::string first;
                for (int i = 0; i < n; ++i) {
                    const auto [b, j] = touched[i];
                    const int page = p.seqs.page_table[size_t(b) * p.seqs.max_pages + j];
                    for (int h = 0; h < H; ++h) {
                        // The mean is an estimate (kernel: f32 sum; reference: f64): only min, max.
                        for (int c = kSummaryMin; c <= kSummaryMax; ++c)
                            if (std::memcmp(at(*rows.get(), {0, c, h, i}), at(want_rows, {0, c, page, h}),
                                            32 * st.bytes()) != 0 &&
                                !mismatches++)
                                first = "row " + std::to_string(c) + " of page " + std::to_string(i);
                        if (std::memcmp(at(*scales.get(), {0, h, i}), at(want_scales, {0, page, h}), groups * 2) != 0 &&
                            sd == DType::I8 && !mismatches++)
                            first = "scales of page " + std::to_string(i);
                        if (absmax(h, i) != sum.key_absmax[sum.at(b, h, j)] && !mismatches++)
                            first = "key_absmax of page " + std::to_string(i);
                    }
                }
                INFO(type_name(kv) << " keys, " << type_name(st) << " summaries, " << to_string(layout) << ": "
                                   << first);
                CHECK(mismatches == 0);
            }
}

TEST_CASE("exact ties go to the lower page and the lower offset", "[kernels]") {
    // Every key equal: all scores tie, so the first pages and first tokens must win.
    DecodeConfig cfg;
    cfg.head_dim = 32;
    cfg.top_pages = 3;
    cfg.top_tokens = 10;
    cfg.group_size = 1;
    cfg.kv_type = cfg.summary_type = Halide::Float(32);
    auto jit = test::compile_decode(cfg);
    ref::ProblemSpec spec;
    spec.kv_heads = 1;
    spec.group = 1;
    spec.head_dim = 32;
    spec.seq_lens = {90};
    spec.dtype = ref::DType::F32;
    ref::Problem p = ref::make_problem(spec);
    for (float &x : p.cache.k) x = 0.5f;
    ref::Summaries sum = ref::summarize(p.cache, p.seqs, ref::DType::F32);
    test::DecodeBuffers buf = test::decode_buffers(p, cfg, sum, ref::default_scale(32));
    run(*jit, buf);
    for (int i = 0; i < 3; ++i) CHECK(buf.pages(i, 0, 0, 0) == i);
    for (int i = 0; i < 10; ++i) CHECK(buf.candidates(i, 0, 0, 0) == i);
    test::Comparison c = test::compare_with_reference(p, cfg, buf, sum, test::Tolerance{});
    CHECK(c.candidate_mismatches == 0);
}

TEST_CASE("the kernels' f32 exp is within the relative error the certificate assumes", "[kernels]") {
    // fp::kExp32 enters every leakage term; measure the exp the kernels compile to.
    const int n = 1 << 21;
    Halide::Buffer<float> x(n), y(n);
    for (int i = 0; i < n; ++i) x(i) = -87.0f + 175.0f * float(i) / float(n - 1);
    Halide::ImageParam in(Halide::Float(32), 1, "x");
    Halide::Func f("exp_check");
    Halide::Var i("i");
    f(i) = Halide::exp(in(i));
    f.vectorize(i, 16);
    in.set(x);
    f.realize(y, decode_target(Halide::get_host_target()));
    double worst = 0;
    for (int k = 0; k < n; ++k) {
        const long double want = std::exp((long double)x(k));
        worst = std::max(worst, double(std::fabs((long double)y(k) - want) / want));
    }
    std::printf("f32 exp: max relative error %.3g (certificate assumes %.3g)\n", worst, fp::kExp32);
    CHECK(worst <= fp::kExp32 / 4);
}

namespace {
// The `key=value` defaults vashista_add_kernel_library (cmake/VashistaKernels.cmake) lists
// for one generator kind.
std::map<std::string, std::string> cmake_defaults(const std::string &kind) {
    std::ifstream in(std::string(VASHISTA_SOURCE_DIR) + "/cmake/VashistaKernels.cmake");
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string open =
        kind.empty() ? "    else ()\n        set(d " : "STREQUAL \"" + kind + "\")\n        set(d ";
    const size_t at = text.find(open);
    REQUIRE(at != std::string::npos);
    std::istringstream items(text.substr(at + open.size(), text.find(')', at + open.size()) - at - open.size()));
    std::map<std::string, std::string> d;
    for (std::string item; items >> item;) d[item.substr(0, item.find('='))] = item.substr(item.find('=') + 1);
    return d;
}

// The CMake defaults name exactly the Generator's parameters (schedule_file aside), with the
// Generator's default values, so a variant built without a key is the kernel the config means.
void require_same_defaults(const GeneratorParams &generator, std::map<std::string, std::string> cmake) {
    cmake.erase("schedule_file");
    if (cmake.count("summary_type") && cmake["summary_type"].empty()) cmake["summary_type"] = cmake["kv_type"];
    for (const auto &[key, value] : generator) {
        INFO("GeneratorParam " << key);
        REQUIRE(cmake.count(key) == 1);
        const bool number = !value.empty() && (std::isdigit(value[0]) || value[0] == '-');
        if (number)
            REQUIRE(std::stof(cmake[key]) == std::stof(value));
        else
            REQUIRE(cmake[key] == value);
    }
    REQUIRE(cmake.size() == generator.size());
}
}  // namespace

TEST_CASE("the kernel library's defaults are the Generators' defaults", "[kernels]") {
    require_same_defaults(generator_params(DecodeConfig{}), cmake_defaults("decode"));
    require_same_defaults(generator_params(DenseConfig{}), cmake_defaults("dense"));
    require_same_defaults(generator_params(SketchConfig{}), cmake_defaults("sketch"));
    require_same_defaults(generator_params(SummaryConfig{}), cmake_defaults(""));
}
