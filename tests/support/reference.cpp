#include "reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace vashista::ref {

const char *dtype_name(DType t) {
    switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    }
    return "?";
}

int dtype_bytes(DType t) { return t == DType::F32 ? 4 : 2; }

uint16_t to_bits16(DType t, float x) {
    if (t == DType::F16) {
        _Float16 h = static_cast<_Float16>(x);
        uint16_t bits;
        std::memcpy(&bits, &h, 2);
        return bits;
    }
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

float from_bits16(DType t, uint16_t bits) {
    if (t == DType::F16) {
        _Float16 h;
        std::memcpy(&h, &bits, 2);
        return static_cast<float>(h);
    }
    uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

float round_to(DType t, float x) { return t == DType::F32 ? x : from_bits16(t, to_bits16(t, x)); }

Cache::Cache(int num_pages_, int kv_heads_, int page_size_, int head_dim_, KvLayout layout_, DType dtype_)
    : num_pages(num_pages_), kv_heads(kv_heads_), page_size(page_size_), head_dim(head_dim_),
      layout(layout_), dtype(dtype_),
      k(size_t(num_pages_) * kv_heads_ * page_size_ * head_dim_, 0.0f),
      v(size_t(num_pages_) * kv_heads_ * page_size_ * head_dim_, 0.0f) {}

size_t Cache::offset(int page, int slot, int head, int d) const {
    if (layout == KvLayout::HND)
        return ((size_t(page) * kv_heads + head) * page_size + slot) * head_dim + d;
    return ((size_t(page) * page_size + slot) * kv_heads + head) * head_dim + d;
}

double default_scale(int head_dim) { return 1.0 / std::sqrt(double(head_dim)); }

Summaries summarize(const Cache &cache, const Sequences &seqs, DType summary_dtype) {
    Summaries s;
    s.batch = seqs.batch;
    s.kv_heads = cache.kv_heads;
    s.max_pages = seqs.max_pages;
    s.head_dim = cache.head_dim;
    const int D = cache.head_dim, S = cache.page_size;
    size_t rows = size_t(s.batch) * s.kv_heads * s.max_pages;
    s.mean.assign(rows * D, 0.0f);
    s.lo.assign(rows * D, 0.0f);
    s.hi.assign(rows * D, 0.0f);
    s.value_norm.assign(rows, 0.0);
    for (int b = 0; b < s.batch; ++b) {
        const int len = seqs.seq_lens[b];
        for (int j = 0; j * S < len; ++j) {
            const int page = seqs.page_table[size_t(b) * s.max_pages + j];
            const int n = std::min(S, len - j * S);
            for (int h = 0; h < s.kv_heads; ++h) {
                size_t row = s.at(b, h, j);
                for (int d = 0; d < D; ++d) {
                    double sum = 0;
                    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
                    for (int t = 0; t < n; ++t) {
                        float x = cache.k[cache.offset(page, t, h, d)];
                        sum += x;
                        lo = std::min(lo, x);
                        hi = std::max(hi, x);
                    }
                    // The mean as the kernel forms it: an f32 sum divided in f32.
                    s.mean[row * D + d] = round_to(summary_dtype, float(sum) / float(n));
                    s.lo[row * D + d] = round_to(summary_dtype, lo);
                    s.hi[row * D + d] = round_to(summary_dtype, hi);
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

std::vector<double> solve_sparsemax(const std::vector<double> &s, double tau) {
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
    return a;
}

namespace {

double dot(const float *a, const float *b_cache, const Cache &cache, int page, int slot, int h) {
    double acc = 0;
    for (int d = 0; d < cache.head_dim; ++d) acc += double(a[d]) * double(b_cache[cache.offset(page, slot, h, d)]);
    return acc;
}

// Indices of the `k` largest scores, ties to the lower index, returned increasing.
std::vector<int> top_indices(const std::vector<double> &score, int k) {
    std::vector<int> idx(score.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return score[a] > score[b]; });
    idx.resize(std::min<size_t>(idx.size(), size_t(k)));
    std::sort(idx.begin(), idx.end());
    return idx;
}

double page_score(const Summaries &sum, const float *q, int b, int h, int j, RoutingMode mode, double scale) {
    const int D = sum.head_dim;
    size_t row = sum.at(b, h, j) * D;
    double acc = 0;
    for (int d = 0; d < D; ++d) {
        double qd = q[d];
        if (mode == RoutingMode::Mean) {
            acc += qd * sum.mean[row + d];
        } else {
            acc += std::max(qd * sum.lo[row + d], qd * sum.hi[row + d]);
        }
    }
    return scale * acc;
}

}  // namespace

HeadResult sparse_head(const Cache &cache, const Sequences &seqs, const Queries &q, const Summaries &sum,
                       const SparseOptions &opt, int b, int h, int g) {
    HeadResult r;
    const int S = cache.page_size, D = cache.head_dim, len = seqs.seq_lens[b];
    const int n_pages = (len + S - 1) / S;
    const double scale = opt.scale > 0 ? opt.scale : default_scale(D);
    const float *qh = q.head(b, h, g);

    // 1. routing
    std::vector<double> own(n_pages), route(n_pages);
    for (int j = 0; j < n_pages; ++j) {
        own[j] = page_score(sum, qh, b, h, j, opt.routing, scale);
        if (opt.group_routing == GroupRouting::PerHead) {
            route[j] = own[j];
        } else {
            route[j] = -std::numeric_limits<double>::infinity();
            for (int gg = 0; gg < q.group; ++gg)
                route[j] = std::max(route[j], page_score(sum, q.head(b, h, gg), b, h, j, opt.routing, scale));
        }
    }
    r.pages = top_indices(route, opt.top_pages);
    std::vector<char> page_selected(n_pages, 0);
    for (int j : r.pages) page_selected[j] = 1;

    // 2. candidates
    std::vector<int> pos;
    std::vector<double> score;
    for (int j : r.pages) {
        const int page = seqs.page_table[size_t(b) * seqs.max_pages + j];
        for (int t = 0; t < S && j * S + t < len; ++t) {
            pos.push_back(j * S + t);
            score.push_back(scale * dot(qh, cache.k.data(), cache, page, t, h));
        }
    }
    std::vector<int> keep = top_indices(score, opt.top_tokens);
    std::vector<char> is_candidate(pos.size(), 0);
    std::vector<double> cs;
    for (int i : keep) {
        is_candidate[i] = 1;
        r.candidates.push_back(pos[i]);
        cs.push_back(score[i]);
    }

    // 3. solver
    std::vector<double> alpha;
    double beta = 1.0;
    switch (opt.solver) {
    case Solver::Softmax: alpha = solve_softmax(cs); break;
    case Solver::EG:
        alpha = solve_eg(cs, opt.solver_steps, opt.solver_eta);
        beta = opt.solver_steps * opt.solver_eta;
        break;
    case Solver::FW: alpha = solve_fw(cs, opt.solver_steps, opt.solver_tau, &r.fw_gap); break;
    case Solver::Sparsemax: alpha = solve_sparsemax(cs, opt.solver_tau); break;
    }

    // 4. output and LSE
    r.out.assign(D, 0.0);
    for (size_t c = 0; c < cs.size(); ++c) {
        const int p = r.candidates[c];
        const int page = seqs.page_of(b, p, S);
        for (int d = 0; d < D; ++d) r.out[d] += alpha[c] * cache.v[cache.offset(page, p % S, h, d)];
    }
    const double m = *std::max_element(cs.begin(), cs.end());
    double z1 = 0, zb = 0, min_c = std::numeric_limits<double>::infinity();
    for (double s : cs) {
        z1 += std::exp(s - m);
        zb += std::exp(beta * (s - m));
        min_c = std::min(min_c, s);
    }
    r.lse = m + std::log(z1);
    r.max_score = m;

    // diagnostics
    double leak = 0, outside_max = -std::numeric_limits<double>::infinity(), vout = 0;
    for (size_t i = 0; i < pos.size(); ++i) {
        if (is_candidate[i]) continue;
        leak += std::exp(beta * (score[i] - m));
        outside_max = std::max(outside_max, score[i]);
        vout = std::max(vout, sum.value_norm[sum.at(b, h, pos[i] / S)]);
    }
    for (int j = 0; j < n_pages; ++j) {
        if (page_selected[j]) continue;
        const int n = std::min(S, len - j * S);
        leak += n * std::exp(beta * (own[j] - m));
        outside_max = std::max(outside_max, own[j]);
        vout = std::max(vout, sum.value_norm[sum.at(b, h, j)]);
    }
    double onorm = 0;
    for (double x : r.out) onorm += x * x;
    onorm = std::sqrt(onorm);
    r.leakage = leak / zb;
    r.outside_mass = r.leakage / (1.0 + r.leakage);
    if (!std::isfinite(r.leakage)) r.outside_mass = 1.0;
    r.value_out = vout;
    r.error_bound = r.outside_mass * (vout + onorm);
    r.support_gap = min_c - outside_max;
    return r;
}

DenseResult dense_head(const Cache &cache, const Sequences &seqs, const Queries &q, double scale, int b, int h, int g) {
    const int S = cache.page_size, D = cache.head_dim, len = seqs.seq_lens[b];
    if (scale <= 0) scale = default_scale(D);
    const float *qh = q.head(b, h, g);
    std::vector<double> s(len);
    for (int t = 0; t < len; ++t) s[t] = scale * dot(qh, cache.k.data(), cache, seqs.page_of(b, t, S), t % S, h);
    std::vector<double> a = solve_softmax(s);
    DenseResult r;
    r.out.assign(D, 0.0);
    for (int t = 0; t < len; ++t) {
        const int page = seqs.page_of(b, t, S);
        for (int d = 0; d < D; ++d) r.out[d] += a[t] * cache.v[cache.offset(page, t % S, h, d)];
    }
    double m = *std::max_element(s.begin(), s.end()), z = 0;
    for (double x : s) z += std::exp(x - m);
    r.lse = m + std::log(z);
    return r;
}

}  // namespace vashista::ref
