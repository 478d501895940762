#include "kernel_check.h"

#include <catch2/catch.hpp>

#include <cmath>
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
    o.scale = scale;
    return o;
}

std::unique_ptr<GeneratorJit> compile_decode(const DecodeConfig &cfg, const DecodeCpuSchedule *schedule) {
    return std::make_unique<GeneratorJit>("vashista_decode", decode_params(cfg, schedule),
                                          decode_target(Halide::get_host_target()));
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

}  // namespace vashista::test
