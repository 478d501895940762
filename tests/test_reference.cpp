// Self-checks of the reference: the oracle must itself agree with the method.
#include "problem.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <tuple>

using namespace vashista;
using namespace vashista::ref;

namespace {
// The sparse head's error bound is never below its distance from the dense answer.
void require_bound_holds(const Problem &p, const HeadResult &s, int b, int h, int g) {
    DenseResult d = dense_head(p.cache, p.seqs, p.q, 0.0, b, h, g);
    double err = 0;
    for (size_t i = 0; i < d.out.size(); ++i) err += (s.out[i] - d.out[i]) * (s.out[i] - d.out[i]);
    REQUIRE(std::sqrt(err) <= s.error_bound * (1 + 1e-12) + 1e-12);
}
}  // namespace

TEST_CASE("sparse equals dense when P covers every page and K_c every token", "[reference]") {
    ProblemSpec spec;
    spec.seq_lens = {100, 37, 5};
    Problem p = make_problem(spec);
    Summaries sum = summarize(p.cache, p.seqs, DType::BF16);
    SparseOptions opt;
    opt.top_pages = 16;
    opt.top_tokens = 1000;
    for (RoutingMode mode : {RoutingMode::Mean, RoutingMode::Bound})
        for (int b = 0; b < 3; ++b)
            for (int h = 0; h < spec.kv_heads; ++h)
                for (int g = 0; g < spec.group; ++g) {
                    opt.routing = mode;
                    HeadResult s = sparse_head(p.cache, p.seqs, p.q, sum, opt, b, h, g);
                    DenseResult d = dense_head(p.cache, p.seqs, p.q, 0.0, b, h, g);
                    REQUIRE(int(s.candidates.size()) == spec.seq_lens[b]);
                    for (int i = 0; i < spec.head_dim; ++i) REQUIRE(s.out[i] == Approx(d.out[i]).margin(1e-12));
                    REQUIRE(s.lse == Approx(d.lse).epsilon(1e-12));
                    REQUIRE(s.leakage == 0.0);
                    if (mode == RoutingMode::Mean) {
                        // mean-key page scores bound nothing: no bound is reported
                        REQUIRE(s.certificate == Certificate::MeanRouting);
                        REQUIRE(std::isinf(s.error_bound));
                    } else {
                        // nothing outside C: the bound is the f32 rounding term alone
                        REQUIRE(s.certificate == Certificate::Certified);
                        REQUIRE(s.error_bound > 0.0);
                        REQUIRE(s.error_bound < 1e-3);
                    }
                }
}

TEST_CASE("outward rounding gives a box that contains the value, one step wide at most", "[reference]") {
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> mantissa(-1, 1);
    std::uniform_int_distribution<int> exponent(-140, 120);
    for (DType t : {DType::BF16, DType::F16}) {
        for (int i = 0; i < 200000; ++i) {
            const float x = i < 6 ? std::array<float, 6>{0.0f, -0.0f, 1e-45f, -1e-45f, 3e38f, -3e38f}[i]
                                  : std::ldexp(mantissa(rng), exponent(rng));
            const float lo = round_toward(t, x, false), hi = round_toward(t, x, true);
            INFO(to_string(t) << " x = " << x << " lo = " << lo << " hi = " << hi);
            REQUIRE(lo <= x);
            REQUIRE(hi >= x);
            REQUIRE(round_to(t, lo) == lo);  // representable
            REQUIRE(round_to(t, hi) == hi);
            const float nearest = round_to(t, x);
            REQUIRE((lo == nearest || hi == nearest));
        }
    }
    REQUIRE(round_toward(DType::F32, 0.1f, true) == 0.1f);
}

