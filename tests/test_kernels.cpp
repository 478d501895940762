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

TEST_CASE("fused decode matches the reference across the matrix", "[kernels]") {
    test::check_decode_matrix(Halide::get_host_target(), "");
}

TEST_CASE("hier_bound routing matches the reference: super-pages, expansion, pool and certificate", "[kernels]") {
    // Long enough for many super-pages (the 700-token sequence has 44 pages: 22 super-pages
    // of 2, 6 of 8), short ones with fewer super-pages than Q; summaries of each dtype.
    struct HierCase {
        int R, Q, sink, local;
        GroupRouting group_routing;
        Halide::Type kv, summary;
    };
    const HierCase cases[] = {
        {2, 2, 0, 0, GroupRouting::PerHead, Halide::BFloat(16), Halide::BFloat(16)},
        {2, 3, 1, 1, GroupRouting::Shared, Halide::Float(32), Halide::Float(32)},
        {8, 1, 1, 0, GroupRouting::PerHead, Halide::Float(16), Halide::Int(8)},
        {4, 2, 2, 2, GroupRouting::PerHead, Halide::BFloat(16), Halide::BFloat(16)},
        {8, 2, 0, 1, GroupRouting::Shared, Halide::BFloat(16), Halide::Int(8)},
    };
    for (const HierCase &k : cases) {
        DecodeConfig cfg;
        cfg.head_dim = 32;
        cfg.page_size = 16;
        cfg.top_pages = 4;
        cfg.top_tokens = 16;
        cfg.group_size = 2;
        cfg.kv_type = k.kv;
        cfg.summary_type = k.summary;
        cfg.routing = RoutingMode::HierBound;
        cfg.group_routing = k.group_routing;
        cfg.super_pages = k.R;
        cfg.super_expand = k.Q;
        cfg.sink_pages = k.sink;
        cfg.local_pages = k.local;
        auto jit = test::compile_decode(cfg);
        for (ref::DataKind kind : {ref::DataKind::Gaussian, ref::DataKind::Dyadic, ref::DataKind::Planted}) {
            ref::ProblemSpec spec;
            spec.kv_heads = 2;
            spec.group = 2;
            spec.head_dim = 32;
            spec.seq_lens = {700, 100, 37, 5, 260};
            spec.dtype = dtype_of(k.kv);
            spec.kind = kind;
            spec.seed = 17 + int(kind);
            ref::Problem p = ref::make_problem(spec);
            ref::Summaries sum = ref::summarize(p.cache, p.seqs, dtype_of(cfg.summary_type));
            ref::add_super_pages(sum, p.seqs, k.R);
            test::DecodeBuffers buf = test::decode_buffers(p, cfg, sum, ref::default_scale(32));
            run(*jit, buf);
            test::Comparison c = test::compare_with_reference(p, cfg, buf, sum, test::Tolerance{});
            INFO("R " << k.R << " Q " << k.Q << " sink " << k.sink << " local " << k.local << " "
                      << to_string(k.group_routing) << " data " << int(kind) << ": " << c.first_problem);
            CHECK(c.candidate_mismatches == 0);
            CHECK(c.page_mismatches == 0);
            CHECK(c.max_out_err <= 1e-4);
            CHECK(c.max_lse_err <= 1e-4);
            CHECK(c.max_diag_err <= 0);
            // A super-page table too short for the block table is refused.
            if (kind == ref::DataKind::Gaussian) {
                buf.super_table = Halide::Buffer<int32_t>(buf.super_table.dim(0).extent() - 1, 5);
                buf.super_table.fill(0);
                CHECK_THROWS_WITH(run(*jit, buf), Catch::Contains("super_table lists"));
            }
        }
    }
}

TEST_CASE("the summarize kernel's summaries are the reference's, bit for bit", "[kernels]") {
    test::check_summarize_kernel(Halide::get_host_target());
}

TEST_CASE("the sketch kernel's codes and scales are the reference's, bit for bit", "[kernels]") {
    test::check_sketch_kernel(Halide::get_host_target());
}

TEST_CASE("the dense kernel matches the reference", "[kernels]") {
    test::check_dense_kernel(Halide::get_host_target(), "");
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
