#include "reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace vashista::ref {

float round_to(DType t, float x) { return t == DType::F32 ? x : from_bits16(t, to_bits16(t, x)); }

float round_toward(DType t, float x, bool up) {
    if (t == DType::F32) return x;
    const uint16_t bits = to_bits16(t, x);
    const float nearest = from_bits16(t, bits);
    if (up ? nearest >= x : nearest <= x) return nearest;
    const bool negative = bits & 0x8000, zero = (bits & 0x7fff) == 0;
    uint16_t step;
    if (up)
        step = zero ? 0x0001 : negative ? bits - 1 : bits + 1;
    else
        step = zero ? 0x8001 : negative ? bits + 1 : bits - 1;
    return from_bits16(t, step);
}

Cache::Cache(int num_pages_, int kv_heads_, int page_size_, int head_dim_, KvLayout layout_, DType dtype_)
    : num_pages(num_pages_),
      kv_heads(kv_heads_),
      page_size(page_size_),
      head_dim(head_dim_),
      layout(layout_),
      dtype(dtype_),
      k(size_t(num_pages_) * kv_heads_ * page_size_ * head_dim_, 0.0f),
      v(size_t(num_pages_) * kv_heads_ * page_size_ * head_dim_, 0.0f) {}

size_t Cache::offset(int page, int slot, int head, int d) const {
    if (layout == KvLayout::HND) return ((size_t(page) * kv_heads + head) * page_size + slot) * head_dim + d;
    return ((size_t(page) * page_size + slot) * kv_heads + head) * head_dim + d;
}

double default_scale(int head_dim) { return 1.0 / std::sqrt(double(head_dim)); }

float summary_scale_of(float absmax) {
    return std::max(round_toward(DType::BF16, absmax * kSummaryScaleFactor, true), kSummaryScaleMin);
}

namespace {
int clamp_code(float c) { return int(std::clamp(c, -float(kSummaryMaxCode), float(kSummaryMaxCode))); }
}  // namespace

// floor and ceil of the f32 quotient are within one of the exact ones; the exact products
// sigma * c decide.
int summary_code_down(float x, float sigma) {
    float c = std::floor(x / sigma);
    if (sigma * c > x)
        c -= 1;
    else if (sigma * (c + 1) <= x)
        c += 1;
    return clamp_code(c);
}

int summary_code_up(float x, float sigma) {
    float c = std::ceil(x / sigma);
    if (sigma * c < x)
        c += 1;
    else if (sigma * (c - 1) >= x)
        c -= 1;
    return clamp_code(c);
}

int summary_code_nearest(float x, float sigma) { return clamp_code(std::nearbyint(x / sigma)); }

