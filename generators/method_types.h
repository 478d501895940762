// The method's named choices (../shared/method.md), shared by the algorithm
// definitions, the runtime and the reference. No Halide here.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace vashista {

enum class KvLayout { HND, NHD };
enum class Solver { Softmax, EG, FW, Sparsemax };
enum class RoutingMode { Mean, Bound, Sketch, HierBound };
enum class GroupRouting { PerHead, Shared };

// Token-sketch routing (method.md, "Token-sketch bounds"): the defaults of its bits and
// channels per scale group, and the bit widths the kernels decode (8: one signed byte
// per channel; 4: two channels per byte, the even channel in the low nibble).
constexpr int kSketchBitsDefault = 8;
constexpr int kSketchGroupDefault = 16;
// The solvers' parameter defaults (the generators, the workloads, the C ABI's default config).
constexpr int kSolverStepsDefault = 6;     // eg, fw: N
constexpr float kSolverEtaDefault = 0.2f;  // eg: step size
constexpr float kSolverTauDefault = 1.0f;  // fw, sparsemax: regularization
// The scan multiplies channel pairs and sums a group in int32: groups are even and at most this.
constexpr int kSketchGroupMax = 256;
inline bool valid_sketch_bits(int bits) { return bits == 4 || bits == 8; }
inline int sketch_max_code(int bits) { return (1 << (bits - 1)) - 1; }
// Bytes of one token's codes.
inline int sketch_code_bytes(int head_dim, int bits) { return head_dim * bits / 8; }
// Why (bits, group) cannot sketch head_dim, or "" when they can.
inline std::string sketch_config_error(int head_dim, int bits, int group) {
    if (!valid_sketch_bits(bits)) return "sketch_bits = " + std::to_string(bits) + " is not 4 or 8";
    if (group < 1 || head_dim % group != 0)
        return "sketch_group = " + std::to_string(group) + " does not divide head_dim = " + std::to_string(head_dim);
    if (group % 2 != 0 || group > kSketchGroupMax)
        return "sketch_group = " + std::to_string(group) + " is not an even number of channels up to " +
               std::to_string(kSketchGroupMax);
    if (head_dim * bits % 8 != 0) return "head_dim * sketch_bits is not a whole number of bytes";
    return "";
}

// Hierarchical bounds (method.md, "Reading fewer bytes"; routing = hier_bound): a super-page
// is R consecutive logical pages of a sequence (super-page s holds pages [s R, s R + R)) and
// keeps the box over its pages' boxes, lo = min of lo, hi = max of hi, in f32. A step scores
// every super-page by its box, expands the top Q (their pages are scored by their own boxes)
// and selects the top P pages among the expanded ones; sink and local pages are routed
// whatever their super-page. Ties as for pages: the lower super-page, the lower page. The
// certificate takes an unexpanded super-page as one term, n_sp exp(U_sp - m) over the tokens
// of its pages that are neither sink nor local pages, with its largest value norm, so a
// step's work is O(M/R + Q R) per head.
constexpr int kSuperPagesDefault = 16;  // R
constexpr int kSuperExpandDefault = 8;  // Q
// Super-page summary rows, in the order of their c dimension: the box (lo, hi), and a row of
// bounds the certificate takes for an unexpanded super-page's tokens, kept with the box so a
// step does not recompute them: element kSuperValueNorm the largest value norm of its pages,
// kSuperKeyAbsmax the box's largest |lo_d|, |hi_d| (the rest 0).
enum SuperChannel { kSuperMin = 0, kSuperMax = 1, kSuperBounds = 2, kSuperChannels = 3 };
enum SuperBound { kSuperValueNorm = 0, kSuperKeyAbsmax = 1 };
inline int super_pages_of(int pages, int super_pages) { return (pages + super_pages - 1) / super_pages; }
// Why (R, Q) cannot route, or "" when they can.
inline std::string hier_config_error(int super_pages, int super_expand) {
    if (super_pages < 1) return "super_pages = " + std::to_string(super_pages) + " is not at least 1";
    if (super_expand < 1) return "super_expand = " + std::to_string(super_expand) + " is not at least 1";
    return "";
}

