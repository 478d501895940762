#include "buffers.h"
#include <cstdio>
#include <cmath>
using namespace vashista;
int main_impl(int argc);
int main(int argc, char **) { try { return main_impl(argc); } catch (std::exception &e) { printf("EXC %s\n", e.what()); return 1; } }
int main_impl(int argc) {
    DecodeConfig cfg;
    cfg.head_dim = 64; cfg.top_pages = 4; cfg.top_tokens = 16; cfg.group_size = 4;
    if (argc > 1) cfg.routing = RoutingMode::Bound;
    ref::ProblemSpec spec; spec.head_dim = 64; spec.seq_lens = {100, 37};
    auto p = ref::make_problem(spec);
    auto sum = ref::summarize(p.cache, p.seqs, ref::DType::BF16);
    double scale = ref::default_scale(64);
    auto buf = test::decode_buffers(p, cfg, sum, scale);
    DecodeJit jit(cfg);
    jit.schedule(hand_schedule(cfg));
    jit.compile(Halide::get_host_target());
    run(jit, buf);
    ref::SparseOptions opt; opt.top_pages = 4; opt.top_tokens = 16; opt.routing = cfg.routing;
    double maxerr = 0; int mism = 0;
    for (int b = 0; b < 2; ++b) for (int h = 0; h < 2; ++h) for (int g = 0; g < 4; ++g) {
        auto r = ref::sparse_head(p.cache, p.seqs, p.q, sum, opt, b, h, g);
        for (size_t c = 0; c < 16; ++c) { int want = c < r.candidates.size() ? r.candidates[c] : -1; if (buf.candidates(c, g, h, b) != want) mism++; }
        for (int d = 0; d < 64; ++d) maxerr = std::max(maxerr, std::abs(r.out[d] - buf.out(d, g, h, b)));
        printf("b%d h%d g%d lse %f/%f bound %g/%g gap %g/%g L %g/%g\n", b, h, g, r.lse, buf.lse(g,h,b), r.error_bound, buf.diag(2,g,h,b), r.support_gap, buf.diag(0,g,h,b), r.leakage, buf.diag(1,g,h,b));
    }
    printf("mismatches %d maxerr %g\n", mism, maxerr);
    return mism ? 1 : 0;
}