Summaries summarize(const Cache &cache, const Sequences &seqs, DType summary_dtype, int sketch_bits, int sketch_group) {
    if (summary_dtype == DType::I8 && cache.head_dim % kSummaryScaleGroup != 0)
        throw std::invalid_argument(summary_config_error(cache.head_dim, cache.dtype, summary_dtype));
    Summaries s;
    s.batch = seqs.batch;
    s.kv_heads = cache.kv_heads;
    s.max_pages = seqs.max_pages;
    s.head_dim = cache.head_dim;
    s.dtype = summary_dtype;
    const int D = cache.head_dim, S = cache.page_size;
    const bool compact = summary_dtype == DType::I8;
    const int scale_groups = summary_scale_groups(D, summary_dtype);
    size_t rows = size_t(s.batch) * s.kv_heads * s.max_pages;
    if (compact) s.summary_scale.assign(rows * scale_groups, 0.0f);
    s.mean.assign(rows * D, 0.0f);
    s.lo.assign(rows * D, 0.0f);
    s.hi.assign(rows * D, 0.0f);
    s.value_norm.assign(rows, 0.0);
    s.key_absmax.assign(rows, 0.0f);
    for (int b = 0; b < s.batch; ++b) {
        const int len = seqs.seq_lens[b];
        for (int j = 0; j * S < len; ++j) {
            const int page = seqs.page_table[size_t(b) * s.max_pages + j];
            const int n = std::min(S, len - j * S);
            for (int h = 0; h < s.kv_heads; ++h) {
                size_t row = s.at(b, h, j);
                std::vector<float> mean(D), lo(D), hi(D);
                for (int d = 0; d < D; ++d) {
                    double sum = 0;
                    lo[d] = std::numeric_limits<float>::infinity(), hi[d] = -lo[d];
                    for (int t = 0; t < n; ++t) {
                        float x = cache.k[cache.offset(page, t, h, d)];
                        sum += x;
                        lo[d] = std::min(lo[d], x);
                        hi[d] = std::max(hi[d], x);
                    }
                    // The mean as the kernel forms it: an f32 sum divided in f32.
                    mean[d] = float(sum) / float(n);
                }
                for (int d = 0; d < D; ++d) {
                    if (compact) {
                        const int grp = d / kSummaryScaleGroup;
                        float absmax = 0;
                        for (int x = grp * kSummaryScaleGroup; x < (grp + 1) * kSummaryScaleGroup; ++x)
                            absmax = std::max({absmax, std::abs(lo[x]), std::abs(hi[x])});
                        const float sigma = summary_scale_of(absmax);
                        s.summary_scale[row * scale_groups + grp] = sigma;
                        s.mean[row * D + d] = sigma * float(summary_code_nearest(mean[d], sigma));
                        s.lo[row * D + d] = sigma * float(summary_code_down(lo[d], sigma));
                        s.hi[row * D + d] = sigma * float(summary_code_up(hi[d], sigma));
                    } else {
                        s.mean[row * D + d] = round_to(summary_dtype, mean[d]);
                        s.lo[row * D + d] = round_toward(summary_dtype, lo[d], false);
                        s.hi[row * D + d] = round_toward(summary_dtype, hi[d], true);
                    }
                    s.key_absmax[row] =
                        std::max({s.key_absmax[row], std::abs(s.lo[row * D + d]), std::abs(s.hi[row * D + d])});
                }
                double vmax = 0;
                for (int t = 0; t < n; ++t) {
                    double sq = 0;
                    for (int d = 0; d < D; ++d) {
                        double x = cache.v[cache.offset(page, t, h, d)];
                        sq += x * x;
                    }
                    vmax = std::max(vmax, std::sqrt(sq));
                }
                s.value_norm[row] = vmax;
            }
        }
    }
    s.page_size = S;
    if (sketch_config_error(D, sketch_bits, sketch_group).empty()) {
        s.sketch_bits = sketch_bits;
        s.sketch_group = sketch_group;
        const int groups = D / sketch_group, qmax = sketch_max_code(sketch_bits);
        s.sketch_code.assign(rows * S * D, 0);
        s.sketch_scale.assign(rows * S * groups, 0.0f);
        for (int b = 0; b < s.batch; ++b) {
            const int len = seqs.seq_lens[b];
            for (int t = 0; t < len; ++t) {
                const int j = t / S, page = seqs.page_of(b, t, S);
                for (int h = 0; h < s.kv_heads; ++h) {
                    const size_t tok = s.token_at(b, h, j, t % S);
                    for (int grp = 0; grp < groups; ++grp) {
                        float absmax = 0;
                        for (int d = grp * sketch_group; d < (grp + 1) * sketch_group; ++d)
                            absmax = std::max(absmax, std::abs(cache.k[cache.offset(page, t % S, h, d)]));
                        const float sigma = round_toward(DType::BF16, absmax / float(qmax), true);
                        s.sketch_scale[tok * groups + grp] = sigma;
                        for (int d = grp * sketch_group; d < (grp + 1) * sketch_group; ++d) {
                            const float q = std::nearbyint(cache.k[cache.offset(page, t % S, h, d)] / sigma);
                            s.sketch_code[tok * D + d] =
                                sigma > 0 ? int8_t(std::clamp(q, -float(qmax), float(qmax))) : 0;
                        }
                    }
                }
            }
        }
    }
    return s;
}

std::vector<double> solve_softmax(const std::vector<double> &s) {
    double m = *std::max_element(s.begin(), s.end());
    std::vector<double> a(s.size());
    double z = 0;
    for (size_t i = 0; i < s.size(); ++i) z += a[i] = std::exp(s[i] - m);
    for (double &x : a) x /= z;
    return a;
}