// Summary channels, in the order of the c dimension.
enum SummaryChannel { kSummaryMean = 0, kSummaryMin = 1, kSummaryMax = 2, kSummaryChannels = 3 };

// The page summaries' layout, summary (d, channel, page, h) in algorithm.h: one row of
// head_dim values per channel of each physical page and KV head, so pages that several
// sequences share are summarized once and memory follows num_pages. The one statement of
// it outside the definitions, for the runtime's cache and the tuner's buffers.
struct SummaryLayout {
    int64_t head_dim, num_pages, kv_heads;
    std::array<int64_t, 4> extents() const { return {head_dim, kSummaryChannels, num_pages, kv_heads}; }
    // Offset, in elements, of channel 0 of summary `channel` of physical page `page`, KV head h
    // (the channels of a row are adjacent).
    int64_t row(int64_t page, int64_t channel, int64_t h) const {
        return ((h * num_pages + page) * kSummaryChannels + channel) * head_dim;
    }
};

// Per-head diagnostics, in the order of the `diag` output's first dimension.
enum DiagField {
    kDiagSupportGap = 0,   // Δ̂ = min candidate score - largest score outside the candidates
    kDiagLeakage = 1,      // L (a bound in bound mode, an estimate in mean mode)
    kDiagErrorBound = 2,   // delta * (V_out + ||o||), delta = L / (1 + L)
    kDiagOutsideMass = 3,  // delta
    kDiagOutsideValueNorm = 4,
    kDiagCandidates = 5,   // number of candidates kept
    kDiagFwGap = 6,        // Frank-Wolfe duality gap (fw solver), else 0
    kDiagMaxScore = 7,     // m = max candidate score
    kDiagCertificate = 8,  // a Certificate, as a float
    kDiagFields = 9
};

// Whether a head's error bound is a theorem about its computed output (method.md,
// "Which solvers the bound covers"). Anything but Certified reports an infinite bound.
enum class Certificate {
    Certified = 0,       // ||o_kernel - o_dense_exact|| <= error bound
    MeanRouting = 1,     // mean-key page scores are estimates, not upper bounds
    Solver = 2,          // fw; sparsemax with an outside score above its threshold
    StaleSummaries = 3,  // the block table maps a page to other keys than were summarized
    Overflow = 4,        // scores or values beyond what f32 represents: no finite bound
};