TEST_CASE("int8 summaries: the decoded box contains every key, codes in range, one code step from tight",
          "[reference]") {
    // Pages of one 16-channel group whose channels span 2^-140 .. 2^127 (subnormal keys,
    // keys near the f32 maximum, zeros and channels far smaller than the group's largest).
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> mantissa(-1, 1);
    std::uniform_int_distribution<int> exponent(-140, 127), spread(0, 40), kind(0, 5);
    const int D = kSummaryScaleGroup, S = 8;
    long boxes = 0;
    for (int page = 0; page < 20000; ++page) {
        Cache cache(1, 1, S, D, KvLayout::HND, DType::F32);
        const int top = exponent(rng);
        for (int d = 0; d < D; ++d) {
            const int e = top - (kind(rng) == 0 ? 0 : spread(rng));
            for (int t = 0; t < S; ++t) {
                const int k = kind(rng);
                float x = k == 1 ? 0.0f : std::ldexp(mantissa(rng), e);
                if (k == 2 && page % 7 == 0) x = std::copysign(3.4e38f, mantissa(rng));
                cache.k[cache.offset(0, t, 0, d)] = x;
            }
        }
        Sequences seqs{1, 1, {0}, {S}};
        Summaries sum = summarize(cache, seqs, DType::I8);
        const float sigma = sum.summary_scale[0];
        REQUIRE(sigma >= kSummaryScaleMin);
        REQUIRE(round_to(DType::BF16, sigma) == sigma);
        for (int d = 0; d < D; ++d) {
            float lo = cache.k[cache.offset(0, 0, 0, d)], hi = lo;
            for (int t = 1; t < S; ++t) {
                lo = std::min(lo, cache.k[cache.offset(0, t, 0, d)]);
                hi = std::max(hi, cache.k[cache.offset(0, t, 0, d)]);
            }
            INFO("page " << page << " channel " << d << " keys [" << lo << ", " << hi << "] sigma " << sigma << " box ["
                         << sum.lo[d] << ", " << sum.hi[d] << "]");
            REQUIRE(sum.lo[d] <= lo);
            REQUIRE(sum.hi[d] >= hi);
            // The stored value is sigma * code for an integer code in [-127, 127], exact in f32
            // (or infinite where sigma * code passes the f32 maximum: still a box), and one code
            // step further in would cut a key off.
            for (const auto &[value, key, sign] : {std::tuple{sum.lo[d], lo, -1.0}, std::tuple{sum.hi[d], hi, 1.0}}) {
                if (std::isinf(value)) {
                    REQUIRE(value == float(sign * INFINITY));
                    continue;
                }
                const double code = double(value) / sigma;
                REQUIRE(code == std::trunc(code));
                REQUIRE(std::abs(code) <= kSummaryMaxCode);
                REQUIRE(double(sigma) * (code - sign) * sign < double(key) * sign);
            }
            ++boxes;
        }
        REQUIRE(sum.key_absmax[0] >= 0.0f);
    }
    REQUIRE(boxes == 20000L * D);
    // A page of zeros: codes 0, the smallest scale.
    Cache zeros(1, 1, S, D, KvLayout::HND, DType::F32);
    Summaries z = summarize(zeros, Sequences{1, 1, {0}, {S}}, DType::I8);
    REQUIRE(z.summary_scale[0] == kSummaryScaleMin);
    for (int d = 0; d < D; ++d) REQUIRE((z.lo[d] == 0.0f && z.hi[d] == 0.0f && z.mean[d] == 0.0f));
    // A head_dim that is not a whole number of groups is refused, naming why.
    Cache odd(1, 1, S, 24, KvLayout::HND, DType::F32);
    REQUIRE_THROWS_WITH(summarize(odd, Sequences{1, 1, {0}, {S}}, DType::I8),
                        Catch::Contains("int8 summaries need head_dim a multiple of 16"));
}

