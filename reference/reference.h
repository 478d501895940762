// The reference implementation of ../shared/method.md: plain C++, double accumulation,
// sorting where the method allows it. It is the oracle for kernels, runtime and
// benchmarks; it is written for clarity, not speed.
#pragma once

#include "method_types.h"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace vashista::ref {

using vashista::DType;                          // method_types.h: names, bytes
float round_to(DType t, float x);               // round to nearest even
float round_toward(DType t, float x, bool up);  // round toward +inf (up) or -inf
using vashista::from_bits16;                    // F16 / BF16 bit patterns (method_types.h)
using vashista::to_bits16;

// A paged KV cache whose elements are floats already representable in `dtype`.
struct Cache {
    int num_pages = 0, kv_heads = 0, page_size = 0, head_dim = 0;
    KvLayout layout = KvLayout::HND;
    DType dtype = DType::BF16;
    std::vector<float> k, v;
    Cache() = default;
    Cache(int num_pages, int kv_heads, int page_size, int head_dim, KvLayout layout, DType dtype);
    size_t offset(int page, int slot, int head, int d) const;
};

// Sequences: int32 page table [batch][max_pages] and seq_lens [batch].
struct Sequences {
    int batch = 0, max_pages = 0;
    std::vector<int32_t> page_table, seq_lens;
    int page_of(int b, int token, int page_size) const { return page_table[size_t(b) * max_pages + token / page_size]; }
};

// Queries [batch][kv_heads][group][head_dim] (= [B][H_q][D]).
struct Queries {
    int batch = 0, kv_heads = 0, group = 0, head_dim = 0;
    std::vector<float> q;
    const float *head(int b, int h, int g) const { return &q[((size_t(b) * kv_heads + h) * group + g) * head_dim]; }
};

// Per (sequence, KV head, logical page): the mean rounded to `dtype`, the box rounded
// outward (lo down, hi up), the largest |x| of the stored box, exact value norms. For int8
// summaries mean, lo and hi hold the values the codes stand for, sigma * code, and
// summary_scale each group's sigma (method_types.h).
struct Summaries {
    int batch = 0, kv_heads = 0, max_pages = 0, head_dim = 0;
    DType dtype = DType::BF16;
    std::vector<float> mean, lo, hi;   // [b][h][j][d]
    std::vector<float> key_absmax;     // [b][h][j]
    std::vector<float> summary_scale;  // [b][h][j][group], int8 summaries only
    std::vector<double> value_norm;    // [b][h][j]
    // The token sketch (sketch routing; bits 0 when head_dim does not fit the group):
    // per (b, h, j, s) the codes of the D channels and sigma of each group, rounded up to bf16.
    int page_size = 0, sketch_bits = 0, sketch_group = 0;
    std::vector<int8_t> sketch_code;  // [b][h][j][s][d]
    std::vector<float> sketch_scale;  // [b][h][j][s][group]
    size_t at(int b, int h, int j) const { return (size_t(b) * kv_heads + h) * max_pages + j; }
    size_t token_at(int b, int h, int j, int s) const { return at(b, h, j) * page_size + s; }
    // Super-pages of R pages (hier_bound routing; R = 0 when not added): per (b, h, s) the
    // box over the existing pages' boxes, lo = min of lo, hi = max of hi (f32, exact), and
    // the largest of their value norms.
    int super_pages = 0, max_supers = 0;
    std::vector<float> super_lo, super_hi;  // [b][h][s][d]
    std::vector<double> super_value_norm;   // [b][h][s]
    size_t super_at(int b, int h, int s) const { return (size_t(b) * kv_heads + h) * max_supers + s; }
};
// An int8 summary's sigma for a group whose largest |min| or |max| is absmax, and the
// codes of a min (rounded down), a max (rounded up) or a mean (nearest) under sigma: what
// the summarize kernel computes (sigma * code exact in f32).
float summary_scale_of(float absmax);
int summary_code_down(float x, float sigma);
int summary_code_up(float x, float sigma);
int summary_code_nearest(float x, float sigma);

Summaries summarize(const Cache &cache, const Sequences &seqs, DType summary_dtype,
                    int sketch_bits = kSketchBitsDefault, int sketch_group = kSketchGroupDefault);

// Adds super-pages of `super_pages` pages to summaries made by summarize() for `seqs`.
void add_super_pages(Summaries &sum, const Sequences &seqs, int super_pages);

// a_t and ub_t of token (j, s) of sequence b, KV head h, from the summaries' sketch, as
// the kernels compute them: the query quantized per group to int16 codes, each group's
// integer sum of query codes times key codes, then in f32 in the kernels' order the sum
// over groups of sigma * (step * sum), then the scale. ub_t >= scale * q.k_t exactly.
struct SketchScore {
    float a, ub;
};
SketchScore sketch_score(const Summaries &sum, const float *q, int b, int h, int j, int s, float scale);

struct SparseOptions {
    int top_pages = 64, top_tokens = 128;
    Solver solver = Solver::Softmax;
    int solver_steps = 6;
    double solver_eta = 0.2, solver_tau = 1.0;
    RoutingMode routing = RoutingMode::Bound;
    GroupRouting group_routing = GroupRouting::PerHead;
    int sink_pages = 0, local_pages = 0;
    int sketch_bits = kSketchBitsDefault, sketch_group = kSketchGroupDefault;  // must match the summaries'
    int super_pages = kSuperPagesDefault, super_expand = kSuperExpandDefault;  // hier_bound: R (as the
                                                                               // summaries'), Q
    double scale = 0;                                                          // 0: 1/sqrt(D)
};

// The softmax temperature of eg, N * eta, formed in f32 as the kernels form it; 1 otherwise.
double solver_temperature(const SparseOptions &opt);

struct HeadResult {
    std::vector<int> pages;       // selected logical pages, increasing
    std::vector<int> candidates;  // token positions, increasing
    std::vector<double> out;
    double lse = 0, support_gap = 0, leakage = 0, error_bound = 0, outside_mass = 0;
    double value_out = 0, fw_gap = 0, max_score = 0;
    Certificate certificate = Certificate::Certified;  // error_bound is +inf unless Certified
};
HeadResult sparse_head(const Cache &cache, const Sequences &seqs, const Queries &q, const Summaries &sum,
                       const SparseOptions &opt, int b, int h, int g);

struct DenseResult {
    std::vector<double> out;
    double lse = 0;
};
// Dense softmax attention at temperature beta (eg's fallback); lse = (1/beta) log sum exp(beta s).
DenseResult dense_head(const Cache &cache, const Sequences &seqs, const Queries &q, double scale, int b, int h, int g,
                       double beta = 1);
// Sparsemax over every token of the sequence (what a certified sparsemax head equals).
DenseResult dense_sparsemax_head(const Cache &cache, const Sequences &seqs, const Queries &q, double scale, double tau,
                                 int b, int h, int g);

// Solvers on a candidate score vector, exposed for their own checks.
std::vector<double> solve_softmax(const std::vector<double> &s);
std::vector<double> solve_eg(const std::vector<double> &s, int steps, double eta);
std::vector<double> solve_fw(const std::vector<double> &s, int steps, double tau, double *duality_gap);
std::vector<double> solve_sparsemax(const std::vector<double> &s, double tau, double *threshold = nullptr);

double default_scale(int head_dim);

}  // namespace vashista::ref