std::vector<double> solve_eg(const std::vector<double> &s, int steps, double eta) {
    std::vector<double> a(s.size(), 1.0 / double(s.size()));
    double m = *std::max_element(s.begin(), s.end());
    for (int t = 0; t < steps; ++t) {
        double z = 0;
        for (size_t i = 0; i < s.size(); ++i) z += a[i] *= std::exp(eta * (s[i] - m));
        for (double &x : a) x /= z;
    }
    return a;
}

static size_t first_argmax(const std::vector<double> &x) {
    size_t best = 0;
    for (size_t i = 1; i < x.size(); ++i)
        if (x[i] > x[best]) best = i;
    return best;
}

std::vector<double> solve_fw(const std::vector<double> &s, int steps, double tau, double *duality_gap) {
    std::vector<double> a(s.size(), 0.0), grad(s.size());
    a[first_argmax(s)] = 1.0;
    auto gradient = [&] {
        for (size_t i = 0; i < s.size(); ++i) grad[i] = s[i] - tau * a[i];
    };
    for (int t = 0; t < steps; ++t) {
        gradient();
        size_t v = first_argmax(grad);
        double gamma = 2.0 / (t + 2.0);
        for (double &x : a) x *= 1.0 - gamma;
        a[v] += gamma;
    }
    gradient();
    size_t v = first_argmax(grad);
    double inner = 0;
    for (size_t i = 0; i < s.size(); ++i) inner += grad[i] * a[i];
    if (duality_gap) *duality_gap = grad[v] - inner;
    return a;
}

std::vector<double> solve_sparsemax(const std::vector<double> &s, double tau, double *threshold) {
    std::vector<double> z(s.size());
    for (size_t i = 0; i < s.size(); ++i) z[i] = s[i] / tau;
    std::vector<double> sorted = z;
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    double cumsum = 0, theta = 0;
    for (size_t k = 0; k < sorted.size(); ++k) {
        cumsum += sorted[k];
        if (1.0 + double(k + 1) * sorted[k] > cumsum) theta = (cumsum - 1.0) / double(k + 1);
    }
    std::vector<double> a(z.size());
    for (size_t i = 0; i < z.size(); ++i) a[i] = std::max(z[i] - theta, 0.0);
    if (threshold) *threshold = theta;
    return a;
}

namespace {

double dot(const float *a, const float *b_cache, const Cache &cache, int page, int slot, int h) {
    double acc = 0;
    for (int d = 0; d < cache.head_dim; ++d) acc += double(a[d]) * double(b_cache[cache.offset(page, slot, h, d)]);
    return acc;
}

// Indices of the `k` largest scores, ties to the lower index, returned increasing.
// The k largest, ties to the lower index, among the eligible indices (all when `eligible`
// is empty); returned increasing.
std::vector<int> top_indices(const std::vector<double> &score, int k, const std::vector<char> &eligible = {}) {
    std::vector<int> idx;
    for (int i = 0; i < int(score.size()); ++i)
        if (eligible.empty() || eligible[i]) idx.push_back(i);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return score[a] > score[b]; });
    idx.resize(std::min<size_t>(idx.size(), size_t(k)));
    std::sort(idx.begin(), idx.end());
    return idx;
}

// scale * sum_d max(q_d lo_d, q_d hi_d): the upper bound of q.k over a box.
double box_score(const float *q, const float *lo, const float *hi, int D, double scale) {
    double acc = 0;
    for (int d = 0; d < D; ++d) acc += std::max(double(q[d]) * lo[d], double(q[d]) * hi[d]);
    return scale * acc;
}

double page_score(const Summaries &sum, const float *q, int b, int h, int j, RoutingMode mode, double scale) {
    const int D = sum.head_dim;
    size_t row = sum.at(b, h, j) * D;
    if (mode != RoutingMode::Mean) return box_score(q, &sum.lo[row], &sum.hi[row], D, scale);
    double acc = 0;
    for (int d = 0; d < D; ++d) acc += double(q[d]) * sum.mean[row + d];
    return scale * acc;
}

}  // namespace