// The floating-point facts the certificate's rounding terms are built from. Kernels
// and the reference evaluate the same formulas (algorithm.cpp states the argument).
namespace fp {
constexpr double kUnit32 = 1.0 / (1 << 24);           // unit roundoff of f32
constexpr double kUnit64 = 1.0 / 9007199254740992.0;  // 2^-53
// gamma_n = n u / (1 - n u) bounds the relative error of an n-term sum or dot product in
// any order of evaluation (products and fused multiply-adds included).
constexpr double gamma32(double n) { return n * kUnit32 / (1 - n * kUnit32); }
constexpr double gamma64(double n) { return n * kUnit64 / (1 - n * kUnit64); }
// Relative error of the f32 exp the kernels call, on arguments in [-87, 88]: 2^-20 is
// used; test_kernels measures it against long double and requires a quarter of that
// (1.4e-7 measured on an AVX-512 host).
constexpr double kExp32 = 1.0 / (1 << 20);
// libm's f64 exp is within 1 ulp; 2^-50 is used.
constexpr double kExp64 = 8 * kUnit64;
// The factor a page's f32 max value norm sqrt(fl(sum of D squares)) is multiplied by so
// that it bounds the true norm: the sum is within gamma_D, the square root and the
// product add 2u; (D + 8) u covers sqrt(1 / (1 - gamma_D)) (1 + 2u) with room.
constexpr double value_norm_margin(int head_dim) { return 1 + (head_dim + 8) * kUnit32; }
// Bound on |fl(scale * q.k) - scale * q.k| per unit of scale * ||q||_1 * max |k_d| for an
// f32 dot product of D terms, then the scale: gamma_{D+1}, and 1% for the rounding of
// the bound itself.
constexpr double score_error32(int head_dim) { return 1.01 * gamma32(head_dim + 1); }
constexpr double score_error64(int head_dim) { return 1.01 * gamma64(head_dim + 1); }
// A sketch code is round(fl(k / sigma)) with |k / sigma| <= max code + 1/2: the f32
// quotient is within 2^-17 of the exact one, so |k - sigma * code| <= sigma (1/2 + 2^-17).
constexpr double kSketchResidual = 0.5 + 1.0 / (1 << 16);
// The query side of the sketch scan: per group, step s = max |q_d| / kSketchQueryMax and
// n_d = round(fl(q_d / s)) in int16; |fl(q_d / s)| <= kSketchQueryMax (1 + 4u), so
// |q_d - s n_d| <= s (1/2 + kSketchQueryMax * 4u) <= s * kSketchQueryResidual. A group's
// sum of n_d * code_d is then exact in int32 (|sum| <= group * 32000 * 127 < 2^31 for
// groups up to kSketchGroupMax).
// With q^_d = s n_d: q.k - sum_grp sigma s I_grp = q.(k - k^) + (q - q^).k^, the first at
// most sum_grp sigma kSketchResidual ||q_grp||_1, the second at most sum_grp sigma
// kSketchQueryResidual * group * max code * s: both are kSketchResidual * sum_grp sigma *
// w_grp with w_grp = ||q_grp||_1 + sketch_query_weight * s.
constexpr int kSketchQueryMax = 32000;
constexpr double kSketchQueryResidual = 0.5 + kSketchQueryMax * 4.0 / (1 << 24);
inline double sketch_query_weight(int group, int bits) {
    return group * sketch_max_code(bits) * kSketchQueryResidual / kSketchResidual;
}
// ub_t - a_t per unit of scale * W_t, W_t = sum_groups sigma_grp * w_grp (method.md): the
// two residuals above, plus the f32 evaluation of a_t (each term sigma * (s * fl(I_grp)) is
// at most max code * sigma * w_grp, since s |n_d| <= |q_d| + s/2 and w_grp covers g s / 2;
// at most D / g + 4 roundings), plus the f32 evaluation of W_t itself (the group's sum of
// |q_d|, the weight's product and sum, the sum over groups, the products: at most
// D + D / g + 6 roundings), with 1% for the rounding of this factor and its product.
constexpr double sketch_width_factor(int head_dim, int group, int bits) {
    return 1.01 * (kSketchResidual + (1 << (bits - 1)) * gamma32(head_dim + head_dim / group + 6)) *
           (1 + 2 * gamma32(head_dim + head_dim / group + 6));
}
// Bound on the ratio of a page's exact sum of exp(beta (ub_t - M_p)) to its f32 value
// (sketch routing): S terms, each an f32 exp (2^-20) of an argument with two f32 roundings
// (2^-15 for |argument| <= 104; a smaller argument's term is below 2^-149 of the page's
// largest, which the 2^-15 covers), summed in f32; with room for one rescaling per term.
inline double page_sum_inflation(int page_size) {
    return std::pow(1 + 2 * kExp32 + 1.0 / (1 << 15) + 4 * kUnit32, page_size + 1);
}
// exp of an f32 argument below about -87 is subnormal or 0 (relative error unbounded):
// each leakage term is bounded by its computed value times (1 + eps) plus this floor.
constexpr double kExpFloor =
    1.0 / (double(1 << 30) * double(1 << 30) * double(1 << 30) * double(1 << 30) * double(1 << 6));  // 2^-126
}  // namespace fp

// eg after N steps of size eta from uniform is softmax(N * eta * s): its temperature,
// formed in f32 as every kernel, the runtime's fallback and the reference form it.
inline float eg_temperature(int steps, float eta) { return float(steps) * eta; }

// The names the generators' parameters, workloads and JSON use; parse_* throws on any
// other name, naming it.
inline const char *to_string(KvLayout v) { return v == KvLayout::HND ? "HND" : "NHD"; }
inline const char *to_string(Solver v) {
    switch (v) {
        case Solver::Softmax:
            return "softmax";
        case Solver::EG:
            return "eg";
        case Solver::FW:
            return "fw";
        case Solver::Sparsemax:
            return "sparsemax";
    }
    return "?";
}
inline const char *to_string(RoutingMode v) {
    return v == RoutingMode::Mean     ? "mean"
           : v == RoutingMode::Bound  ? "bound"
           : v == RoutingMode::Sketch ? "sketch"
                                      : "hier_bound";
}
inline const char *to_string(GroupRouting v) { return v == GroupRouting::PerHead ? "per_head" : "shared"; }

