// Algorithm definitions of the Vashista sparse decode step (../shared/method.md).
//
// Each function builds Halide Funcs for one named quantity of the method. Nothing
// here chooses how they are computed: no tile sizes, no vectorize, no target checks.
// The same definitions serve the AOT generators, the JIT path of the tuner and tests.
//
// Dimension conventions (Halide lists the innermost dimension first):
//   q, out            (d, g, h, b)      query head h*G + g uses KV head h
//   k_cache, v_cache  HND (d, s, h, page) or NHD (d, h, s, page)
//   page_table        (j, b)            logical page j of sequence b -> physical page
//   seq_lens          (b)
//   route_pages       (j, b)            the order routing reads summaries in: the physical page
//                                       of sequence b's j-th logical page by physical page
//   route_rank        (i, b)            j of logical page i in that order (route_order in
//                                       method_types.h computes both from the block table)
//   Summaries and the sketch are kept per physical page p (what page_table maps a
//   sequence's logical pages to), so a page several sequences share has one of each:
//   summary           (d, c, p, h)      c = 0 mean, 1 per-channel min, 2 per-channel max
//                                       (int8 summaries: codes, the value sigma * code)
//   summary_scale     (x, p, h)         bf16: int8 summaries' sigma of channels
//                                       [16 x, 16 x + 16) (method_types.h), else not read
//   value_norm        (p, h)            upper bound on max ||v|| over the page's summarized tokens
//   key_absmax        (p, h)            max |x| over page p's stored min/max summary: bounds
//                                       every |k_d| of the page (the scores' rounding terms)
//   sketch            (s, byte, p, h)   uint8: the b-bit codes of the page's token s, D*b/8 bytes
//                                       (bits 8: one int8 per channel; bits 4: channel 2i in
//                                       the low nibble of byte i, 2i+1 in the high one)
//   sketch_scale      (s, grp, p, h)    bf16: sigma of each group of g channels, rounded up
#pragma once

#include "Halide.h"
#include "dtype_halide.h"
#include "method_types.h"

#include <string>
#include <vector>