TEST_CASE("sink and local pages are always routed and count toward P", "[reference]") {
    ProblemSpec spec;
    spec.seq_lens = {200, 40};
    spec.kind = DataKind::Gaussian;
    Problem p = make_problem(spec);
    Summaries sum = summarize(p.cache, p.seqs, DType::BF16);
    SparseOptions opt;
    opt.top_pages = 4;
    opt.top_tokens = 16;
    opt.sink_pages = 1;
    opt.local_pages = 2;
    opt.routing = RoutingMode::Bound;
    for (int b = 0; b < 2; ++b) {
        const int n_pages = (spec.seq_lens[b] + 15) / 16;
        HeadResult r = sparse_head(p.cache, p.seqs, p.q, sum, opt, b, 0, 0);
        REQUIRE(int(r.pages.size()) == std::min(4, n_pages));
        REQUIRE(r.pages.front() == 0);
        REQUIRE(r.pages.back() == n_pages - 1);
        REQUIRE(std::count(r.pages.begin(), r.pages.end(), n_pages - 2) == 1);
    }
}

TEST_CASE("hier_bound: a super-page's box holds its pages' boxes; all expanded, it routes as bound", "[reference]") {
    ProblemSpec spec;
    spec.seq_lens = {700, 260, 37};  // 44, 17 and 3 pages: partial super-pages
    spec.kind = DataKind::Planted;
    Problem p = make_problem(spec);
    for (DType dt : {DType::BF16, DType::I8}) {
        Summaries sum = summarize(p.cache, p.seqs, dt);
        add_super_pages(sum, p.seqs, 4);
        const int D = spec.head_dim;
        for (int b = 0; b < 3; ++b)
            for (int h = 0; h < spec.kv_heads; ++h)
                for (int j = 0; j * 16 < spec.seq_lens[b]; ++j)
                    for (int d = 0; d < D; ++d) {
                        REQUIRE(sum.super_lo[sum.super_at(b, h, j / 4) * D + d] <= sum.lo[sum.at(b, h, j) * D + d]);
                        REQUIRE(sum.super_hi[sum.super_at(b, h, j / 4) * D + d] >= sum.hi[sum.at(b, h, j) * D + d]);
                    }
        // A super-page's value norm is the largest of its pages'.
        for (int b = 0; b < 3; ++b)
            for (int h = 0; h < spec.kv_heads; ++h)
                for (int sp = 0; sp * 64 < spec.seq_lens[b]; ++sp) {
                    double largest = 0;
                    for (int j = sp * 4; j < sp * 4 + 4 && j * 16 < spec.seq_lens[b]; ++j)
                        largest = std::max(largest, sum.value_norm[sum.at(b, h, j)]);
                    REQUIRE(sum.super_value_norm[sum.super_at(b, h, sp)] == largest);
                }
        SparseOptions bound, hier;
        bound.top_pages = hier.top_pages = 6;
        bound.top_tokens = hier.top_tokens = 24;
        bound.sink_pages = hier.sink_pages = 1;
        bound.local_pages = hier.local_pages = 1;
        hier.routing = RoutingMode::HierBound;
        hier.super_pages = 4;
        hier.super_expand = 11;  // every super-page of the longest sequence
        for (GroupRouting gr : {GroupRouting::PerHead, GroupRouting::Shared}) {
            bound.group_routing = hier.group_routing = gr;
            for (int b = 0; b < 3; ++b)
                for (int h = 0; h < spec.kv_heads; ++h)
                    for (int g = 0; g < spec.group; ++g) {
                        HeadResult x = sparse_head(p.cache, p.seqs, p.q, sum, bound, b, h, g);
                        HeadResult y = sparse_head(p.cache, p.seqs, p.q, sum, hier, b, h, g);
                        REQUIRE(x.pages == y.pages);
                        REQUIRE(x.candidates == y.candidates);
                        REQUIRE(x.out == y.out);
                        // The same terms; only the allowance for the f32 sum's rounding counts
                        // the super-pages too (about max_supers * 2^-24 relative).
                        const double allowance = 2 * sum.max_supers * fp::kUnit32;
                        REQUIRE(y.leakage >= x.leakage);
                        REQUIRE(y.leakage == Approx(x.leakage).epsilon(allowance));
                        REQUIRE(y.error_bound == Approx(x.error_bound).epsilon(allowance));
                    }
        }
    }
}

