#include "kernel_check.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>

// Catch2 shows a Halide error's message instead of "Unknown exception" (Halide::Error does
// not derive from std::exception). Here, in a file every JIT test links, so it registers.
CATCH_TRANSLATE_EXCEPTION(const Halide::Error &e) { return e.what(); }

namespace vashista::test {

ref::SparseOptions sparse_options(const DecodeConfig &cfg, double scale) {
    ref::SparseOptions o;
    o.top_pages = cfg.top_pages;
    o.top_tokens = cfg.top_tokens;
    o.solver = cfg.solver;
    o.solver_steps = cfg.solver_steps;
    o.solver_eta = cfg.solver_eta;
    o.solver_tau = cfg.solver_tau;
    o.routing = cfg.routing;
    o.group_routing = cfg.group_routing;
    o.sink_pages = cfg.sink_pages;
    o.local_pages = cfg.local_pages;
    o.sketch_bits = cfg.sketch_bits;
    o.sketch_group = cfg.sketch_group;
    o.super_pages = cfg.super_pages;
    o.super_expand = cfg.super_expand;
    o.scale = scale;
    return o;
}

std::unique_ptr<GeneratorJit> compile_decode(const DecodeConfig &cfg, const DecodeCpuSchedule *schedule) {
    return std::make_unique<GeneratorJit>("vashista_decode", decode_params(cfg, schedule),
                                          decode_target(Halide::get_host_target()));
}

std::unique_ptr<GeneratorJit> compile_decode(const DecodeConfig &cfg, const Halide::Target &target,
                                             const std::string &schedule) {
    GeneratorParams params = generator_params(cfg);
    if (!schedule.empty()) params["schedule"] = schedule;
    return std::make_unique<GeneratorJit>("vashista_decode", params, decode_target(target));
}

namespace {
// |a - b| within rel * |b| + abs, with infinities equal to themselves.
double excess(double a, double b, double rel, double abs) {
    if (std::isinf(b) && a == b) return 0;
    return std::abs(a - b) - (rel * std::abs(b) + abs);
}
}  // namespace

Comparison compare_with_reference(const ref::Problem &p, const DecodeConfig &cfg, const DecodeBuffers &buf,
                                  const ref::Summaries &sum, const Tolerance &tol) {
    Comparison c;
    const ref::SparseOptions opt = sparse_options(cfg, buf.scale);
    auto note = [&](const std::string &what, int b, int h, int g) {
        if (!c.first_problem.empty()) return;
        std::ostringstream os;
        os << what << " at sequence " << b << " kv head " << h << " group member " << g;
        c.first_problem = os.str();
    };
    for (int b = 0; b < p.seqs.batch; ++b)
        for (int h = 0; h < p.q.kv_heads; ++h)
            for (int g = 0; g < p.q.group; ++g) {
                ++c.heads;
                ref::HeadResult r = ref::sparse_head(p.cache, p.seqs, p.q, sum, opt, b, h, g);
                for (int i = 0; i < cfg.top_tokens; ++i) {
                    const int want = i < int(r.candidates.size()) ? r.candidates[i] : -1;
                    if (buf.candidates(i, g, h, b) != want) {
                        ++c.candidate_mismatches;
                        note("candidate " + std::to_string(i) + " is " + std::to_string(buf.candidates(i, g, h, b)) +
                                 ", reference " + std::to_string(want),
                             b, h, g);
                    }
                }
                for (int i = 0; i < cfg.top_pages; ++i) {
                    const int want = i < int(r.pages.size()) ? r.pages[i] : -1;
                    if (buf.pages(i, g, h, b) != want) {
                        ++c.page_mismatches;
                        note("page " + std::to_string(i), b, h, g);
                    }
                }
                for (int d = 0; d < cfg.head_dim; ++d) {
                    double e = std::abs(buf.out(d, g, h, b) - r.out[d]);
                    c.max_out_err = std::max(c.max_out_err, e);
                    if (e > tol.out) note("out error " + std::to_string(e), b, h, g);
                }
                double le = std::abs(buf.lse(g, h, b) - r.lse) / (1 + std::abs(r.lse));
                c.max_lse_err = std::max(c.max_lse_err, le);
                if (le > tol.lse) note("lse error", b, h, g);
                const double want[] = {r.support_gap,  r.leakage,   r.error_bound,
                                       r.outside_mass, r.value_out, double(r.candidates.size()),
                                       r.fw_gap,       r.max_score, double(int(r.certificate))};
                // Kernels evaluate the reference's formulas in f32/f64 and inflate value norms by
                // fp::value_norm_margin; infinite bounds (uncertified) must match exactly.
                for (int k = 0; k < kDiagFields; ++k) {
                    double e = excess(buf.diag(k, g, h, b), want[k], tol.diag_rel, tol.diag_abs);
                    c.max_diag_err = std::max(c.max_diag_err, e);
                    if (e > 0)
                        note("diag field " + std::to_string(k) + " = " + std::to_string(buf.diag(k, g, h, b)) +
                                 ", reference " + std::to_string(want[k]),
                             b, h, g);
                }
            }
    return c;
}

// The kernel matrix: solvers x routing modes x group routings, dtypes, layouts and group
// sizes spread over them.
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
            : c.routing == RoutingMode::HierBound
                ? " R " + std::to_string(c.super_pages) + " Q " + std::to_string(c.super_expand)
                : std::string()) +
           " " + to_string(c.group_routing) + " summary " + type_name(c.summary_type) + " sink " +
           std::to_string(c.sink_pages) + " local " + std::to_string(c.local_pages);
}

}  // namespace

void check_decode_matrix(const Halide::Target &target, const std::string &schedule, const std::vector<Solver> &solvers,
                         bool half) {
    int index = 0;
    for (const Case &k : matrix()) {
        ++index;
        if (std::find(solvers.begin(), solvers.end(), k.solver) == solvers.end()) continue;
        // Half: one group routing per (solver, routing), alternating, like a checkerboard.
        const int i = index - 1;
        if (half && (i / 6 + (i / 2) % 3 + i % 2) % 2 != 0) continue;
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
        auto jit = compile_decode(cfg, target, schedule);
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
            DecodeBuffers buf = decode_buffers(p, cfg, sum, ref::default_scale(32));
            run(*jit, buf);
            Tolerance tol;
            if (k.solver == Solver::Sparsemax || k.solver == Solver::FW) tol.out = 2e-4;
            Comparison c = compare_with_reference(p, cfg, buf, sum, tol);
            INFO(target.to_string() << " " << describe(cfg) << " data " << int(kind) << ": " << c.first_problem);
            CHECK(c.candidate_mismatches == 0);
            CHECK(c.page_mismatches == 0);
            CHECK(c.max_out_err <= tol.out);
            CHECK(c.max_lse_err <= tol.lse);
            CHECK(c.max_diag_err <= 0);
        }
    }
}

}  // namespace vashista::test