void add_super_pages(Summaries &sum, const Sequences &seqs, int super_pages) {
    const std::string err = hier_config_error(super_pages, kSuperExpandDefault);
    if (!err.empty()) throw std::invalid_argument(err);
    const int D = sum.head_dim, S = sum.page_size;
    sum.super_pages = super_pages;
    sum.max_supers = super_pages_of(sum.max_pages, super_pages);
    const size_t rows = size_t(sum.batch) * sum.kv_heads * sum.max_supers * D;
    sum.super_lo.assign(rows, 0.0f);
    sum.super_hi.assign(rows, 0.0f);
    sum.super_value_norm.assign(rows / D, 0.0);
    for (int b = 0; b < sum.batch; ++b) {
        const int n_pages = (seqs.seq_lens[b] + S - 1) / S;
        for (int h = 0; h < sum.kv_heads; ++h)
            for (int sp = 0; sp < super_pages_of(n_pages, super_pages); ++sp) {
                float *lo = &sum.super_lo[sum.super_at(b, h, sp) * D], *hi = &sum.super_hi[sum.super_at(b, h, sp) * D];
                std::fill(lo, lo + D, std::numeric_limits<float>::infinity());
                std::fill(hi, hi + D, -std::numeric_limits<float>::infinity());
                double &norm = sum.super_value_norm[sum.super_at(b, h, sp)];
                for (int j = sp * super_pages; j < std::min(n_pages, (sp + 1) * super_pages); ++j) {
                    for (int d = 0; d < D; ++d) {
                        lo[d] = std::min(lo[d], sum.lo[sum.at(b, h, j) * D + d]);
                        hi[d] = std::max(hi[d], sum.hi[sum.at(b, h, j) * D + d]);
                    }
                    norm = std::max(norm, sum.value_norm[sum.at(b, h, j)]);
                }
            }
    }
}

SketchScore sketch_score(const Summaries &sum, const float *q, int b, int h, int j, int s, float scale) {
    const int D = sum.head_dim, gs = sum.sketch_group, groups = D / gs;
    const size_t tok = sum.token_at(b, h, j, s);
    const float query_weight = float(fp::sketch_query_weight(gs, sum.sketch_bits));
    float dot = 0, width = 0;
    for (int grp = 0; grp < groups; ++grp) {
        // The query's codes for this group, as the kernels quantize it.
        float absmax = 0, q_l1 = 0;
        for (int d = grp * gs; d < (grp + 1) * gs; ++d) {
            absmax = std::max(absmax, std::abs(q[d]));
            q_l1 += std::abs(q[d]);
        }
        const float step = std::max(absmax * float(1.0 / fp::kSketchQueryMax), std::numeric_limits<float>::min());
        int32_t inner = 0;
        for (int d = grp * gs; d < (grp + 1) * gs; ++d) {
            const float n =
                std::clamp(std::nearbyint(q[d] / step), -float(fp::kSketchQueryMax), float(fp::kSketchQueryMax));
            inner += int32_t(n) * int32_t(sum.sketch_code[tok * D + d]);
        }
        const float sigma = sum.sketch_scale[tok * groups + grp];
        dot += sigma * (step * float(inner));
        width += sigma * (q_l1 + query_weight * step);
    }
    const float a = scale * dot;
    const float e = scale * width * float(fp::sketch_width_factor(D, gs, sum.sketch_bits));
    const float u4 = float(4 * fp::kUnit32);
    return {a, a + e + u4 * (std::abs(a) + e)};
}

double solver_temperature(const SparseOptions &opt) {
    return opt.solver == Solver::EG ? double(eg_temperature(opt.solver_steps, float(opt.solver_eta))) : 1.0;
}