TEST_CASE("hier_bound: pages come from the top Q super-pages or are sink/local; the bound holds", "[reference]") {
    for (uint64_t seed = 1; seed <= 12; ++seed) {
        ProblemSpec spec;
        spec.seq_lens = {1500, 333};
        spec.kind = seed % 2 ? DataKind::Gaussian : DataKind::Planted;
        spec.seed = seed;
        Problem p = make_problem(spec);
        Summaries sum = summarize(p.cache, p.seqs, DType::BF16);
        add_super_pages(sum, p.seqs, 8);
        SparseOptions opt, bound;
        opt.top_pages = bound.top_pages = 6;
        opt.top_tokens = bound.top_tokens = 32;
        opt.sink_pages = bound.sink_pages = 1;
        opt.local_pages = bound.local_pages = 1;
        opt.routing = RoutingMode::HierBound;
        opt.super_pages = 8;
        opt.super_expand = 2;
        opt.group_routing = bound.group_routing = seed % 3 ? GroupRouting::PerHead : GroupRouting::Shared;
        const int D = spec.head_dim;
        const double scale = default_scale(D);
        for (int b = 0; b < 2; ++b) {
            const int n_pages = (spec.seq_lens[b] + 15) / 16, n_supers = (n_pages + 7) / 8;
            for (int h = 0; h < spec.kv_heads; ++h)
                for (int g = 0; g < spec.group; ++g) {
                    HeadResult s = sparse_head(p.cache, p.seqs, p.q, sum, opt, b, h, g);
                    // The expanded super-pages, recomputed: the top 2 by box score (this head's,
                    // or the group's largest), ties to the lower.
                    std::vector<std::pair<double, int>> by_score;
                    for (int sp = 0; sp < n_supers; ++sp) {
                        double best = -1e300;
                        for (int gg = 0; gg < spec.group; ++gg) {
                            if (opt.group_routing == GroupRouting::PerHead && gg != g) continue;
                            const float *q = p.q.head(b, h, gg);
                            double acc = 0;
                            for (int d = 0; d < D; ++d)
                                acc += std::max(double(q[d]) * sum.super_lo[sum.super_at(b, h, sp) * D + d],
                                                double(q[d]) * sum.super_hi[sum.super_at(b, h, sp) * D + d]);
                            best = std::max(best, scale * acc);
                        }
                        by_score.push_back({-best, sp});
                    }
                    std::sort(by_score.begin(), by_score.end());
                    std::set<int> expanded = {by_score[0].second, by_score[1].second};
                    INFO("seed " << seed << " b " << b << " h " << h << " g " << g);
                    REQUIRE(int(s.pages.size()) == std::min(6, n_pages));
                    REQUIRE(s.pages.front() == 0);
                    REQUIRE(s.pages.back() == n_pages - 1);
                    for (int j : s.pages) REQUIRE((j == 0 || j == n_pages - 1 || expanded.count(j / 8) == 1));
                    // Never below the true error; never tighter than bound routing's.
                    require_bound_holds(p, s, b, h, g);
                    HeadResult flat = sparse_head(p.cache, p.seqs, p.q, sum, bound, b, h, g);
                    if (flat.pages == s.pages) REQUIRE(s.leakage >= flat.leakage * (1 - 1e-12));
                }
        }
    }
}

TEST_CASE("eg after N steps of size eta is softmax of N * eta * s", "[reference]") {
    std::mt19937 rng(3);
    std::normal_distribution<double> n(0, 3);
    std::vector<double> s(50);
    for (double &x : s) x = n(rng);
    std::vector<double> scaled(s);
    for (double &x : scaled) x *= 6 * 0.2;
    std::vector<double> eg = solve_eg(s, 6, 0.2), sm = solve_softmax(scaled);
    for (size_t i = 0; i < s.size(); ++i) REQUIRE(eg[i] == Approx(sm[i]).margin(1e-14));
}