// Element types of keys, values and summaries, numbered as the C ABI's vashista_dtype; the
// one table of their names (generator parameters, workloads, JSON, the reference). I8 is a
// summary type only: compact summaries (below).
enum class DType { F32 = 0, F16 = 1, BF16 = 2, I8 = 3 };
inline const char *to_string(DType v) {
    return v == DType::F32 ? "float32" : v == DType::F16 ? "float16" : v == DType::BF16 ? "bfloat16" : "int8";
}
inline const char *short_name(DType v) {
    return v == DType::F32 ? "f32" : v == DType::F16 ? "f16" : v == DType::BF16 ? "bf16" : "i8";
}
inline int dtype_bytes(DType v) { return v == DType::F32 ? 4 : v == DType::I8 ? 1 : 2; }
inline bool is_float_dtype(DType v) { return v == DType::F32 || v == DType::F16 || v == DType::BF16; }

// Compact page summaries (summary dtype int8; method.md, "Reading fewer bytes"): per page, KV
// head and group of kSummaryScaleGroup channels a bf16 scale sigma, about absmax / 126 rounded up
// (absmax over the group's min and max; 127 sigma > absmax, so every code lies in
// [-127, 127]), and per channel the int8 codes
// of the mean (nearest), the min (rounded down) and the max (rounded up). A stored value is
// sigma * code, exact in f32 (an 8-bit significand times an integer of at most 8 bits), so the
// decoded box contains every key of the page and the bound arithmetic is unchanged. Half the
// bytes of bf16 min/max rows, plus 2 bytes per group.
constexpr int kSummaryScaleGroup = 16;
constexpr int kSummaryMaxCode = 127;
// sigma = absmax * fl(1/126) rounded up to bf16 (a product, as compilers turn a division by a
// constant into): 127 sigma > absmax despite the f32 roundings of the factor and the product.
constexpr float kSummaryScaleFactor = 1.0f / 126.0f;
constexpr float kSummaryScaleMin = 1.0f / (float(1 << 30) * float(1 << 30) * float(1 << 30) * float(1 << 30) *
                                           float(1 << 6));  // 2^-126: sigma * code stays normal, so exact
// Scale groups of a row: head_dim / kSummaryScaleGroup for int8 summaries, else 1 (a
// placeholder the kernels do not read).
inline int summary_scale_groups(int head_dim, DType summary) {
    return summary == DType::I8 ? head_dim / kSummaryScaleGroup : 1;
}
// Routing (mean and bound) reads each routed sequence's page summaries, which are kept per
// physical page. It visits the pages in the order of their physical pages, so the rows are
// read at increasing addresses however an allocator scattered the pages (scattered, the
// reads wait on memory: the 128K step took 11-12 ms against 6-7 ms in order). The decode
// kernels take that order per sequence: route_pages[j] is the physical page of the j-th of
// the sequence's first n_pages logical pages in increasing physical order (ties in logical
// order), route_rank[i] the position j of logical page i; positions n_pages..width-1 keep
// their own entries (route_pages[j] = table[j], route_rank[j] = j). `table` is the
// sequence's row of the block table, valid (in [0, 2^31)) for its first n_pages entries;
// scratch holds 2 * width uint32. A radix sort, linear in n_pages.
inline void route_order(const int32_t *table, int n_pages, int width, int32_t *route_pages, int32_t *route_rank,
                        uint32_t *scratch) {
    uint32_t *idx = scratch, *tmp = scratch + width;
    uint32_t largest = 0;
    for (int i = 0; i < n_pages; ++i) {
        idx[i] = uint32_t(i);
        largest = table[i] > int32_t(largest) ? uint32_t(table[i]) : largest;
    }
    // LSD passes over 8-bit digits while any key has bits left: stable, so ties stay in
    // logical order.
    for (int shift = 0; shift < 32 && (largest >> shift) != 0; shift += 8) {
        uint32_t count[257] = {};
        for (int i = 0; i < n_pages; ++i) ++count[((uint32_t(table[idx[i]]) >> shift) & 255u) + 1];
        for (int k = 0; k < 256; ++k) count[k + 1] += count[k];
        for (int i = 0; i < n_pages; ++i) tmp[count[(uint32_t(table[idx[i]]) >> shift) & 255u]++] = idx[i];
        uint32_t *t = idx;
        idx = tmp;
        tmp = t;
    }
    for (int j = 0; j < n_pages; ++j) {
        route_pages[j] = table[idx[j]];
        route_rank[idx[j]] = j;
    }
    for (int j = n_pages; j < width; ++j) {
        route_pages[j] = table[j];
        route_rank[j] = j;
    }
}