HeadResult sparse_head(const Cache &cache, const Sequences &seqs, const Queries &q, const Summaries &sum,
                       const SparseOptions &opt, int b, int h, int g) {
    HeadResult r;
    const int S = cache.page_size, D = cache.head_dim, len = seqs.seq_lens[b];
    const int n_pages = (len + S - 1) / S;
    const double scale = opt.scale > 0 ? opt.scale : default_scale(D);
    const double inf = std::numeric_limits<double>::infinity();
    const float *qh = q.head(b, h, g);
    const bool sketch = opt.routing == RoutingMode::Sketch;
    if (sketch && (sum.sketch_bits != opt.sketch_bits || sum.sketch_group != opt.sketch_group))
        throw std::invalid_argument("the summaries' sketch (bits " + std::to_string(sum.sketch_bits) + ", group " +
                                    std::to_string(sum.sketch_group) + ") is not the one the options ask for");
    // Sketch routing: a page's score is its largest a_t; ub_t bounds each token's score.
    auto sketch_of = [&](const float *qq, int j, int s) { return sketch_score(sum, qq, b, h, j, s, float(scale)); };
    auto own_score = [&](const float *qq, int j) {
        if (!sketch) return page_score(sum, qq, b, h, j, opt.routing, scale);
        double best = -inf;
        for (int s = 0; s < S && j * S + s < len; ++s) best = std::max(best, double(sketch_of(qq, j, s).a));
        return best;
    };
    std::vector<SketchScore> mine;  // this head's a_t and ub_t of every token (sketch routing)
    for (int t = 0; sketch && t < len; ++t) mine.push_back(sketch_of(qh, t / S, t % S));

    // Hierarchical bounds: each super-page's box score (this head's, and the one it is
    // routed by), its box's largest |x|, and the top super_expand super-pages expanded.
    const bool hier = opt.routing == RoutingMode::HierBound;
    const int R = opt.super_pages;
    if (hier && sum.super_pages != R)
        throw std::invalid_argument("the summaries' super-pages (R = " + std::to_string(sum.super_pages) +
                                    ") are not the ones the options ask for (R = " + std::to_string(R) + ")");
    const int n_supers = hier ? super_pages_of(n_pages, R) : 0;
    std::vector<double> own_super(n_supers), route_super(n_supers), super_absmax(n_supers, 0.0);
    std::vector<char> expanded(n_supers, 0);
    auto super_score = [&](const float *qq, int sp) {
        const size_t row = sum.super_at(b, h, sp) * D;
        return box_score(qq, &sum.super_lo[row], &sum.super_hi[row], D, scale);
    };
    for (int sp = 0; sp < n_supers; ++sp) {
        own_super[sp] = route_super[sp] = super_score(qh, sp);
        if (opt.group_routing == GroupRouting::Shared)
            for (int gg = 0; gg < q.group; ++gg)
                route_super[sp] = std::max(route_super[sp], super_score(q.head(b, h, gg), sp));
        const size_t row = sum.super_at(b, h, sp) * D;
        for (int d = 0; d < D; ++d)
            super_absmax[sp] = std::max(
                {super_absmax[sp], std::abs(double(sum.super_lo[row + d])), std::abs(double(sum.super_hi[row + d]))});
    }
    for (int sp : top_indices(route_super, opt.super_expand)) expanded[sp] = 1;

    // 1. routing; sink and local pages first, whatever their scores (in hier_bound routing
    // the other pages only of expanded super-pages)
    std::vector<double> own(n_pages), route(n_pages);
    std::vector<char> eligible(hier ? n_pages : 0);
    for (int j = 0; j < n_pages; ++j) {
        own[j] = own_score(qh, j);
        if (opt.group_routing == GroupRouting::PerHead) {
            route[j] = own[j];
        } else {
            route[j] = -inf;
            for (int gg = 0; gg < q.group; ++gg) route[j] = std::max(route[j], own_score(q.head(b, h, gg), j));
        }
        const bool always = j < opt.sink_pages || j >= n_pages - opt.local_pages;
        if (always) route[j] = inf;
        if (hier) eligible[j] = always || expanded[j / R];
    }
    r.pages = top_indices(route, opt.top_pages, eligible);
    std::vector<char> page_selected(n_pages, 0);
    for (int j : r.pages) page_selected[j] = 1;

    // 2. candidates
    // Exact scores, or in sketch routing a_t for selection and ub_t for the leakage; the
    // candidates are scored exactly either way.
    std::vector<int> pos;
    std::vector<double> score, upper;
    for (int j : r.pages) {
        const int page = seqs.page_table[size_t(b) * seqs.max_pages + j];
        for (int t = 0; t < S && j * S + t < len; ++t) {
            pos.push_back(j * S + t);
            if (sketch) {
                score.push_back(mine[j * S + t].a);
                upper.push_back(mine[j * S + t].ub);
            } else {
                score.push_back(scale * dot(qh, cache.k.data(), cache, page, t, h));
            }
        }
    }
    std::vector<int> keep = top_indices(score, opt.top_tokens);
    std::vector<char> is_candidate(pos.size(), 0);
    std::vector<double> cs;
    for (int i : keep) {
        is_candidate[i] = 1;
        r.candidates.push_back(pos[i]);
        const int page = seqs.page_of(b, pos[i], S);
        cs.push_back(sketch ? scale * dot(qh, cache.k.data(), cache, page, pos[i] % S, h) : score[i]);
    }

    // 3. solver
    std::vector<double> alpha;
    const double beta = solver_temperature(opt);
    double theta = 0;
    switch (opt.solver) {
        case Solver::Softmax:
            alpha = solve_softmax(cs);
            break;
        case Solver::EG:
            alpha = solve_eg(cs, opt.solver_steps, double(float(opt.solver_eta)));
            break;
        case Solver::FW:
            alpha = solve_fw(cs, opt.solver_steps, opt.solver_tau, &r.fw_gap);
            break;
        case Solver::Sparsemax:
            alpha = solve_sparsemax(cs, opt.solver_tau, &theta);
            break;
    }

    // 4. output and LSE (at temperature beta for softmax and eg)
    r.out.assign(D, 0.0);
    for (size_t c = 0; c < cs.size(); ++c) {
        const int p = r.candidates[c];
        const int page = seqs.page_of(b, p, S);
        for (int d = 0; d < D; ++d) r.out[d] += alpha[c] * cache.v[cache.offset(page, p % S, h, d)];
    }
    const double m = *std::max_element(cs.begin(), cs.end());
    const double lse_beta = opt.solver == Solver::Softmax || opt.solver == Solver::EG ? beta : 1.0;
    double z_lse = 0, zb = 0, min_c = inf;
    for (double s : cs) {
        z_lse += std::exp(lse_beta * (s - m));
        zb += std::exp(beta * (s - m));
        min_c = std::min(min_c, s);
    }
    r.lse = m + std::log(z_lse) / lse_beta;
    r.max_score = m;

    // Diagnostics and the certificate: the formulas of algorithm.cpp, in double.
    const double u = fp::kUnit32;
    double q_l1 = 0;
    for (int d = 0; d < D; ++d) q_l1 += std::abs(double(qh[d]));
    const double q_l1_up = q_l1 * (1 + 2 * fp::gamma32(D));  // as the kernel bounds its f32 sum
    const double error_per_key = scale * q_l1_up * fp::score_error32(D);
    auto upper_term = [&](double s, double e) {
        return std::exp(beta * (s + e - m) + 8 * u * beta * (std::abs(s) + e + std::abs(m)));
    };
    auto upper_score = [&](double s, double e) { return s + e + 4 * u * (std::abs(s) + e); };
    double leak_in = 0, leak_out = 0, outside_max = -inf, outside_upper = -inf, vout = 0, vcand = 0, kabs_seq = 0;
    for (size_t i = 0; i < pos.size(); ++i) {
        const size_t row = sum.at(b, h, pos[i] / S);
        vcand = std::max(vcand, sum.value_norm[row]);
        if (is_candidate[i]) continue;
        const double s = sketch ? upper[i] : score[i];
        const double e = sketch ? 0 : error_per_key * sum.key_absmax[row];
        leak_in += upper_term(s, e);
        outside_max = std::max(outside_max, s);
        outside_upper = std::max(outside_upper, upper_score(s, e));
        vout = std::max(vout, sum.value_norm[row]);
    }
    auto outside_term = [&](double tokens, double u_p, double e, double value_norm) {
        leak_out += tokens * upper_term(u_p, e);
        outside_max = std::max(outside_max, u_p);
        outside_upper = std::max(outside_upper, upper_score(u_p, e));
        vout = std::max(vout, value_norm);
    };
    // hier_bound: an unexpanded super-page is one term, over the tokens of its pages that are
    // neither sink nor local pages (those have their own scores), at its box's bound and with
    // its largest value norm.
    auto by_super = [&](int j) {
        return hier && !expanded[j / R] && j >= opt.sink_pages && j < n_pages - opt.local_pages;
    };
    for (int sp = 0; sp < n_supers; ++sp) {
        kabs_seq = std::max(kabs_seq, super_absmax[sp]);
        if (expanded[sp]) continue;
        const int first = std::max(sp * R, opt.sink_pages), end = std::min((sp + 1) * R, n_pages - opt.local_pages);
        if (first < end)
            outside_term(std::min(len, end * S) - first * S, own_super[sp], error_per_key * super_absmax[sp],
                         sum.super_value_norm[sum.super_at(b, h, sp)]);
    }
    for (int j = 0; j < n_pages; ++j) {
        const size_t row = sum.at(b, h, j);
        if (by_super(j)) continue;
        kabs_seq = std::max(kabs_seq, double(sum.key_absmax[row]));
        if (page_selected[j]) continue;
        // A page's term: n_p exp(beta (u_p - m)), or in sketch routing exp(beta (M_p - m))
        // times the sum of exp(beta (ub_t - M_p)) over its tokens, M_p = max ub_t.
        double u_p = own[j], tokens = std::min(S, len - j * S);
        const double e = sketch ? 0 : error_per_key * sum.key_absmax[row];
        if (sketch) {
            u_p = -inf;
            for (int t = j * S; t < std::min(len, (j + 1) * S); ++t) u_p = std::max(u_p, double(mine[t].ub));
            tokens = 0;
            for (int t = j * S; t < std::min(len, (j + 1) * S); ++t) tokens += std::exp(beta * (mine[t].ub - u_p));
        }
        outside_term(tokens, u_p, e, sum.value_norm[row]);
    }
    // Terms of the f32 outside sum: pages, and in hier_bound super-pages.
    const double n_out = seqs.max_pages + (hier ? sum.max_supers : 0) + 2.0;
    const double e64 = scale * q_l1_up * kabs_seq * fp::score_error64(D);
    const double z_low = zb * std::exp(-beta * e64) * (1 - fp::gamma64(opt.top_tokens + 2) - fp::kExp64);
    const double page_sum = sketch ? fp::page_sum_inflation(S) : 1.0;
    const double floor = fp::kExpFloor * double(len - int(cs.size()));
    r.leakage = (leak_in * (1 + fp::kExp32) * (1 + fp::gamma32(opt.top_pages * S + 2)) +
                 leak_out * (1 + fp::kExp32) * (1 + n_out * u / (1 - n_out * u)) * page_sum + floor) /
                z_low;
    r.outside_mass = std::isfinite(r.leakage) ? r.leakage / (1.0 + r.leakage) : 1.0;
    double onorm = 0;
    for (double x : r.out) onorm += x * x;
    onorm = std::sqrt(onorm);
    const double largest = std::max(std::abs(m), std::abs(min_c));
    const double rho = std::exp(beta * (e64 + 8 * fp::kUnit64 * largest)) * (1 + fp::kExp64) - 1;
    const double g64 = fp::gamma64(opt.top_tokens + 2);
    const double kappa = rho < 0.5 ? (1 + rho) * (1 + g64) / ((1 - rho) * (1 - g64)) * (1 + u) - 1 : inf;
    const double rounding = (kappa + fp::gamma32(opt.top_tokens + 1) * (1 + kappa)) * vcand;
    r.value_out = vout;
    r.error_bound = (r.outside_mass * (vout + onorm + rounding) + rounding) * (1 + 4 * u);
    r.support_gap = min_c - outside_max;

    if (opt.routing == RoutingMode::Mean) {
        r.certificate = Certificate::MeanRouting;
    } else if (opt.solver == Solver::Softmax || opt.solver == Solver::EG) {
        r.certificate = std::isfinite(r.error_bound) && r.error_bound <= std::numeric_limits<float>::max()
                            ? Certificate::Certified
                            : Certificate::Overflow;
    } else if (opt.solver == Solver::Sparsemax) {
        const double tau = opt.solver_tau, KC = opt.top_tokens;
        const double z_max = largest / tau;
        const double w = 2 * KC * e64 / tau + 64 * fp::kUnit64 * (KC + 2) * (std::abs(theta) + z_max + 1);
        auto mass_at = [&](double at) {
            double mass = 0;
            for (double s : cs) mass += std::max(s / tau - at, 0.0);
            return mass;
        };
        const double spread = KC * e64 / tau;
        const bool bracketed = mass_at(theta - w) * (1 - fp::gamma64(KC + 2)) - spread >= 1 &&
                               mass_at(theta + w) * (1 + fp::gamma64(KC + 2)) + spread <= 1;
        const double threshold_low = (theta - w) * tau;
        const bool exact = bracketed && outside_upper <= threshold_low - 4 * fp::kUnit64 * std::abs(threshold_low);
        const double a_err = w + e64 / tau + 4 * fp::kUnit64 * (z_max + std::abs(theta));
        const double spread_alpha = KC * a_err;
        r.error_bound = ((spread_alpha + u * (1 + spread_alpha)) + fp::gamma32(KC + 1) * (1 + u) * (1 + spread_alpha)) *
                        vcand * (1 + 4 * u);
        r.certificate = !exact                                               ? Certificate::Solver
                        : r.error_bound <= std::numeric_limits<float>::max() ? Certificate::Certified
                                                                             : Certificate::Overflow;
    } else {
        r.certificate = Certificate::Solver;
    }
    if (r.certificate != Certificate::Certified) r.error_bound = inf;
    return r;
}