TEST_CASE("sparsemax is the Euclidean projection onto the simplex", "[reference]") {
    std::mt19937 rng(5);
    std::normal_distribution<double> n(0, 1);
    for (int trial = 0; trial < 50; ++trial) {
        std::vector<double> s(20);
        for (double &x : s) x = n(rng);
        const double tau = 0.5 + trial % 3;
        std::vector<double> a = solve_sparsemax(s, tau);
        REQUIRE(std::accumulate(a.begin(), a.end(), 0.0) == Approx(1.0).margin(1e-12));
        for (double x : a) REQUIRE(x >= 0.0);
        // Projection optimality: <z - a, y - a> <= 0 for every vertex y of the simplex.
        double za = 0;
        for (size_t i = 0; i < s.size(); ++i) za += (s[i] / tau - a[i]) * a[i];
        for (size_t j = 0; j < s.size(); ++j) REQUIRE((s[j] / tau - a[j]) - za <= 1e-12);
    }
}

TEST_CASE("Frank-Wolfe gap shrinks and iterates stay on the simplex", "[reference]") {
    std::vector<double> s{1.0, 0.9, 0.3, -2.0};
    double gap4 = 0, gap40 = 0;
    std::vector<double> a4 = solve_fw(s, 4, 1.0, &gap4), a40 = solve_fw(s, 40, 1.0, &gap40);
    REQUIRE(std::accumulate(a4.begin(), a4.end(), 0.0) == Approx(1.0));
    REQUIRE(gap40 >= 0.0);
    REQUIRE(gap40 < gap4);
    std::vector<double> exact = solve_sparsemax(s, 1.0);
    for (size_t i = 0; i < s.size(); ++i) REQUIRE(a40[i] == Approx(exact[i]).margin(0.05));
}

TEST_CASE("the reference bound is never below the true error", "[reference]") {
    for (uint64_t seed = 1; seed <= 20; ++seed) {
        ProblemSpec spec;
        spec.seq_lens = {300, 180};
        spec.kind = seed % 2 ? DataKind::Gaussian : DataKind::Planted;
        spec.seed = seed;
        Problem p = make_problem(spec);
        Summaries sum = summarize(p.cache, p.seqs, DType::BF16);
        SparseOptions opt;
        opt.top_pages = 4;
        opt.top_tokens = 16;
        opt.routing = RoutingMode::Bound;
        for (int b = 0; b < 2; ++b)
            for (int h = 0; h < spec.kv_heads; ++h)
                for (int g = 0; g < spec.group; ++g) {
                    require_bound_holds(p, sparse_head(p.cache, p.seqs, p.q, sum, opt, b, h, g), b, h, g);
                }
    }
}