// Why `summary` cannot summarize keys of `kv` with head_dim channels, or "" when it can.
inline std::string summary_config_error(int head_dim, DType kv, DType summary) {
    if (!is_float_dtype(kv)) return std::string("kv dtype ") + to_string(kv) + " is a summary dtype only";
    if (summary == DType::I8 && head_dim % kSummaryScaleGroup != 0)
        return "int8 summaries need head_dim a multiple of " + std::to_string(kSummaryScaleGroup) +
               " (head_dim = " + std::to_string(head_dim) + ")";
    return "";
}

// IEEE binary16 and bfloat16 conversions in plain integer arithmetic (no compiler's half
// type: g++ 12 on AArch64 and clang 14 on x86-64 have none in C++), round to nearest even.
inline float f16_bits_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    uint32_t u;
    if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in f32
        float f = float(mantissa) * (1.0f / 16777216.0f);
        std::memcpy(&u, &f, 4);
        u |= sign;
    } else if (exponent == 31) {
        u = sign | 0x7f800000u | (mantissa << 13);
    } else {
        u = sign | ((exponent + 112) << 23) | (mantissa << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline uint16_t float_to_f16_bits(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // quiet NaN
    if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);                        // 65520 and above round to infinity
    if (a < 0x38800000u) {  // below 2^-14: a subnormal (or zero) of half, steps of 2^-24
        float f;
        std::memcpy(&f, &a, 4);
        return uint16_t(sign | uint16_t(std::nearbyint(f * 16777216.0f)));
    }
    return uint16_t(sign | ((a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13));
}

// The F16 or BF16 bit pattern nearest to x (ties to even; NaN stays NaN).
inline uint16_t to_bits16(DType t, float x) {
    if (t == DType::F16) return float_to_f16_bits(x);
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

inline float from_bits16(DType t, uint16_t bits) {
    if (t == DType::F16) return f16_bits_to_float(bits);
    uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

namespace detail {
template <typename E, size_t N>
E parse_name(const std::string &s, const E (&values)[N], const char *what) {
    std::string all;
    for (E v : values) {
        if (s == to_string(v)) return v;
        all += std::string(all.empty() ? "" : ", ") + to_string(v);
    }
    throw std::invalid_argument(std::string(what) + " '" + s + "' is not one of " + all);
}
}  // namespace detail

inline KvLayout parse_layout(const std::string &s) {
    static const KvLayout v[] = {KvLayout::HND, KvLayout::NHD};
    return detail::parse_name(s, v, "layout");
}
inline Solver parse_solver(const std::string &s) {
    static const Solver v[] = {Solver::Softmax, Solver::EG, Solver::FW, Solver::Sparsemax};
    return detail::parse_name(s, v, "solver");
}
inline RoutingMode parse_routing(const std::string &s) {
    static const RoutingMode v[] = {RoutingMode::Mean, RoutingMode::Bound, RoutingMode::Sketch, RoutingMode::HierBound};
    return detail::parse_name(s, v, "routing");
}
inline GroupRouting parse_group_routing(const std::string &s) {
    static const GroupRouting v[] = {GroupRouting::PerHead, GroupRouting::Shared};
    return detail::parse_name(s, v, "group_routing");
}
inline DType parse_dtype(const std::string &s) {
    static const DType v[] = {DType::F32, DType::F16, DType::BF16, DType::I8};
    return detail::parse_name(s, v, "dtype");
}

}  // namespace vashista