namespace {
std::vector<double> all_scores(const Cache &cache, const Sequences &seqs, const Queries &q, double scale, int b, int h,
                               int g) {
    const int S = cache.page_size, len = seqs.seq_lens[b];
    if (scale <= 0) scale = default_scale(cache.head_dim);
    std::vector<double> s(len);
    for (int t = 0; t < len; ++t)
        s[t] = scale * dot(q.head(b, h, g), cache.k.data(), cache, seqs.page_of(b, t, S), t % S, h);
    return s;
}

std::vector<double> weighted_values(const Cache &cache, const Sequences &seqs, const std::vector<double> &a, int b,
                                    int h) {
    const int S = cache.page_size, D = cache.head_dim;
    std::vector<double> out(D, 0.0);
    for (size_t t = 0; t < a.size(); ++t) {
        const int page = seqs.page_of(b, int(t), S);
        for (int d = 0; d < D; ++d) out[d] += a[t] * cache.v[cache.offset(page, int(t) % S, h, d)];
    }
    return out;
}
}  // namespace

DenseResult dense_head(const Cache &cache, const Sequences &seqs, const Queries &q, double scale, int b, int h, int g,
                       double beta) {
    std::vector<double> s = all_scores(cache, seqs, q, scale, b, h, g);
    std::vector<double> bs(s.size());
    for (size_t t = 0; t < s.size(); ++t) bs[t] = beta * s[t];
    DenseResult r;
    r.out = weighted_values(cache, seqs, solve_softmax(bs), b, h);
    double m = *std::max_element(bs.begin(), bs.end()), z = 0;
    for (double x : bs) z += std::exp(x - m);
    r.lse = (m + std::log(z)) / beta;
    return r;
}

DenseResult dense_sparsemax_head(const Cache &cache, const Sequences &seqs, const Queries &q, double scale, double tau,
                                 int b, int h, int g) {
    std::vector<double> s = all_scores(cache, seqs, q, scale, b, h, g);
    DenseResult r;
    r.out = weighted_values(cache, seqs, solve_sparsemax(s, tau), b, h);
    double m = *std::max_element(s.begin(), s.end()), z = 0;
    for (double x : s) z += std::exp(x - m);
    r.lse = m + std::log(z);
    return r;
}

}  // namespace vashista::ref