TEST_CASE("bf16 and f16 rounding is round-to-nearest-even", "[reference]") {
    REQUIRE(round_to(DType::BF16, 1.0f + 1.0f / 256) == 1.0f);               // tie to even
    REQUIRE(round_to(DType::BF16, 1.0f + 3.0f / 256) == 1.0f + 4.0f / 256);  // tie to even, up
    REQUIRE(round_to(DType::F16, 1.0f + 1.0f / 2048) == 1.0f);
    REQUIRE(from_bits16(DType::BF16, to_bits16(DType::BF16, -2.5f)) == -2.5f);
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
TEST_CASE("f16 conversions agree with the compiler's _Float16 on every half and 44M floats", "[reference]") {
    for (uint32_t h = 0; h < 65536; ++h) {
        _Float16 x;
        const uint16_t bits = uint16_t(h);
        std::memcpy(&x, &bits, 2);
        const float want = float(x), got = f16_bits_to_float(bits);
        if (std::isnan(want)) {
            REQUIRE(std::isnan(got));
            continue;
        }
        REQUIRE(std::memcmp(&want, &got, 4) == 0);
    }
    // Every 97th f32 bit pattern (all exponents, both signs), and the halves' rounding edges.
    auto check = [](uint32_t u) {
        float f;
        std::memcpy(&f, &u, 4);
        const _Float16 x = static_cast<_Float16>(f);
        uint16_t want;
        std::memcpy(&want, &x, 2);
        const uint16_t got = float_to_f16_bits(f);
        if (std::isnan(f)) return (got & 0x7c00) == 0x7c00 && (got & 0x3ff) != 0;
        return got == want;
    };
    size_t bad = 0;
    for (uint64_t u = 0; u < (uint64_t(1) << 32); u += 97) bad += !check(uint32_t(u));
    for (float edge : {65504.0f, 65519.99f, 65520.0f, 6.1035156e-5f, 5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f})
        for (int k = -4; k <= 4; ++k) {
            uint32_t u;
            std::memcpy(&u, &edge, 4);
            bad += !check(u + k) + !check((u + k) | 0x80000000u);
        }
    REQUIRE(bad == 0);
}
#endif

namespace {
// Moves every key channel but the first of each sketch group half a quantization step off
// the grid of its group's scale (the largest residual the sketch leaves).
void half_step_keys(Problem &p, int gs, int bits) {
    const int D = p.cache.head_dim, qmax = sketch_max_code(bits);
    for (size_t t = 0; t < p.cache.k.size() / D; ++t)
        for (int grp = 0; grp < D / gs; ++grp) {
            float *k = &p.cache.k[t * D + grp * gs];
            float absmax = 0;
            for (int d = 0; d < gs; ++d) absmax = std::max(absmax, std::abs(k[d]));
            const float sigma = round_toward(DType::BF16, absmax / float(qmax), true);
            for (int d = 1; d < gs; ++d) k[d] = (std::floor(k[d] / sigma) + 0.5f) * sigma;
        }
}
}  // namespace

TEST_CASE("the sketch's upper bound holds for every token and needs its whole width", "[reference]") {
    // Keys half a quantization step off their group's 8-bit grid (the largest residual),
    // queries aligned with the residuals: ub_t >= s_t everywhere, and a_t + (ub_t - a_t) / 2
    // falls below s_t for some token, so the residual term is needed.
    for (int bits : {8, 4}) {
        ProblemSpec spec;
        spec.kv_heads = 2;
        spec.group = 2;
        spec.head_dim = 64;
        spec.seq_lens = {300, 77};
        spec.dtype = DType::F32;
        Problem p = make_problem(spec);
        const int D = 64, gs = 16;
        half_step_keys(p, gs, bits);
        Summaries sum = summarize(p.cache, p.seqs, DType::F32, bits, gs);
        const float scale = float(default_scale(D));
        long tokens = 0, half_violations = 0;
        double worst = -1e30;
        for (int b = 0; b < 2; ++b)
            for (int h = 0; h < 2; ++h)
                for (int g = 0; g < 2; ++g) {
                    std::vector<float> q(p.q.head(b, h, g), p.q.head(b, h, g) + D);
                    for (int t = 0; t < p.seqs.seq_lens[b]; ++t) {
                        const int page = p.seqs.page_of(b, t, 16);
                        std::vector<float> qq = q;  // signs aligned with this token's residuals
                        double exact = 0;
                        for (int d = 0; d < D; ++d) {
                            const float k = p.cache.k[p.cache.offset(page, t % 16, h, d)];
                            const size_t tok = sum.token_at(b, h, t / 16, t % 16);
                            const float r =
                                k - sum.sketch_scale[tok * (D / gs) + d / gs] * sum.sketch_code[tok * D + d];
                            qq[d] = std::abs(q[d]) * (r >= 0 ? 1.0f : -1.0f);
                            exact += double(qq[d]) * k;
                        }
                        exact *= scale;
                        const SketchScore sk = sketch_score(sum, qq.data(), b, h, t / 16, t % 16, scale);
                        worst = std::max(worst, exact - double(sk.ub));
                        if (sk.a + 0.5 * (double(sk.ub) - sk.a) < exact) ++half_violations;
                        ++tokens;
                    }
                }
        INFO(bits << "-bit sketch, " << tokens << " tokens");
        CHECK(worst <= 0);
        CHECK(half_violations > tokens / 2);
    }
}

TEST_CASE("the sketch's upper bound covers the query's quantization", "[reference]") {
    // Keys half a quantization step off their grid (as above); per group one query channel
    // at the top of the query's int16 range, signed like its key residual, and the others
    // at 0.49 of the query's step (so they quantize to 0), signed like their key codes:
    // ub_t >= s_t everywhere, and at 8 bits a bound without the query's term (scale *
    // sum_grp sigma ||q_grp||_1 * width factor) falls below s_t for some token.
    for (int bits : {8, 4}) {
        ProblemSpec spec;
        spec.kv_heads = 2;
        spec.group = 1;
        spec.head_dim = 64;
        spec.seq_lens = {200};
        spec.dtype = DType::F32;
        Problem p = make_problem(spec);
        const int D = 64, gs = 16, groups = D / gs;
        half_step_keys(p, gs, bits);
        Summaries sum = summarize(p.cache, p.seqs, DType::F32, bits, gs);
        const float scale = float(default_scale(D));
        const double factor = fp::sketch_width_factor(D, gs, bits);
        long tokens = 0, needs_query_term = 0;
        double worst = -1e30;
        for (int h = 0; h < 2; ++h)
            for (int t = 0; t < p.seqs.seq_lens[0]; ++t) {
                const int page = p.seqs.page_of(0, t, 16);
                const size_t tok = sum.token_at(0, h, t / 16, t % 16);
                std::vector<float> q(D);
                double exact = 0, key_only = 0;
                for (int grp = 0; grp < groups; ++grp) {
                    const float step = 1.0f / 1024, sigma = sum.sketch_scale[tok * groups + grp];
                    double l1 = 0;
                    for (int d = grp * gs; d < (grp + 1) * gs; ++d) {
                        const float k = p.cache.k[p.cache.offset(page, t % 16, h, d)];
                        const int code = sum.sketch_code[tok * D + d];
                        const float r = k - sigma * float(code);
                        q[d] = d == grp * gs + 1 ? fp::kSketchQueryMax * step * (r >= 0 ? 1.0f : -1.0f)
                                                 : 0.49f * step * (code >= 0 ? 1.0f : -1.0f);
                        exact += double(q[d]) * k;
                        l1 += std::abs(q[d]);
                    }
                    key_only += sigma * l1;
                }
                exact *= scale;
                const SketchScore sk = sketch_score(sum, q.data(), 0, h, t / 16, t % 16, scale);
                worst = std::max(worst, exact - double(sk.ub));
                if (sk.a + scale * key_only * factor < exact) ++needs_query_term;
                ++tokens;
            }
        INFO(bits << "-bit sketch, " << tokens << " tokens, " << needs_query_term << " need the query's term");
        CHECK(worst <= 0);
        if (bits == 8) CHECK(needs_query_term > 0);
    }
}

TEST_CASE("route_order lists a sequence's pages by physical page, ties in logical order, with its inverse",
          "[reference]") {
    std::mt19937 rng(7);
    for (int trial = 0; trial < 600; ++trial) {
        const int width = 1 + int(rng() % 300), n = 1 + int(rng() % width);
        // Physical pages from a small range (many ties, a page mapped twice) or a wide one
        // (several radix passes); past n the entries are whatever the engine left there.
        const uint32_t range = trial % 3 == 0 ? 8u : trial % 3 == 1 ? 5000u : 0x7fffffffu;
        std::vector<int32_t> table(width);
        for (int j = 0; j < width; ++j) table[j] = j < n ? int32_t(rng() % range) : int32_t(rng()) - (1 << 30);
        std::vector<int32_t> pages(width), rank(width);
        std::vector<uint32_t> scratch(2 * width);
        route_order(table.data(), n, width, pages.data(), rank.data(), scratch.data());
        std::vector<int> want(n);
        std::iota(want.begin(), want.end(), 0);
        std::stable_sort(want.begin(), want.end(), [&](int a, int b) { return table[a] < table[b]; });
        for (int j = 0; j < n; ++j) {
            REQUIRE(pages[j] == table[want[j]]);
            REQUIRE(rank[want[j]] == j);
        }
        for (int j = n; j < width; ++j) {
            REQUIRE(pages[j] == table[j]);
            REQUIRE(rank[j] == j);
        }
    }
}