namespace vashista {

using Halide::Expr;
using Halide::Func;
using Halide::RDom;
using Halide::Type;
using Halide::Var;

// How a top-k is computed (never what it selects): bits of the k-th key found per counting
// pass (32 / digit_bits passes, each counting the keys at or above 2^digit_bits - 1
// candidate thresholds; 1, 2 or 4: the GPU schedule's knob, 1 on the CPU), and whether
// bits are counted by shift-and-add steps (OpenCL) rather than popcount().
struct TopKOptions {
    int digit_bits = 1;
    bool popcount_by_shifts = false;
};

// What a decode kernel is compiled for: the GeneratorParams, whose defaults are these.
struct DecodeConfig {
    int head_dim = 128;
    int page_size = 16;
    int top_pages = 64;    // P
    int top_tokens = 128;  // K_c
    int group_size = 4;    // G = H_q / H_kv
    Type kv_type = Halide::BFloat(16);
    Type summary_type = Halide::BFloat(16);
    KvLayout layout = KvLayout::HND;
    Solver solver = Solver::Softmax;
    RoutingMode routing = RoutingMode::Bound;
    GroupRouting group_routing = GroupRouting::PerHead;
    int sink_pages = 0;                      // first pages of each sequence, always routed (count toward P)
    int local_pages = 0;                     // last pages of each sequence, always routed (count toward P)
    int solver_steps = kSolverStepsDefault;  // eg: N, fw: N
    float solver_eta = kSolverEtaDefault;    // eg step size
    float solver_tau = kSolverTauDefault;    // fw and sparsemax regularization
    int sketch_bits = kSketchBitsDefault;    // routing sketch: bits per code (4 or 8)
    int sketch_group = kSketchGroupDefault;  // routing sketch: channels per scale
    int super_pages = kSuperPagesDefault;    // hier_bound: pages per super-page (R)
    int super_expand = kSuperExpandDefault;  // hier_bound: super-pages expanded (Q)
    TopKOptions top_k;  // how the top-k counts (the Generator sets it from the target and schedule)
    // heads that route together: G for per_head, 1 for shared
    int routing_groups() const { return group_routing == GroupRouting::PerHead ? group_size : 1; }
};

// Inputs of a decode step as Funcs, with the extents the definitions need.
struct DecodeInputs {
    Func q, k_cache, v_cache, page_table, seq_lens, summary, value_norm, key_absmax;
    Func route_pages, route_rank;  // read in mean and bound routing
    Func summary_scale;            // read for int8 summaries only
    Func sketch, sketch_scale;     // read in sketch routing only
    Func super_summary;            // (d, c = lo/hi/bounds, slot, h) f32, hier_bound routing only
    Func super_table;              // (s, b) -> slot of sequence b's super-page s
    Expr max_supers;               // super_table extent along s
    Expr super_slots;              // super_summary extent along slot
    Expr scale;                    // score scale, > 0
    Expr max_pages;                // page_table extent along j
    Expr num_pages;                // physical pages in the cache
};

// In the library's sketch layout a token byte's rows are page_size bytes apart (dense);
// decode kernels require it, so a channel pair's two rows load as one vector. `sketch` is
// the decode's sketch input (a Generator Input or an ImageParam).
template <typename SketchInput>
void require_dense_sketch_rows(SketchInput &sketch, int page_size) {
    sketch.dim(1).set_stride(page_size);
}

// The stages of a linear-time top-k over keys (i, g, h, b) -> uint32, i in [0, n).
// Keys order like the scores they encode; key 0 marks an element that does not exist.
// The k-th largest key is found digit by digit, most significant first (32 / digit_bits
// counting passes, each counting at every value of its digit); ties at that key go to
// the lower index; the kept indices are compacted in index order. The compaction counts
// through bit masks of 32 indices (a word): an index's place is the count in the words
// before it plus a popcount inside its word, so every stage but the short scan over words
// is parallel over indices or words (GPU threads, CPU vector lanes).
struct TopKStages {
    static constexpr int kWordBits = 32;
    std::vector<Func> count_at_least;  // per pass: (v, g, h, b) -> #keys >= the candidate with digit v + 1
    std::vector<Func> threshold;       // per pass: threshold so far; the last is the k-th key
    Func mask;                         // (w) -> {bits of keys above the k-th key, bits of ties at it}
                                       //        for indices [32 w, 32 w + 32)
    Func words_before;                 // (w) -> {#above, #ties} in words before w, w in [0, words]
    Func kept;                         // (i) -> bool
    Func index;                        // (slot) -> kept index in increasing order, or -1
    Func count;                        // number kept = min(k, #existing)
};

// Every named stage of the fused decode step, so schedules can place each one.
struct DecodeStages {
    Var d{"d"}, i{"i"}, g{"g"}, h{"h"}, b{"b"}, c{"c"}, k{"k"}, s{"s"}, x{"x"};
    Func page_rows;        // (d, c, j, h, b): the summary rows of route_pages(j) (mean, bound)
    Func head_page_score;  // (j, g, h, b): q.m_p (mean), u_p / scale (bound) of the page at
                           // route_pages(j); (i=logical page, g, h, b): max over the page's
                           // tokens of a_t (sketch); (e=pool entry, g, h, b): u_p / scale
                           // of that entry's page (hier_bound)
    // Sketch routing: the query's int16 codes q_code (d, g, h, b), each group's step
    // q_step and weight q_group_weight (x=group, g, h, b) = ||q_grp||_1 + a multiple of the
    // step; then the scan of every token's sketch, per (s, page i, g, h, b):
    // sketch_inner (s, x=group, i, g, h, b) = the group's exact integer sum of q codes
    // times key codes; sketch_dot = sum over groups of sigma * step * inner; sketch_width =
    // sum over groups of sigma * weight; sketch_token = {a_t, ub_t}; page_leak (i, g, h, b)
    // = {max a_t, max ub_t, sum exp(beta (ub_t - max))} over the page's valid tokens. The
    // same quantities for the slots of the selected pages (slot_*), for candidate keys and
    // the inside leakage.
    Func q_code, q_step, q_group_weight;
    Func sketch_inner, sketch_dot, sketch_width, sketch_token, page_leak;
    Func slot_inner, slot_dot, slot_width, slot_token;
    // hier_bound routing: super_score (s, g, h, b) = sum_d max(q_d lo, q_d hi) over
    // super-page s's box, super_route_score the routed one (scaled; max over the group when
    // shared), super_route the top Q; super_rank (s, gr, h, b) s's position among them or -1;
    // super_absmax (s, h, b) the box's largest |x|. The pool of pages routing chooses from,
    // entry e: the sink pages, then R entries per expanded super-page (its pages but sink and
    // local ones), then the local pages; pool_page (e, gr, h, b) the logical page or -1, in
    // increasing order along e. head_page_score is then by pool entry.
    Func super_score, super_route_score, super_key, super_rank, super_absmax, pool_page;
    TopKStages super_route;
    Func route_score;  // (i, gr, h, b): per head, or max over the group (shared)
    Func route_key;
    TopKStages route;  // top-P pages
    Func token_score;  // (i=slot, g, h, b): s_t over the selected pages' tokens
    Func token_key;
    TopKStages select;               // top-K_c tokens
    Func cand_location;              // (c, g, h, b) -> {physical page, offset}
    Func cand_dot;                   // (c, g, h, b): q.k of the candidate, f64
    Func cand_score;                 // (c, g, h, b): s_c in f64, -inf where no candidate
    Func max_score;                  // m (f64)
    Func weight;                     // (c): softmax/eg weight exp(beta (s_c - m)), f64
    Func weight_sum;                 // Z_C (f64)
    std::vector<Func> solver_steps;  // fw iterates / sparsemax bisection steps
    Func alpha;                      // (c): solver weights, sum 1
    Func out;                        // (d, g, h, b) = sum_c alpha_c v_c
    Func lse;                        // (g, h, b) = m + log sum exp(s_c - m)
    Func q_l1;                       // (g, h, b): ||q||_1, for the scores' rounding terms
    Func inside_stats;               // (g, h, b) selected pages: {leak, max score, max ||v|| outside C, max ||v||}
    Func outside_stats;              // (g, h, b) unselected pages (hier_bound: pool pages, unexpanded super-pages):
                                     // {leak, max score, max ||v||, max |k_d| of the sequence}
    Func out_norm;                   // ||o|| (f64)
    // The certificate's named quantities, (g, h, b), inlined into diag unless scheduled:
    // the support gap estimate, the leakage bound L (f64), delta = L / (1 + L) (f64), the
    // error bound (infinite unless certified) and the Certificate status.
    Func support_gap, leakage, delta, error_bound, status;
    Func diag;        // (k, g, h, b), see DiagField
    Func candidates;  // (c, g, h, b): token position or -1
    Func pages;       // (i, g, h, b): logical page or -1
    Func routed;      // (r, gr, h, b): the logical page routed at rank r, or -1
    // One head's results in one record, so that one loop nest computes a head's step
    // and the five outputs are views of it. (x, g, h, b) -> {f32, int32}:
    //   f32: [0, D) out, D lse, D+1.. diag;  int32: [0, K_c) candidates, then pages.
    Func record;
    // The pipeline's outputs, views of `record`: out (d,g,h,b), lse (g,h,b),
    // diag (k,g,h,b), candidates (c,g,h,b), pages (i,g,h,b).
    Func result_out, result_lse, result_diag, result_candidates, result_pages;
    std::vector<Func> outputs() const { return {result_out, result_lse, result_diag, result_candidates, result_pages}; }
};
int record_length(const DecodeConfig &cfg);

// How a kernel holds 16-bit float values: as Halide's float16 / bfloat16 (CPU and CUDA
// targets), or as their bits in UInt(16) where the GPU language has no 16-bit floats
// (OpenCL without cl_khr_fp16, as on pocl's CPU device): Generators for such a target take
// and write those buffers as UInt(16). Conversions to a 16-bit float held as bits, and to
// bf16 on GPU targets (Halide 21's CUDA code generation aborts on an f32 -> bf16 cast), are
// integer operations with the same results (round to nearest even, subnormals, infinities).
struct Float16Repr {
    bool bits = false;          // held as UInt(16)
    bool integer_bf16 = false;  // f32 -> bf16 by integer operations
    static Float16Repr for_target(const Halide::Target &target);
    Type stored(const Type &t) const;             // the type a value of type t is held in
    Expr to_f32(Expr v, const Type &t) const;     // v, a t held as stored(t), in f32 (exact)
    Expr from_f32(Expr x, const Type &t) const;   // x rounded to nearest t, held as stored(t)
    Expr to_bits(Expr v, const Type &t) const;    // UInt(16) bits of a 16-bit t held as stored(t)
    Expr from_bits(Expr u, const Type &t) const;  // those bits held as stored(t)
    // A buffer input held as stored(t), read as f32 values when held as bits, else itself.
    Func f32_view(const Func &input, const Type &t) const;
};

// Dense decode attention over all tokens, split into chunks of `split_pages` pages whose
// partial softmax states are merged (flash-decoding); the split changes only f32
// reassociation.
struct DenseConfig {
    int head_dim = 128;
    int page_size = 16;
    int group_size = 4;
    int split_pages = 64;
    Type kv_type = Halide::BFloat(16);
    KvLayout layout = KvLayout::HND;
};

struct DenseStages {
    Var d{"d"}, t{"t"}, g{"g"}, h{"h"}, b{"b"}, ch{"ch"};
    Func score;        // (t, g, h, b), t a token of the sequence
    Func chunk_max;    // (g, ch, h, b)
    Func weight;       // (t, g, h, b) = exp(s_t - chunk max), 0 past seq_len
    Func chunk_sum;    // (g, ch, h, b)
    Func chunk_acc;    // (d, g, ch, h, b)
    Func chunk_state;  // (x, g, ch, h, b): [0, D) acc, D max, D+1 sum; one loop nest per chunk
    Func max_score, sum, merged_acc, out, lse;
};

struct DenseInputs {
    Func q, k_cache, v_cache, page_table, seq_lens;
    Expr scale, max_pages, num_pages;
};

// Summaries of touched pages. `touched` (0..1, n): {sequence, logical page}.
struct SummaryConfig {
    int head_dim = 128;
    int page_size = 16;
    Type kv_type = Halide::BFloat(16);
    Type summary_type = Halide::BFloat(16);
    KvLayout layout = KvLayout::HND;
};

struct SummaryInputs {
    Func k_cache, v_cache, page_table, seq_lens, touched;
    Expr max_pages, num_pages, batch;
    Float16Repr repr;  // how the 16-bit float outputs are held
};

struct SummaryStages {
    Var d{"d"}, c{"c"}, h{"h"}, n{"n"};
    Func key_sum, key_min, key_max, value_norm_sq;
    Func summary;     // (d, c, h, n) in the summary type; min rounded down, max up
    Func scale;       // (x, h, n) bf16: sigma per channel group (int8 summaries), else one 0
    Func value_norm;  // (h, n) f32, rounded up
    Func key_absmax;  // (h, n) f32: max |x| over the stored min and max
};

// The token sketch of touched pages (method.md, "Token-sketch bounds"): per token and
// group of g channels sigma = absmax / (2^(b-1) - 1) rounded up to bf16, codes
// round(k / sigma) in b bits. `touched` as for summaries.
struct SketchConfig {
    int head_dim = 128;
    int page_size = 16;
    int bits = kSketchBitsDefault;
    int group = kSketchGroupDefault;
    Type kv_type = Halide::BFloat(16);
    KvLayout layout = KvLayout::HND;
};

struct SketchStages {
    Var s{"s"}, x{"x"}, h{"h"}, n{"n"};
    Func key;     // (d, s, h, n) the touched page's keys in f32, 0 past seq_len
    Func absmax;  // (s, x, h, n) max |k| over group x
    Func scale;   // (s, x, h, n) bf16 sigma, rounded up
    Func code;    // (d, s, h, n) int32 code
    Func codes;   // (s, byte, h, n) uint8, the packed codes
};
SketchStages define_sketch(const SketchConfig &cfg, const SummaryInputs &in);

// Regions of the inputs at a representative shape, for autoschedulers' estimates.
struct ShapeEstimate {
    int head_dim = 128, page_size = 16, group = 4, kv_heads = 8, batch = 1, pages = 2048;
    KvLayout layout = KvLayout::HND;
};
Halide::Region q_region(const ShapeEstimate &e);  // also out
Halide::Region kv_cache_region(const ShapeEstimate &e);
Halide::Region page_table_region(const ShapeEstimate &e);
Halide::Region summary_region(const ShapeEstimate &e);
Halide::Region summary_scale_region(const ShapeEstimate &e, int groups);
Halide::Region value_norm_region(const ShapeEstimate &e);  // also key_absmax
Halide::Region sketch_region(const ShapeEstimate &e, int bits);
Halide::Region sketch_scale_region(const ShapeEstimate &e, int group);
Halide::Region per_head_region(const ShapeEstimate &e, int first_extent);  // lse (0), diag, candidates, pages

// Estimates of the inputs decode and dense share, on anything that holds them under
// these names: a Generator's Inputs or the JIT path's ImageParams.
template <typename Inputs>
void set_shared_input_estimates(Inputs &in, const ShapeEstimate &e) {
    in.q.set_estimates(q_region(e));
    in.k_cache.set_estimates(kv_cache_region(e));
    in.v_cache.set_estimates(kv_cache_region(e));
    in.page_table.set_estimates(page_table_region(e));
    in.seq_lens.set_estimates({{0, e.batch}});
    in.scale.set_estimate(0.088f);
}

// x in type t, rounded toward +inf (up) or -inf: exact for f32, one step from the
// nearest value for bf16 and f16 where the nearest lies on the wrong side; held as
// repr.stored(t).
Expr round_outward(Expr x, Type t, bool up, const Float16Repr &repr = {});

// Maps a float to a uint32 that orders like it; -0 and +0 map alike. Never 0 for
// a finite input, so 0 can mark "no element".
Expr order_key(Expr score);
Expr kv_element(const Func &cache, KvLayout layout, Expr d, Expr s, Expr h, Expr page);

TopKStages top_k(const Func &key, Expr n, int k, const TopKOptions &options, const std::string &name, Var i, Var g,
                 Var h, Var b);

DecodeStages define_decode(const DecodeConfig &cfg, const DecodeInputs &in);
// The certificate's arithmetic relies on IEEE semantics (infinities and NaN that reach
// the status, no algebra that assumes they cannot occur), so decode kernels are compiled
// with Halide's strict_float feature: 4% slower at T = 32K on the default shape, warm;
// OpenCL targets also get cl_khr_fp64 (the candidates' scores and the certificate are f64).
Halide::Target decode_target(const Halide::Target &target);
DenseStages define_dense(const DenseConfig &cfg, const DenseInputs &in);
SummaryStages define_summary(const SummaryConfig &cfg, const SummaryInputs &in);

// Names of Halide types used by GeneratorParams and the tuner.
Type halide_type(DType t);
DType dtype_of(const Type &t);             // throws for a type that is not one of the three
Type parse_type(const std::string &name);  // "float32", "float16", "bfloat16"
std::string type_name(const Type &t);

}  // namespace vashista
