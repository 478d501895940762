#include "algorithm.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace vashista {

using Halide::cast;
using Halide::clamp;
using Halide::select;
using Halide::Tuple;

namespace {

using Halide::Float;

Expr u32(uint64_t v) { return Halide::Internal::make_const(Halide::UInt(32), v); }
Expr u16(uint64_t v) { return Halide::Internal::make_const(Halide::UInt(16), v); }
Expr f64(double v) { return Expr(v); }
Expr neg_inf(Type t = Float(32)) {
    return t == Float(64) ? Expr(-std::numeric_limits<double>::infinity())
                          : Expr(-std::numeric_limits<float>::infinity());
}
// bf16 widens by a 16-bit shift of its bits (exact): the same instructions a CPU target
// emits, and a form CUDA's code generation accepts (its bf16 -> f32 cast aborts LLVM).
Expr as_f32(Expr e) {
    if (e.type() == Halide::BFloat(16))
        return Halide::reinterpret(Float(32), cast<uint32_t>(Halide::reinterpret(Halide::UInt(16), e)) << 16);
    return cast<float>(e);
}
// The softmax temperature of the solver: N * eta for eg, else 1.
float solver_temperature(const DecodeConfig &cfg) {
    return cfg.solver == Solver::EG ? eg_temperature(cfg.solver_steps, cfg.solver_eta) : 1.0f;
}

}  // namespace

namespace {
bool is_float16(const Type &t) { return t.is_float() && t.bits() == 16; }
// The u16 bits under an emulated conversion's final reinterpret to a 16-bit float.
Expr bits_under(Expr e) {
    const auto *r = e.as<Halide::Internal::Reinterpret>();
    return r ? r->value : Halide::reinterpret(Halide::UInt(16), e);
}
}  // namespace

Float16Repr Float16Repr::for_target(const Halide::Target &target) {
    const bool bits = target.has_feature(Halide::Target::OpenCL) && !target.has_feature(Halide::Target::CLHalf);
    return {bits, bits || target.has_gpu_feature()};
}

Type Float16Repr::stored(const Type &t) const { return bits && is_float16(t) ? Halide::UInt(16) : t; }

Expr Float16Repr::to_f32(Expr v, const Type &t) const {
    if (!bits || !is_float16(t)) return as_f32(v);
    return t == Halide::BFloat(16) ? Halide::Internal::bfloat16_to_float32(v) : Halide::Internal::float16_to_float32(v);
}

Expr Float16Repr::from_f32(Expr x, const Type &t) const {
    const bool bf16 = t == Halide::BFloat(16);
    if (bf16 && integer_bf16) return from_bits(bits_under(Halide::Internal::float32_to_bfloat16(x)), t);
    if (bits && is_float16(t)) return bits_under(Halide::Internal::float32_to_float16(x));
    return cast(t, x);
}

Expr Float16Repr::to_bits(Expr v, const Type &) const { return bits ? v : Halide::reinterpret(Halide::UInt(16), v); }

Expr Float16Repr::from_bits(Expr u, const Type &t) const { return bits ? u : Halide::reinterpret(t, u); }

Func Float16Repr::f32_view(const Func &input, const Type &t) const {
    if (!bits || !is_float16(t)) return input;
    Func view(input.name() + "_f32");
    std::vector<Var> args = input.args();
    std::vector<Expr> at(args.begin(), args.end());
    view(args) = to_f32(input(at), t);
    return view;
}

Expr round_outward(Expr x, Type t, bool up, const Float16Repr &repr) {
    if (t == Float(32)) return x;
    Expr nearest = repr.from_f32(x, t);
    Expr bits = repr.to_bits(nearest, t);
    Expr wrong_side = up ? repr.to_f32(nearest, t) < x : repr.to_f32(nearest, t) > x;
    Expr negative = (bits & u16(0x8000)) != u16(0);
    Expr zero = (bits & u16(0x7fff)) == u16(0);
    // One step up: toward +inf; down: toward -inf. From either zero, the smallest
    // subnormal of the needed sign.
    Expr step = up ? select(zero, u16(0x0001), negative, bits - u16(1), bits + u16(1))
                   : select(zero, u16(0x8001), negative, bits + u16(1), bits - u16(1));
    return repr.from_bits(select(wrong_side, step, bits), t);
}

Expr order_key(Expr score) {
    // +0 for -0, so equal scores give equal keys.
    Expr canonical = select(score == 0.0f, 0.0f, score);
    Expr bits = Halide::reinterpret(Halide::UInt(32), canonical);
    return select((bits >> 31) != u32(0), ~bits, bits | u32(0x80000000u));
}

Expr kv_element(const Func &cache, KvLayout layout, Expr d, Expr s, Expr h, Expr page) {
    return layout == KvLayout::HND ? cache(d, s, h, page) : cache(d, h, s, page);
}

namespace {

// The set bits of a uint32. Halide 21's OpenCL code calls a halide_popcount it never
// defines, so OpenCL targets count by shift-and-add steps instead of popcount().
Expr bit_count(Expr x, bool by_shifts) {
    if (!by_shifts) return cast<int>(popcount(x));
    x = x - ((x >> 1) & u32(0x55555555u));
    x = (x & u32(0x33333333u)) + ((x >> 2) & u32(0x33333333u));
    x = (x + (x >> 4)) & u32(0x0f0f0f0fu);
    return cast<int>((x * u32(0x01010101u)) >> 24);
}

}  // namespace

TopKStages top_k(const Func &key, Expr n, int k, const TopKOptions &options, const std::string &name, Var i, Var g,
                 Var h, Var b) {
    const int digit_bits = options.digit_bits;
    if (digit_bits != 1 && digit_bits != 2 && digit_bits != 4)
        throw std::invalid_argument("top-k digit_bits is " + std::to_string(digit_bits) + ", not 1, 2 or 4");
    TopKStages st;
    // Largest threshold tau with #(key >= tau) >= k, one digit per pass, most significant
    // first: the pass counts the keys at or above tau with each nonzero value of its digit,
    // and the digit becomes the largest value whose count reaches k (counts fall as it grows).
    const int values = (1 << digit_bits) - 1;
    Var v = i;
    Expr tau = u32(0);
    for (int shift = 32 - digit_bits; shift >= 0; shift -= digit_bits) {
        Func count(name + "_count_at_least_" + std::to_string(shift));
        Func threshold(name + "_threshold_" + std::to_string(shift));
        Expr candidate = tau | (cast<uint32_t>(v + 1) << shift);
        RDom r(0, n, name + "_r" + std::to_string(shift));
        count(v, g, h, b) = 0;
        count(v, g, h, b) += select(key(r, g, h, b) >= candidate, 1, 0);
        Expr digit = u32(0);
        for (int value = 0; value < values; ++value) digit += select(count(value, g, h, b) >= k, u32(1), u32(0));
        threshold(g, h, b) = tau | (digit << shift);
        tau = threshold(g, h, b);
        st.count_at_least.push_back(count);
        st.threshold.push_back(threshold);
    }

    auto is_tie = [&](Expr key_value) { return key_value == tau && tau > u32(0); };

    // The word masks: bit j of word w for index 32 w + j (indices past n are in no mask).
    const int bits = TopKStages::kWordBits;
    Expr words = (n + bits - 1) / bits;
    Var w = i;
    st.mask = Func(name + "_mask");
    st.mask(w, g, h, b) = Tuple(u32(0), u32(0));
    RDom rb(0, bits, name + "_rb");
    {
        Expr at = w * bits + rb;
        Expr key_at = key(min(at, n - 1), g, h, b);
        Expr bit = select(at < n, u32(1) << cast<uint32_t>(rb), u32(0));
        st.mask(w, g, h, b) = Tuple(st.mask(w, g, h, b)[0] | select(key_at > tau, bit, u32(0)),
                                    st.mask(w, g, h, b)[1] | select(is_tie(key_at), bit, u32(0)));
    }
    // The counts in the words before w: the one serial scan, over n / 32 words.
    st.words_before = Func(name + "_words_before");
    st.words_before(w, g, h, b) = Tuple(0, 0);
    RDom rw(1, words, name + "_rw");
    st.words_before(rw, g, h, b) =
        Tuple(st.words_before(rw - 1, g, h, b)[0] + bit_count(st.mask(rw - 1, g, h, b)[0], options.popcount_by_shifts),
              st.words_before(rw - 1, g, h, b)[1] + bit_count(st.mask(rw - 1, g, h, b)[1], options.popcount_by_shifts));
    // #above and #ties at indices before i (part 0 and 1).
    auto before = [&](Expr at, int part) {
        Expr word = at / bits;
        Expr lower = (u32(1) << cast<uint32_t>(at % bits)) - u32(1);
        return st.words_before(word, g, h, b)[part] +
               bit_count(st.mask(word, g, h, b)[part] & lower, options.popcount_by_shifts);
    };
    // ties at tau still to keep after the keys above it (at least one when tau > 0), lowest
    // index first
    Expr above = st.words_before(words, g, h, b)[0];
    Expr need = k - above;

    st.kept = Func(name + "_kept");
    {
        Expr key_i = key(i, g, h, b);
        st.kept(i, g, h, b) = key_i > tau || (is_tie(key_i) && before(i, 1) < need);
    }

    st.index = Func(name + "_index");
    st.index(i, g, h, b) = -1;
    RDom rk(0, n, name + "_rk");
    rk.where(st.kept(rk, g, h, b));
    Expr kept_before = before(rk, 0) + min(before(rk, 1), need);
    st.index(clamp(kept_before, 0, k - 1), g, h, b) = cast<int>(rk);

    st.count = Func(name + "_count");
    st.count(g, h, b) = above + min(st.words_before(words, g, h, b)[1], need);
    return st;
}

namespace {

// The fused decode step (method.md), one method per part and in its order: the sketch scan
// (sketch routing), routing, candidates, the solver, the output, the certificate, and the
// record the outputs view. Each defines its stages in `st`; what a later part needs from an
// earlier one is a member.
class DecodeDefinition {
public:
    DecodeDefinition(const DecodeConfig &config, const DecodeInputs &inputs);
    DecodeStages define() {
        sketch_scan();
        route();
        candidates();
        solve();
        output();
        certificate();
        results();
        return st;
    }

private:
    struct SketchScores {
        Func inner, dot, width, token;
    };
    SketchScores sketch_scores(const std::string &name, std::vector<Var> token_vars, Expr s_at, Expr page_at);
    void sketch_scan();
    void route();
    void route_hier();
    void candidates();
    void solve();
    void output();
    void certificate();
    void results();

    // Slot i of the selected pages is page rank i / S, offset i % S: its logical page,
    // whether it holds a token, and its score (s_t, or a_t in sketch routing).
    Expr slot_page(Expr slot) const { return st.routed(slot / S, gr, h, b); }
    Expr slot_valid(Expr slot) const {
        Expr page = slot_page(slot);
        return page >= 0 && page * S + slot % S < seq_len;
    }
    Expr score_at(Expr slot) const {
        return sketch ? st.slot_token(slot % S, slot / S, g, h, b)[0] : scale * st.token_score(slot, g, h, b);
    }
    // Logical page i's score, scaled (head_page_score is by position in physical order,
    // except in sketch routing).
    Expr scaled_page_score(Expr logical, Expr head) const {
        if (sketch) return st.head_page_score(logical, head, h, b);
        Expr rank = clamp(in.route_rank(clamp(logical, 0, in.max_pages - 1), b), 0, in.max_pages - 1);
        return scale * st.head_page_score(rank, head, h, b);
    }
    Expr physical_page(Expr logical) const {
        return clamp(in.page_table(clamp(logical, 0, in.max_pages - 1), b), 0, in.num_pages - 1);
    }
    // Summary channel c of physical page `page` at channel d as stored, int8 codes decoded
    // (sigma * code, in f32).
    Expr summary_value(Expr d, Expr c, Expr page) const {
        if (cfg.summary_type != Halide::Int(8)) return in.summary(d, c, page, h);
        return as_f32(in.summary_scale(d / kSummaryScaleGroup, page, h)) * as_f32(in.summary(d, c, page, h));
    }
    // Channel d's term of a box's upper bound on q.k: max(q_d lo_d, q_d hi_d).
    Expr box_term(Expr d, Expr lo, Expr hi) const { return Halide::max(in.q(d, g, h, b) * lo, in.q(d, g, h, b) * hi); }
    // route (i, g, h, b) = the scaled score routing uses: head g's own (per head), or the
    // largest of the group's (shared); score(i, head) gives one head's.
    void routed_score(Func route, const std::function<Expr(Expr)> &score, const std::string &rdom_name) const {
        if (per_head) {
            route(i, g, h, b) = score(g);
        } else {
            RDom rg(0, G, rdom_name);
            route(i, g, h, b) = neg_inf();
            route(i, g, h, b) = Halide::max(route(i, g, h, b), score(rg));
        }
    }

    const DecodeConfig &cfg;
    const DecodeInputs &in;
    DecodeStages st;
    Var d = st.d, i = st.i, g = st.g, h = st.h, b = st.b, c = st.c, k = st.k;
    const int D, S, P, KC, G;
    const bool per_head, sketch, hier;
    // hier_bound: R pages per super-page, Q expanded, sink and local pages, the pool's size.
    const int R, Q, SK, LP, pool;
    // softmax and eg: the weights are a softmax (eg's at temperature N * eta).
    const bool softmax_family;
    const double u = fp::kUnit32;
    // The softmax temperature: eg's N * eta, else 1 (the leakage terms use it).
    const float beta;
    const Expr beta64;
    const Expr seq_len, n_pages, n_supers, scale;  // n_supers: hier_bound's super-pages of the sequence
    RDom rd, rc;                                   // a head's channels; the candidates
    Expr gr;                                       // the routing group of head g: g (per head) or 0 (shared)
    // From the solver: the largest candidate score (f64, and rounded to f32), fw's duality
    // gap, sparsemax's threshold.
    Expr m, m32, fw_gap, sparsemax_theta;
};

DecodeDefinition::DecodeDefinition(const DecodeConfig &config, const DecodeInputs &inputs)
    : cfg(config),
      in(inputs),
      D(cfg.head_dim),
      S(cfg.page_size),
      P(cfg.top_pages),
      KC(cfg.top_tokens),
      G(cfg.group_size),
      per_head(cfg.group_routing == GroupRouting::PerHead),
      sketch(cfg.routing == RoutingMode::Sketch),
      hier(cfg.routing == RoutingMode::HierBound),
      R(cfg.super_pages),
      Q(cfg.super_expand),
      SK(cfg.sink_pages),
      LP(cfg.local_pages),
      pool(cfg.sink_pages + cfg.super_pages * cfg.super_expand + cfg.local_pages),
      softmax_family(cfg.solver == Solver::Softmax || cfg.solver == Solver::EG),
      beta(solver_temperature(cfg)),
      beta64(f64(beta)),
      seq_len(in.seq_lens(b)),
      n_pages((seq_len + (S - 1)) / S),
      n_supers(hier ? (n_pages + (R - 1)) / R : Expr(0)),
      scale(in.scale),
      rd(0, D, "rd"),
      rc(0, KC, "rc") {
    if (sketch) {
        const std::string err = sketch_config_error(D, cfg.sketch_bits, cfg.sketch_group);
        if (!err.empty()) throw std::invalid_argument(err);
    }
    if (hier) {
        const std::string err = hier_config_error(R, Q);
        if (!err.empty()) throw std::invalid_argument(err);
    }
}

// Sketch routing: the query is quantized per group of g channels to int16 codes n_d
// with step s_grp, so a group's sum I_grp = sum_{d in grp} n_d code_d is an exact
// integer dot product, and
//   a_t  = scale * sum_grp sigma_grp * (s_grp * I_grp),
//   ub_t = a_t + scale * W_t * sketch_width_factor,  W_t = sum_grp sigma_grp w_grp,
// with w_grp = ||q_grp||_1 + sketch_query_weight * s_grp, an upper bound on the exact
// score s_t (method_types.h states the argument).
DecodeDefinition::SketchScores DecodeDefinition::sketch_scores(const std::string &name, std::vector<Var> token_vars,
                                                               Expr s_at, Expr page_at) {
    const int gs = cfg.sketch_group, groups = D / gs;
    Expr page = physical_page(page_at);
    // Channel 2 * pair + e of the token's sketch, as int16.
    auto code = [&](Expr pair, Expr e) -> Expr {
        if (cfg.sketch_bits == 8)
            return cast<int16_t>(Halide::reinterpret(Halide::Int(8), in.sketch(s_at, 2 * pair + e, page, h)));
        // 4 bits: the byte's low nibble is the even channel; each nibble moved to the
        // top of an int8 and back with its sign.
        Expr byte = Halide::reinterpret(Halide::Int(8), in.sketch(s_at, pair, page, h));
        Expr low = (byte << cast<int8_t>(4)) >> cast<int8_t>(4), high = byte >> cast<int8_t>(4);
        return cast<int16_t>(select(e == 0, low, high));
    };
    auto sigma = [&](Expr grp) { return as_f32(in.sketch_scale(s_at, grp, page, h)); };
    std::vector<Var> head = token_vars;
    head.insert(head.end(), {g, h, b});
    std::vector<Var> inner_vars = head;
    inner_vars.insert(inner_vars.begin() + 1, st.x);
    SketchScores f{Func(name + "_inner"), Func(name + "_dot"), Func(name + "_width"), Func(name + "_token")};
    // rpair.x: the channel within a pair (adjacent, so a pair of int16 products sums in
    // one instruction), rpair.y: the pair within the group.
    RDom rpair(0, 2, 0, gs / 2, name + "_rc"), rg(0, groups, name + "_rg");
    f.inner(inner_vars) = 0;
    std::vector<Expr> inner_at(inner_vars.begin(), inner_vars.end());
    Expr pair = st.x * (gs / 2) + rpair.y;
    f.inner(inner_at) += cast<int32_t>(st.q_code(2 * pair + rpair.x, g, h, b)) * cast<int32_t>(code(pair, rpair.x));
    std::vector<Expr> inner_r = inner_at;
    inner_r[1] = rg;
    std::vector<Expr> head_at(head.begin(), head.end());
    f.dot(head) = 0.0f;
    f.dot(head_at) += sigma(rg) * (st.q_step(rg, g, h, b) * as_f32(f.inner(inner_r)));
    f.width(head) = 0.0f;
    f.width(head_at) += sigma(rg) * st.q_group_weight(rg, g, h, b);
    Expr a = scale * f.dot(head);
    Expr e = scale * f.width(head) * float(fp::sketch_width_factor(D, gs, cfg.sketch_bits));
    f.token(head) = Tuple(a, a + e + float(4 * u) * (Halide::abs(a) + e));
    return f;
}

// Sketch routing: the query's codes, then the scan of every token's sketch and, per page,
// the largest a_t and the leakage terms of its tokens.
void DecodeDefinition::sketch_scan() {
    if (!sketch) return;
    const int gs = cfg.sketch_group;
    RDom rq(0, gs, "rq");
    Expr qd = in.q(st.x * gs + rq, g, h, b);
    // The query's codes (per group: step = max |q_d| / fp::kSketchQueryMax, at least the
    // smallest normal f32; n_d = round(q_d / step)) and the groups' weights w_grp.
    Func q_absmax("q_absmax"), q_l1("q_group_l1");
    q_absmax(st.x, g, h, b) = 0.0f;
    q_absmax(st.x, g, h, b) = Halide::max(q_absmax(st.x, g, h, b), Halide::abs(qd));
    q_l1(st.x, g, h, b) = 0.0f;
    q_l1(st.x, g, h, b) += Halide::abs(qd);
    st.q_step = Func("q_step");
    st.q_step(st.x, g, h, b) =
        Halide::max(q_absmax(st.x, g, h, b) * float(1.0 / fp::kSketchQueryMax), Halide::Float(32).min());
    st.q_code = Func("q_code");
    Expr n = Halide::round(in.q(d, g, h, b) / st.q_step(d / gs, g, h, b));
    st.q_code(d, g, h, b) = cast<int16_t>(clamp(n, -float(fp::kSketchQueryMax), float(fp::kSketchQueryMax)));
    st.q_group_weight = Func("q_group_weight");
    st.q_group_weight(st.x, g, h, b) =
        q_l1(st.x, g, h, b) + float(fp::sketch_query_weight(gs, cfg.sketch_bits)) * st.q_step(st.x, g, h, b);
    SketchScores scan = sketch_scores("sketch", {st.s, i}, st.s, i);
    st.sketch_inner = scan.inner;
    st.sketch_dot = scan.dot;
    st.sketch_width = scan.width;
    st.sketch_token = scan.token;
    // Per page: {max a_t, M = max ub_t, sum exp(beta (ub_t - M))} over its valid tokens,
    // in two passes over them (phase 0: the maxima; phase 1: the sum).
    RDom rs(0, S, 0, 2, "rs");
    Expr valid = i * S + rs.x < seq_len;
    Expr a = st.sketch_token(rs.x, i, g, h, b)[0], ub = st.sketch_token(rs.x, i, g, h, b)[1];
    st.page_leak = Func("page_leak");
    st.page_leak(i, g, h, b) = Tuple(neg_inf(), neg_inf(), 0.0f);
    Expr max_a = st.page_leak(i, g, h, b)[0], max_ub = st.page_leak(i, g, h, b)[1];
    Expr sum = st.page_leak(i, g, h, b)[2];
    Expr first = rs.y == 0;
    st.page_leak(i, g, h, b) = Tuple(select(first, Halide::max(max_a, select(valid, a, neg_inf())), max_a),
                                     select(first, Halide::max(max_ub, select(valid, ub, neg_inf())), max_ub),
                                     select(first || !valid, sum, sum + Halide::exp(beta * (ub - max_ub))));
}

// 1. Routing. head_page_score(p) = q.m_p (mean) or sum_d max(q_d lo_pd, q_d hi_pd)
// (bound), multiplied by scale > 0 where used; in sketch routing the largest a_t of
// the page, scaled already. Sketch candidates are then the top K_c tokens by a_t of
// the top P pages: the top K_c of all tokens whenever P >= K_c (ties aside: a page
// holding one of them scores at least the K_c-th a_t, and at most K_c pages do); with
// P < K_c, the top K_c of the routed pages' tokens, a choice made here. The leakage
// counts every other token either way, so the certificate does not depend on it.
void DecodeDefinition::route() {
    gr = per_head ? Expr(g) : Expr(0);
    if (hier) return route_hier();
    st.head_page_score = Func("head_page_score");
    if (sketch) {
        st.head_page_score(i, g, h, b) = st.page_leak(i, g, h, b)[0];
    } else {
        // The rows of the j-th page in physical order (route_pages), so the rows are read at
        // increasing addresses; head_page_score(j) is that page's score, and page_score()
        // reads a logical page's at its rank.
        st.page_rows = Func("page_rows");
        Expr page = clamp(in.route_pages(clamp(i, 0, in.max_pages - 1), b), 0, in.num_pages - 1);
        st.page_rows(d, c, i, h, b) = summary_value(d, c, page);
        st.head_page_score(i, g, h, b) = 0.0f;
        if (cfg.routing == RoutingMode::Mean) {
            Expr mean = as_f32(st.page_rows(rd, kSummaryMean, i, h, b));
            st.head_page_score(i, g, h, b) += in.q(rd, g, h, b) * mean;
        } else {
            Expr lo = as_f32(st.page_rows(rd, kSummaryMin, i, h, b));
            Expr hi = as_f32(st.page_rows(rd, kSummaryMax, i, h, b));
            st.head_page_score(i, g, h, b) += box_term(rd, lo, hi);
        }
    }
    st.route_score = Func("route_score");
    routed_score(
        st.route_score, [&](Expr head) { return scaled_page_score(i, head); }, "rg");
    // Sink and local pages take the largest key, so they are always routed (ties among
    // them to the lower page); every other existing page its score's key.
    Expr always_routed = i < cfg.sink_pages || i >= n_pages - cfg.local_pages;
    st.route_key = Func("route_key");
    st.route_key(i, g, h, b) =
        select(i >= n_pages, u32(0), always_routed, u32(0xffffffffu), order_key(st.route_score(i, g, h, b)));
    st.route = top_k(st.route_key, in.max_pages, P, cfg.top_k, "route", i, g, h, b);
    st.routed = Func("routed");
    st.routed(i, g, h, b) = st.route.index(i, g, h, b);
    st.pages = Func("pages");
    st.pages(i, g, h, b) = st.routed(i, gr, h, b);
}

// 1'. Routing by hierarchical bounds (hier_bound): the super-pages' box scores, the top Q
// of them expanded, then the top P of the pool (sink pages, the expanded super-pages' other
// pages, local pages), ties to the lower entry, which is the lower page: the pool lists
// pages in increasing order (the top-k lists the expanded super-pages in increasing order,
// sink pages precede and local pages follow every other). Funcs indexed by g are per
// routing group (read at gr); the scores are per head.
void DecodeDefinition::route_hier() {
    Expr slot = clamp(in.super_table(clamp(i, 0, in.max_supers - 1), b), 0, in.super_slots - 1);
    st.super_score = Func("super_score");
    st.super_score(i, g, h, b) = 0.0f;
    st.super_score(i, g, h, b) +=
        box_term(rd, in.super_summary(rd, kSuperMin, slot, h), in.super_summary(rd, kSuperMax, slot, h));
    st.super_absmax = Func("super_absmax");
    st.super_absmax(i, h, b) = in.super_summary(kSuperKeyAbsmax, kSuperBounds, slot, h);
    st.super_route_score = Func("super_route_score");
    routed_score(
        st.super_route_score, [&](Expr head) { return scale * st.super_score(i, head, h, b); }, "super_rg");
    st.super_key = Func("super_key");
    st.super_key(i, g, h, b) = select(i >= n_supers, u32(0), order_key(st.super_route_score(i, g, h, b)));
    st.super_route = top_k(st.super_key, in.max_supers, Q, cfg.top_k, "super", i, g, h, b);
    // Each super-page's position among the expanded, or -1 (the top-k's indices are distinct).
    st.super_rank = Func("super_rank");
    st.super_rank(i, g, h, b) = -1;
    {
        RDom rq(0, Q, "rq");
        st.super_rank(i, g, h, b) = select(st.super_route.index(rq, g, h, b) == i, rq, st.super_rank(i, g, h, b));
    }

    // The pool: entry e < SK sink page e; then R entries per expanded super-page; then the
    // local pages. Sink and local pages are not repeated among the expanded ones.
    Expr e = i, local_start = n_pages - LP;
    Expr sup = st.super_route.index(clamp((e - SK) / R, 0, Q - 1), g, h, b);
    Expr j_expanded = sup * R + (e - SK) % R;
    Expr j_local = local_start + (e - SK - Q * R);
    st.pool_page = Func("pool_page");
    st.pool_page(i, g, h, b) =
        select(e < SK, select(e < n_pages, e, -1),                                                                //
               e < SK + Q * R, select(sup >= 0 && j_expanded >= SK && j_expanded < local_start, j_expanded, -1),  //
               select(j_local >= SK && j_local >= 0 && j_local < n_pages, j_local, -1));
    // The pool's page scores, per head (the pool of head g's routing group).
    Expr page = physical_page(Halide::max(st.pool_page(i, gr, h, b), 0));
    st.head_page_score = Func("head_page_score");
    st.head_page_score(i, g, h, b) = 0.0f;
    st.head_page_score(i, g, h, b) +=
        box_term(rd, as_f32(summary_value(rd, kSummaryMin, page)), as_f32(summary_value(rd, kSummaryMax, page)));
    st.route_score = Func("route_score");
    routed_score(
        st.route_score, [&](Expr head) { return scale * st.head_page_score(i, head, h, b); }, "route_rg");
    Expr forced = e < SK || e >= SK + Q * R;
    st.route_key = Func("route_key");
    st.route_key(i, g, h, b) =
        select(st.pool_page(i, g, h, b) < 0, u32(0), forced, u32(0xffffffffu), order_key(st.route_score(i, g, h, b)));
    st.route = top_k(st.route_key, pool, P, cfg.top_k, "route", i, g, h, b);
    Expr index = st.route.index(i, g, h, b);
    st.routed = Func("routed");
    st.routed(i, g, h, b) = select(index >= 0, st.pool_page(clamp(index, 0, pool - 1), g, h, b), -1);
    st.pages = Func("pages");
    st.pages(i, g, h, b) = st.routed(i, gr, h, b);
}

// 2. Candidates: every token of the selected pages, slot i = page rank * S + offset.
// The selected pages' token scores: exact (q.k_t, s_t = scale * token_score), or in
// sketch routing a_t and ub_t from the sketch, the keys left unread.
void DecodeDefinition::candidates() {
    if (sketch) {
        // (s, i = page rank): the tokens of one selected page across vector lanes.
        SketchScores slots = sketch_scores("slot", {st.s, i}, st.s, slot_page(i * S));
        st.slot_inner = slots.inner;
        st.slot_dot = slots.dot;
        st.slot_width = slots.width;
        st.slot_token = slots.token;
    } else {
        st.token_score = Func("token_score");
        Expr slot = i;
        Expr kd = as_f32(kv_element(in.k_cache, cfg.layout, rd, slot % S, h, physical_page(slot_page(slot))));
        st.token_score(i, g, h, b) = 0.0f;
        st.token_score(i, g, h, b) += in.q(rd, g, h, b) * kd;
    }
    st.token_key = Func("token_key");
    st.token_key(i, g, h, b) = select(slot_valid(i), order_key(score_at(i)), u32(0));
    st.select = top_k(st.token_key, P * S, KC, cfg.top_k, "select", i, g, h, b);

    Expr cand_slot = st.select.index(c, g, h, b);
    Expr cand_valid = cand_slot >= 0;
    Expr safe_slot = clamp(cand_slot, 0, P * S - 1);
    st.cand_location = Func("cand_location");
    st.cand_location(c, g, h, b) = Tuple(physical_page(slot_page(safe_slot)), safe_slot % S);
    st.candidates = Func("candidates");
    st.candidates(c, g, h, b) = select(cand_valid, slot_page(safe_slot) * S + safe_slot % S, -1);
    // The candidates are scored again in f64: products of f32 and stored key values are
    // exact there, so the solver's weights carry no f32 dot-product error.
    st.cand_dot = Func("cand_dot");
    {
        Expr page = st.cand_location(c, g, h, b)[0], offset = st.cand_location(c, g, h, b)[1];
        st.cand_dot(c, g, h, b) = f64(0);
        st.cand_dot(c, g, h, b) += cast<double>(in.q(rd, g, h, b)) *
                                   cast<double>(as_f32(kv_element(in.k_cache, cfg.layout, rd, offset, h, page)));
    }
    st.cand_score = Func("cand_score");
    st.cand_score(c, g, h, b) = select(cand_valid, cast<double>(scale) * st.cand_dot(c, g, h, b), neg_inf(Float(64)));
}

// 3. Solver: the candidates' weights alpha (softmax, eg, fw or sparsemax) from their f64
// scores.
void DecodeDefinition::solve() {
    st.max_score = Func("max_score");
    st.max_score(g, h, b) = neg_inf(Float(64));
    st.max_score(g, h, b) = Halide::max(st.max_score(g, h, b), st.cand_score(rc, g, h, b));
    m = st.max_score(g, h, b);
    Expr s_c = st.cand_score(c, g, h, b);
    Expr valid_c = s_c > neg_inf(Float(64));

    // eg from uniform after N steps of size eta is softmax(N * eta * s). The other
    // solvers' weights (beta = 1) serve the LSE and the leakage diagnostic.
    st.weight = Func("weight");
    st.weight(c, g, h, b) = select(valid_c, Halide::exp(beta64 * (s_c - m)), f64(0));
    st.weight_sum = Func("weight_sum");
    st.weight_sum(g, h, b) = f64(0);
    st.weight_sum(g, h, b) += st.weight(rc, g, h, b);

    // fw and sparsemax iterate in f32 on the f64 scores rounded once.
    Func cand_score32("cand_score32");
    cand_score32(c, g, h, b) = cast<float>(s_c);
    Expr s32_c = cand_score32(c, g, h, b);
    m32 = cast<float>(m);

    st.alpha = Func("alpha");
    fw_gap = Expr(0.0f);
    if (softmax_family) {
        st.alpha(c, g, h, b) = cast<float>(st.weight(c, g, h, b) / st.weight_sum(g, h, b));
    } else if (cfg.solver == Solver::FW) {
        st.solver_steps.push_back(cand_score32);
        // max <alpha, s> - tau/2 ||alpha||^2 over the simplex, from the argmax vertex.
        const float tau = cfg.solver_tau;
        auto first_argmax = [&](const Func &value, const std::string &name) {
            Func arg(name);
            arg(g, h, b) = Tuple(0, neg_inf());
            Expr v = value(rc, g, h, b);
            arg(g, h, b) =
                Tuple(select(v > arg(g, h, b)[1], cast<int>(rc), arg(g, h, b)[0]), Halide::max(v, arg(g, h, b)[1]));
            st.solver_steps.push_back(arg);
            return arg;
        };
        Func start = first_argmax(cand_score32, "fw_start");
        Func iterate("fw_alpha_0");
        iterate(c, g, h, b) = select(c == start(g, h, b)[0], 1.0f, 0.0f);
        st.solver_steps.push_back(iterate);
        auto gradient_of = [&](const Func &a, int t) {
            Func grad("fw_gradient_" + std::to_string(t));
            grad(c, g, h, b) = select(valid_c, s32_c - tau * a(c, g, h, b), neg_inf());
            st.solver_steps.push_back(grad);
            return grad;
        };
        for (int t = 0; t < cfg.solver_steps; ++t) {
            Func grad = gradient_of(iterate, t);
            Func vertex = first_argmax(grad, "fw_vertex_" + std::to_string(t));
            const float gamma = 2.0f / (t + 2.0f);
            Func next("fw_alpha_" + std::to_string(t + 1));
            next(c, g, h, b) = (1.0f - gamma) * iterate(c, g, h, b) + select(c == vertex(g, h, b)[0], gamma, 0.0f);
            st.solver_steps.push_back(next);
            iterate = next;
        }
        Func grad = gradient_of(iterate, cfg.solver_steps);
        Func vertex = first_argmax(grad, "fw_vertex_final");
        Func inner("fw_inner");  // <grad, alpha> over candidates
        inner(g, h, b) = 0.0f;
        inner(g, h, b) +=
            select(st.cand_score(rc, g, h, b) > neg_inf(Float(64)), grad(rc, g, h, b) * iterate(rc, g, h, b), 0.0f);
        st.solver_steps.push_back(inner);
        fw_gap = vertex(g, h, b)[1] - inner(g, h, b);
        st.alpha(c, g, h, b) = iterate(c, g, h, b);
    } else {
        st.solver_steps.push_back(cand_score32);
        // sparsemax: alpha = max(z - theta, 0), z = s / tau, sum alpha = 1. theta is
        // bracketed by bisection in f32 on f(theta) = sum max(z - theta, 0) - 1, then solved
        // exactly in f64 on the support it brackets.
        const float tau = cfg.solver_tau;
        Func z("sparsemax_z");
        z(c, g, h, b) = select(valid_c, s32_c / tau, neg_inf());
        Func bracket("sparsemax_bracket_0");
        bracket(g, h, b) = Tuple(m32 / tau - 1.0f, m32 / tau);
        st.solver_steps.push_back(z);
        st.solver_steps.push_back(bracket);
        for (int t = 1; t <= 30; ++t) {
            Expr mid = (bracket(g, h, b)[0] + bracket(g, h, b)[1]) * 0.5f;
            Func excess("sparsemax_excess_" + std::to_string(t));
            excess(g, h, b) = -1.0f;
            excess(g, h, b) += Halide::max(z(rc, g, h, b) - mid, 0.0f);
            Func next("sparsemax_bracket_" + std::to_string(t));
            Expr inside = excess(g, h, b) >= 0.0f;
            next(g, h, b) = Tuple(select(inside, mid, bracket(g, h, b)[0]), select(inside, bracket(g, h, b)[1], mid));
            st.solver_steps.push_back(excess);
            st.solver_steps.push_back(next);
            bracket = next;
        }
        Func support("sparsemax_support");
        support(g, h, b) = Tuple(0, f64(0));
        Expr in_support = z(rc, g, h, b) > bracket(g, h, b)[0];
        Expr z64 = st.cand_score(rc, g, h, b) / f64(tau);
        support(g, h, b) = Tuple(support(g, h, b)[0] + select(in_support, 1, 0),
                                 support(g, h, b)[1] + select(in_support, z64, f64(0)));
        Func theta("sparsemax_theta");
        theta(g, h, b) = (support(g, h, b)[1] - 1) / cast<double>(support(g, h, b)[0]);
        st.solver_steps.push_back(support);
        st.solver_steps.push_back(theta);
        sparsemax_theta = theta(g, h, b);
        st.alpha(c, g, h, b) = select(valid_c, cast<float>(Halide::max(s_c / f64(tau) - theta(g, h, b), f64(0))), 0.0f);
    }
}

// 4. Output and LSE of the candidate scores (at the solver's temperature for
// softmax and eg: (1/beta) log sum exp(beta s), so partial results merge).
void DecodeDefinition::output() {
    st.out = Func("out");
    {
        Expr page = st.cand_location(rc, g, h, b)[0];
        Expr offset = st.cand_location(rc, g, h, b)[1];
        st.out(d, g, h, b) = 0.0f;
        st.out(d, g, h, b) += st.alpha(rc, g, h, b) * as_f32(kv_element(in.v_cache, cfg.layout, d, offset, h, page));
    }
    st.lse = Func("lse");
    if (softmax_family) {
        st.lse(g, h, b) = cast<float>(m + Halide::log(st.weight_sum(g, h, b)) / beta64);
    } else {
        Func unscaled("lse_sum");
        unscaled(g, h, b) = f64(0);
        unscaled(g, h, b) += select(st.cand_score(rc, g, h, b) > neg_inf(Float(64)),
                                    Halide::exp(st.cand_score(rc, g, h, b) - m), f64(0));
        st.solver_steps.push_back(unscaled);
        st.lse(g, h, b) = cast<float>(m + Halide::log(unscaled(g, h, b)));
    }
}

// 5. Diagnostics and the certificate. The argument, in exact arithmetic on the stored
// inputs (s_t = scale q.k_t, o = dense softmax at temperature beta, C the candidates):
//  - Every f32 score s^_t of a token of page p, and every f32 page bound u^_p, is
//    within e_p = scale ||q||_1 max|k_d| gamma_{D+1} of its exact value (a dot
//    product of D terms in any order, then the scale; |k_d| and the box's |lo|, |hi|
//    are at most key_absmax(p)). The f64 candidate scores are within e64 likewise.
//  - Leakage: each term exp(beta (s_t - m)) is at most exp(beta (s^_t + e_p - m32)
//    + margin), margin = 8 u beta (|s^_t| + e_p + |m32|) covering the f32 evaluation of
//    the argument and m32 = fl32(m); the f32 exp and sum of n terms add at most
//    (1 + eps_exp)(1 + gamma_{n+2}). Z_C >= Z^_C exp(-beta e64)(1 - gamma64 - eps64).
//    So L <= L^ and the dense mass outside C is delta <= L^ / (1 + L^).
//  - The kernel's output o^ differs from the exact softmax over C, o_C, by at most
//    R = (kappa + gamma_{K_c+1} (1 + kappa)) V_C: kappa bounds each weight's relative
//    error (f64 exp and sum of perturbed scores, the cast of alpha to f32), gamma the
//    f32 sum of alpha_i v_i, V_C the largest value norm of the selected pages.
//  - o_C - o = delta (o_C - o_out), so ||o^ - o|| <= R + delta (V_out + ||o^|| + R).
//  - Sketch routing replaces each non-candidate token's s^_t + e_p by its ub_t, and an
//    unselected page's n_p exp(beta (u_p - m)) by exp(beta (M_p - m)) times its sum of
//    exp(beta (ub_t - M_p)) (fp::page_sum_inflation).
//  - An f32 exp below about e^-87 is subnormal or 0: each term is within its computed
//    value times (1 + eps) plus 2^-126 (fp::kExpFloor), counted once per outside token.
//  The bound is evaluated in f64 and rounded up to f32. Anything non-finite on the way
//  (scores or values past f32's range) makes the head uncertified (Overflow).
void DecodeDefinition::certificate() {
    st.q_l1 = Func("q_l1");
    st.q_l1(g, h, b) = 0.0f;
    st.q_l1(g, h, b) += Halide::abs(in.q(rd, g, h, b));
    Expr q_l1_up = st.q_l1(g, h, b) * float(1 + 2 * fp::gamma32(D));
    Expr error_per_key = scale * q_l1_up * float(fp::score_error32(D));  // e_p / key_absmax(p)
    auto upper_term = [&](Expr score, Expr error) {                      // exp(beta (s - m)) >= exact, per token
        Expr margin = float(8 * u) * beta * (Halide::abs(score) + error + Halide::abs(m32));
        return Halide::exp(beta * (score + error - m32) + margin);
    };
    auto upper_score = [&](Expr score, Expr error) {  // >= the exact score
        return score + error + float(4 * u) * (Halide::abs(score) + error);
    };
    st.inside_stats = Func("inside_stats");
    {
        RDom rt(0, P * S, "rt");
        Expr valid = slot_valid(rt);
        Expr outside = valid && !st.select.kept(rt, g, h, b);
        // Sketch: ub_t already bounds the exact score.
        Expr s = sketch ? st.slot_token(rt % S, rt / S, g, h, b)[1] : score_at(rt);
        Expr page = physical_page(slot_page(rt));
        Expr vnorm = in.value_norm(page, h);
        Expr error = sketch ? Expr(0.0f) : error_per_key * in.key_absmax(page, h);
        st.inside_stats(g, h, b) = Tuple(0.0f, neg_inf(), 0.0f, 0.0f, neg_inf());
        st.inside_stats(g, h, b) =
            Tuple(st.inside_stats(g, h, b)[0] + select(outside, upper_term(s, error), 0.0f),
                  Halide::max(st.inside_stats(g, h, b)[1], select(outside, s, neg_inf())),
                  Halide::max(st.inside_stats(g, h, b)[2], select(outside, vnorm, 0.0f)),
                  Halide::max(st.inside_stats(g, h, b)[3], select(valid, vnorm, 0.0f)),
                  Halide::max(st.inside_stats(g, h, b)[4], select(outside, upper_score(s, error), neg_inf())));
    }
    st.outside_stats = Func("outside_stats");
    {
        // Per term: whether it exists, whether it is outside the selected pages, its tokens,
        // score bound and score error, value norm and largest |k_d|.
        Expr exists, outside, tokens, u_p, error, vnorm, kabs;
        RDom ro(0, hier ? pool + in.max_supers : in.max_pages, "ro");
        if (!hier) {
            Expr rp = ro;
            exists = rp < n_pages;
            tokens = sketch ? st.page_leak(rp, g, h, b)[2] : as_f32(Halide::min(S, seq_len - rp * S));
            kabs = in.key_absmax(physical_page(rp), h);
            outside = exists && !st.route.kept(rp, gr, h, b);
            // Sketch: the page's largest ub_t and its rescaled sum stand for n_p and u_p.
            u_p = sketch ? st.page_leak(rp, g, h, b)[1] : scaled_page_score(rp, g);
            error = sketch ? Expr(0.0f) : error_per_key * kabs;
            vnorm = in.value_norm(physical_page(rp), h);
        } else {
            // Terms 0 .. pool - 1: the pool's pages (sink, local, and those of expanded
            // super-pages), each by its own box; then one term per unexpanded super-page over
            // the tokens of its other pages, by its box (O(M/R + Q R) terms, not M).
            Expr is_page = ro < pool;
            Expr e = clamp(ro, 0, pool - 1), sup = clamp(ro - pool, 0, in.max_supers - 1);
            Expr j = st.pool_page(e, gr, h, b), page = physical_page(Halide::max(j, 0));
            Expr first = Halide::max(sup * R, SK), end = Halide::min(sup * R + R, n_pages - LP);
            Expr super_exists = ro - pool < n_supers;
            Expr slot = clamp(in.super_table(sup, b), 0, in.super_slots - 1);
            exists = select(is_page, j >= 0, super_exists);
            outside =
                exists && select(is_page, !st.route.kept(e, gr, h, b), st.super_rank(sup, gr, h, b) < 0 && first < end);
            tokens =
                as_f32(select(is_page, Halide::min(S, seq_len - j * S), Halide::min(seq_len, end * S) - first * S));
            u_p = scale * select(is_page, st.head_page_score(e, g, h, b), st.super_score(sup, g, h, b));
            kabs = select(is_page, in.key_absmax(page, h), st.super_absmax(sup, h, b));
            error = error_per_key * kabs;
            vnorm = select(is_page, in.value_norm(page, h), in.super_summary(kSuperValueNorm, kSuperBounds, slot, h));
        }
        st.outside_stats(g, h, b) = Tuple(0.0f, neg_inf(), 0.0f, 0.0f, neg_inf());
        st.outside_stats(g, h, b) =
            Tuple(st.outside_stats(g, h, b)[0] + select(outside, tokens * upper_term(u_p, error), 0.0f),
                  Halide::max(st.outside_stats(g, h, b)[1], select(outside, u_p, neg_inf())),
                  Halide::max(st.outside_stats(g, h, b)[2], select(outside, vnorm, 0.0f)),
                  Halide::max(st.outside_stats(g, h, b)[3], select(exists, kabs, 0.0f)),
                  Halide::max(st.outside_stats(g, h, b)[4], select(outside, upper_score(u_p, error), neg_inf())));
    }
    st.out_norm = Func("out_norm");
    {
        RDom ro(0, D, "ro");
        st.out_norm(g, h, b) = f64(0);
        st.out_norm(g, h, b) += cast<double>(st.out(ro, g, h, b)) * cast<double>(st.out(ro, g, h, b));
    }
    Func min_score("min_score");
    min_score(g, h, b) = Expr(std::numeric_limits<double>::infinity());
    min_score(g, h, b) = Halide::min(min_score(g, h, b),
                                     select(st.cand_score(rc, g, h, b) > neg_inf(Float(64)), st.cand_score(rc, g, h, b),
                                            Expr(std::numeric_limits<double>::infinity())));
    st.solver_steps.push_back(min_score);

    Expr inside = st.inside_stats(g, h, b)[0], outside = st.outside_stats(g, h, b)[0];
    Expr inflate_inside = f64((1 + fp::kExp32) * (1 + fp::gamma32(P * S + 2)));
    // Terms of the f32 outside sum: pages, and in hier_bound super-pages.
    Expr n_out = cast<double>(hier ? in.max_pages + in.max_supers : in.max_pages) + 2;
    Expr inflate_outside = f64(1 + fp::kExp32) * (1 + n_out * f64(u) / (1 - n_out * f64(u)));
    if (sketch) inflate_outside = inflate_outside * f64(fp::page_sum_inflation(S));
    // The exp floor, for every valid token outside the candidates.
    Expr floor = f64(fp::kExpFloor) * cast<double>(seq_len - st.select.count(g, h, b));
    Expr key_absmax_seq = cast<double>(st.outside_stats(g, h, b)[3]);
    Expr e64 = cast<double>(scale) * cast<double>(q_l1_up) * key_absmax_seq * f64(fp::score_error64(D));
    Expr z_low = st.weight_sum(g, h, b) * Halide::exp(-beta64 * e64) * f64(1 - fp::gamma64(KC + 2) - fp::kExp64);
    Expr leakage = (cast<double>(inside) * inflate_inside + cast<double>(outside) * inflate_outside + floor) / z_low;
    Expr delta = 1 - 1 / (1 + leakage);  // L / (1 + L), 1 when L = inf
    Expr largest_candidate = Halide::max(Halide::abs(m), Halide::abs(min_score(g, h, b)));
    Expr rho = Halide::exp(beta64 * (e64 + f64(8 * fp::kUnit64) * largest_candidate)) * f64(1 + fp::kExp64) - 1;
    Expr g64 = f64(fp::gamma64(KC + 2));
    Expr kappa = select(rho < f64(0.5), (1 + rho) * (1 + g64) / ((1 - rho) * (1 - g64)) * f64(1 + u) - 1,
                        Expr(std::numeric_limits<double>::infinity()));
    Expr value_candidates = cast<double>(st.inside_stats(g, h, b)[3]);
    Expr rounding = (kappa + f64(fp::gamma32(KC + 1)) * (1 + kappa)) * value_candidates;
    Expr value_out = Halide::max(st.inside_stats(g, h, b)[2], st.outside_stats(g, h, b)[2]);
    Expr bound64 = delta * (cast<double>(value_out) + Halide::sqrt(st.out_norm(g, h, b)) + rounding) + rounding;
    Expr bound = cast<float>(bound64 * f64(1 + 4 * u));
    Expr outside_max = Halide::max(st.inside_stats(g, h, b)[1], st.outside_stats(g, h, b)[1]);
    Expr gap = cast<float>(min_score(g, h, b)) - outside_max;

    // What the bound means for this solver and routing mode.
    auto status = [](Certificate c) { return Expr(float(int(c))); };
    Expr certificate;
    if (cfg.routing == RoutingMode::Mean) {
        certificate = status(Certificate::MeanRouting);
    } else if (softmax_family) {
        certificate = select(Halide::is_finite(bound), status(Certificate::Certified), status(Certificate::Overflow));
    } else if (cfg.solver == Solver::Sparsemax) {
        // Exact when every outside score is at or below C's threshold: then sparsemax over
        // all tokens has C's support and threshold. The exact threshold of C lies in
        // [theta - w, theta + w] when f(theta - w) >= 1 >= f(theta + w), checked in f64 with
        // the candidates' score error (f is decreasing); w covers the f64 solve. The bound
        // is then the rounding of the computed output alone: each alpha within a_err of
        // the exact one before its f32 cast, and the f32 sum of alpha_i v_i.
        const double tau = cfg.solver_tau;
        Expr theta = sparsemax_theta;
        Expr z_max = largest_candidate / f64(tau);
        Expr w = f64(2 * KC) * e64 / f64(tau) + f64(64 * fp::kUnit64 * (KC + 2)) * (Halide::abs(theta) + z_max + 1);
        auto mass_at = [&](Expr at, const std::string &name) {
            Func mass(name);
            mass(g, h, b) = f64(0);
            mass(g, h, b) += select(st.cand_score(rc, g, h, b) > neg_inf(Float(64)),
                                    Halide::max(st.cand_score(rc, g, h, b) / f64(tau) - at, f64(0)), f64(0));
            st.solver_steps.push_back(mass);
            return mass(g, h, b);
        };
        Expr spread = f64(KC) * e64 / f64(tau);
        Expr bracketed = mass_at(theta - w, "sparsemax_mass_low") * f64(1 - fp::gamma64(KC + 2)) - spread >= f64(1) &&
                         mass_at(theta + w, "sparsemax_mass_high") * f64(1 + fp::gamma64(KC + 2)) + spread <= f64(1);
        Expr outside_upper = cast<double>(Halide::max(st.inside_stats(g, h, b)[4], st.outside_stats(g, h, b)[4]));
        Expr threshold_low = (theta - w) * f64(tau);  // less its f64 rounding, either sign
        Expr exact = bracketed && outside_upper <= threshold_low - f64(4 * fp::kUnit64) * Halide::abs(threshold_low);
        Expr a_err = w + e64 / f64(tau) + f64(4 * fp::kUnit64) * (z_max + Halide::abs(theta));
        Expr spread_alpha = f64(KC) * a_err;
        Expr sparsemax_rounding =
            ((spread_alpha + f64(u) * (1 + spread_alpha)) + f64(fp::gamma32(KC + 1) * (1 + u)) * (1 + spread_alpha)) *
            value_candidates;
        bound = cast<float>(sparsemax_rounding * f64(1 + 4 * u));
        certificate = select(!exact, status(Certificate::Solver), Halide::is_finite(bound),
                             status(Certificate::Certified), status(Certificate::Overflow));
    } else {
        certificate = status(Certificate::Solver);
    }
    Expr reported_bound =
        select(certificate == status(Certificate::Certified), bound, std::numeric_limits<float>::infinity());
    st.support_gap = Func("support_gap");
    st.support_gap(g, h, b) = gap;
    st.leakage = Func("leakage");
    st.leakage(g, h, b) = leakage;
    st.delta = Func("delta");
    st.delta(g, h, b) = delta;
    st.error_bound = Func("error_bound");
    st.error_bound(g, h, b) = reported_bound;
    st.status = Func("status");
    st.status(g, h, b) = certificate;
    st.diag = Func("diag");
    st.diag(k, g, h, b) = Halide::mux(k, {st.support_gap(g, h, b), cast<float>(st.leakage(g, h, b)),
                                          st.error_bound(g, h, b), cast<float>(st.delta(g, h, b)), value_out,
                                          as_f32(st.select.count(g, h, b)), fw_gap, m32, st.status(g, h, b)});
}

// The outputs, views of one record per head so that a schedule computes them in one loop nest.
void DecodeDefinition::results() {
    Var x = st.x;
    Expr f32_part = select(x < D, st.out(clamp(x, 0, D - 1), g, h, b), x == D, st.lse(g, h, b),
                           st.diag(clamp(x - D - 1, 0, kDiagFields - 1), g, h, b));
    Expr int_part =
        select(x < KC, st.candidates(clamp(x, 0, KC - 1), g, h, b), st.pages(clamp(x - KC, 0, P - 1), g, h, b));
    st.record = Func("record");
    st.record(x, g, h, b) = Tuple(f32_part, int_part);

    st.result_out = Func("out_view");
    st.result_out(d, g, h, b) = st.record(d, g, h, b)[0];
    st.result_lse = Func("lse_view");
    st.result_lse(g, h, b) = st.record(D, g, h, b)[0];
    st.result_diag = Func("diag_view");
    st.result_diag(k, g, h, b) = st.record(D + 1 + k, g, h, b)[0];
    st.result_candidates = Func("candidates_view");
    st.result_candidates(c, g, h, b) = st.record(c, g, h, b)[1];
    st.result_pages = Func("pages_view");
    st.result_pages(i, g, h, b) = st.record(KC + i, g, h, b)[1];
    // Shape facts: each output holds exactly one group of G heads and full rows.
    st.result_out.bound(d, 0, D).bound(g, 0, G);
    st.result_lse.bound(g, 0, G);
    st.result_diag.bound(k, 0, kDiagFields).bound(g, 0, G);
    st.result_candidates.bound(c, 0, KC).bound(g, 0, G);
    st.result_pages.bound(i, 0, P).bound(g, 0, G);
}

}  // namespace

DecodeStages define_decode(const DecodeConfig &cfg, const DecodeInputs &in) {
    return DecodeDefinition(cfg, in).define();
}

Halide::Target decode_target(const Halide::Target &target) {
    Halide::Target t = target.with_feature(Halide::Target::StrictFloat);
    // The candidates' scores and the certificate are f64.
    if (t.has_feature(Halide::Target::OpenCL)) t.set_feature(Halide::Target::CLDoubles);
    return t;
}

int record_length(const DecodeConfig &cfg) {
    return std::max(cfg.head_dim + 1 + kDiagFields, cfg.top_tokens + cfg.top_pages);
}

DenseStages define_dense(const DenseConfig &cfg, const DenseInputs &in) {
    DenseStages st;
    Var d = st.d, t = st.t, g = st.g, h = st.h, b = st.b, ch = st.ch;
    const int D = cfg.head_dim, S = cfg.page_size;
    const int chunk = cfg.split_pages * S;
    Expr seq_len = in.seq_lens(b);
    auto token = [&](Expr tok, auto &&element) {
        Expr logical = clamp(tok / S, 0, in.max_pages - 1);
        Expr page = clamp(in.page_table(logical, b), 0, in.num_pages - 1);
        return element(page, tok % S);
    };

    RDom rd(0, D, "rd");
    st.score = Func("dense_score");  // q.k_t
    st.score(t, g, h, b) = 0.0f;
    st.score(t, g, h, b) += in.q(rd, g, h, b) * token(t, [&](Expr page, Expr off) {
                                return as_f32(kv_element(in.k_cache, cfg.layout, rd, off, h, page));
                            });
    auto s = [&](Expr tok) { return in.scale * st.score(tok, g, h, b); };

    // Masked rather than predicated reductions, so that they vectorize; tokens past
    // seq_len (whose memory may hold anything) never reach a sum.
    RDom rt(0, chunk, "rt");
    Expr tok = ch * chunk + rt;
    Expr valid = tok < seq_len;
    st.chunk_max = Func("chunk_max");
    st.chunk_max(g, ch, h, b) = neg_inf();
    st.chunk_max(g, ch, h, b) = Halide::max(st.chunk_max(g, ch, h, b), select(valid, s(tok), neg_inf()));
    st.weight = Func("dense_weight");
    st.weight(t, g, h, b) = select(t < seq_len, Halide::exp(s(t) - st.chunk_max(g, t / chunk, h, b)), 0.0f);
    st.chunk_sum = Func("chunk_sum");
    st.chunk_sum(g, ch, h, b) = 0.0f;
    st.chunk_sum(g, ch, h, b) += st.weight(tok, g, h, b);
    st.chunk_acc = Func("chunk_acc");
    st.chunk_acc(d, g, ch, h, b) = 0.0f;
    Expr value =
        token(tok, [&](Expr page, Expr off) { return as_f32(kv_element(in.v_cache, cfg.layout, d, off, h, page)); });
    st.chunk_acc(d, g, ch, h, b) += select(valid, st.weight(tok, g, h, b) * value, 0.0f);

    Var x("x");
    st.chunk_state = Func("chunk_state");
    st.chunk_state(x, g, ch, h, b) = select(x < D, st.chunk_acc(clamp(x, 0, D - 1), g, ch, h, b), x == D,
                                            st.chunk_max(g, ch, h, b), st.chunk_sum(g, ch, h, b));
    auto chunk_max = [&](Expr c) { return st.chunk_state(D, g, c, h, b); };
    auto chunk_sum = [&](Expr c) { return st.chunk_state(D + 1, g, c, h, b); };
    auto chunk_acc = [&](Expr c) { return st.chunk_state(d, g, c, h, b); };

    // Merge the chunks that hold tokens.
    Expr chunks = (in.max_pages + (cfg.split_pages - 1)) / cfg.split_pages;
    RDom rch(0, chunks, "rch");
    rch.where(rch * chunk < seq_len);
    st.max_score = Func("dense_max");
    st.max_score(g, h, b) = neg_inf();
    st.max_score(g, h, b) = Halide::max(st.max_score(g, h, b), chunk_max(rch));
    Expr rescale = Halide::exp(chunk_max(rch) - st.max_score(g, h, b));
    st.sum = Func("dense_sum");
    st.sum(g, h, b) = 0.0f;
    st.sum(g, h, b) += chunk_sum(rch) * rescale;
    st.merged_acc = Func("dense_acc");
    st.merged_acc(d, g, h, b) = 0.0f;
    st.merged_acc(d, g, h, b) += chunk_acc(rch) * rescale;
    st.out = Func("dense_out");
    st.out(d, g, h, b) = st.merged_acc(d, g, h, b) / st.sum(g, h, b);
    st.lse = Func("dense_lse");
    st.lse(g, h, b) = st.max_score(g, h, b) + Halide::log(st.sum(g, h, b));
    st.out.bound(d, 0, D).bound(g, 0, cfg.group_size);
    st.lse.bound(g, 0, cfg.group_size);
    return st;
}

SummaryStages define_summary(const SummaryConfig &cfg, const SummaryInputs &in) {
    SummaryStages st;
    Var d = st.d, c = st.c, h = st.h, n = st.n;
    const int S = cfg.page_size;
    Expr seq = clamp(in.touched(0, n), 0, in.batch - 1);
    Expr logical = clamp(in.touched(1, n), 0, in.max_pages - 1);
    Expr page = clamp(in.page_table(logical, seq), 0, in.num_pages - 1);
    Expr tokens = clamp(in.seq_lens(seq) - logical * S, 0, S);

    RDom rs(0, S, "rs");
    rs.where(rs < tokens);
    Expr key = as_f32(kv_element(in.k_cache, cfg.layout, d, rs, h, page));
    st.key_sum = Func("key_sum");
    st.key_sum(d, h, n) = 0.0f;
    st.key_sum(d, h, n) += key;
    st.key_min = Func("key_min");
    st.key_min(d, h, n) = std::numeric_limits<float>::infinity();
    st.key_min(d, h, n) = Halide::min(st.key_min(d, h, n), key);
    st.key_max = Func("key_max");
    st.key_max(d, h, n) = neg_inf();
    st.key_max(d, h, n) = Halide::max(st.key_max(d, h, n), key);

    Var s("s");
    RDom rd(0, cfg.head_dim, "rd");
    Func token_norm_sq("value_norm_sq_token");
    Expr v = as_f32(kv_element(in.v_cache, cfg.layout, rd, s, h, page));
    token_norm_sq(s, h, n) = 0.0f;
    token_norm_sq(s, h, n) += v * v;
    st.value_norm_sq = Func("value_norm_sq");
    st.value_norm_sq(h, n) = 0.0f;
    st.value_norm_sq(h, n) = Halide::max(st.value_norm_sq(h, n), token_norm_sq(rs, h, n));

    Expr mean = select(tokens > 0, st.key_sum(d, h, n) / as_f32(tokens), 0.0f);
    // A box narrower than the keys is rounded outward, so it still contains every key.
    Func lo("key_min_stored"), hi("key_max_stored");
    st.summary = Func("summary");
    st.scale = Func("summary_scale");
    Var x("x");
    if (cfg.summary_type == Halide::Int(8)) {
        // Compact summaries (method_types.h): sigma per group from the group's largest |min|
        // or |max| (0 for a page without tokens), min coded down and max up: floor or ceil of
        // the f32 quotient, corrected by one where the exact product sigma * code says so.
        const int gs = kSummaryScaleGroup;
        Func key_lo("key_min_or_zero"), key_hi("key_max_or_zero"), absmax("summary_absmax");
        key_lo(d, h, n) = select(tokens > 0, st.key_min(d, h, n), 0.0f);
        key_hi(d, h, n) = select(tokens > 0, st.key_max(d, h, n), 0.0f);
        RDom rc(0, gs, "rc");
        absmax(x, h, n) = 0.0f;
        absmax(x, h, n) = Halide::max(absmax(x, h, n), Halide::max(Halide::abs(key_lo(x * gs + rc, h, n)),
                                                                   Halide::abs(key_hi(x * gs + rc, h, n))));
        // kSummaryScaleMin is a power of two: the max before rounding up is the max after.
        st.scale(x, h, n) = round_outward(Halide::max(absmax(x, h, n) * kSummaryScaleFactor, kSummaryScaleMin),
                                          Halide::BFloat(16), true, in.repr);
        Expr sigma = in.repr.to_f32(st.scale(d / gs, h, n), Halide::BFloat(16));
        Expr lo_x = key_lo(d, h, n), hi_x = key_hi(d, h, n);
        Expr down = Halide::floor(lo_x / sigma), up = Halide::ceil(hi_x / sigma);
        down = select(sigma * down > lo_x, down - 1.0f, sigma * (down + 1.0f) <= lo_x, down + 1.0f, down);
        up = select(sigma * up < hi_x, up + 1.0f, sigma * (up - 1.0f) >= hi_x, up - 1.0f, up);
        const float m = float(kSummaryMaxCode);
        Func code("summary_code");
        code(d, c, h, n) = cast<int8_t>(Halide::mux(c, {Halide::clamp(Halide::round(mean / sigma), -m, m),
                                                        Halide::clamp(down, -m, m), Halide::clamp(up, -m, m)}));
        st.summary(d, c, h, n) = code(d, c, h, n);
        lo(d, h, n) = sigma * as_f32(code(d, kSummaryMin, h, n));
        hi(d, h, n) = sigma * as_f32(code(d, kSummaryMax, h, n));
        st.scale.bound(x, 0, cfg.head_dim / gs);
    } else {
        lo(d, h, n) = round_outward(st.key_min(d, h, n), cfg.summary_type, false, in.repr);
        hi(d, h, n) = round_outward(st.key_max(d, h, n), cfg.summary_type, true, in.repr);
        st.summary(d, c, h, n) = Halide::mux(c, {in.repr.from_f32(mean, cfg.summary_type), lo(d, h, n), hi(d, h, n)});
        st.scale(x, h, n) = in.repr.from_f32(0.0f, Halide::BFloat(16));  // a placeholder, not read
        st.scale.bound(x, 0, 1);
    }
    // The largest |x| of the stored box bounds every |k_d| of the page.
    st.key_absmax = Func("key_absmax");
    st.key_absmax(h, n) = 0.0f;
    const Type box_type = cfg.summary_type == Halide::Int(8) ? Float(32) : cfg.summary_type;
    st.key_absmax(h, n) =
        Halide::max(st.key_absmax(h, n), Halide::max(Halide::abs(in.repr.to_f32(lo(rd, h, n), box_type)),
                                                     Halide::abs(in.repr.to_f32(hi(rd, h, n), box_type))));
    // sqrt of the f32 sum of squares, rounded up so it bounds the true norm (fp::value_norm_margin).
    st.value_norm = Func("value_norm");
    st.value_norm(h, n) = Halide::sqrt(st.value_norm_sq(h, n)) * float(fp::value_norm_margin(cfg.head_dim));
    st.summary.bound(d, 0, cfg.head_dim).bound(c, 0, kSummaryChannels);
    return st;
}

SketchStages define_sketch(const SketchConfig &cfg, const SummaryInputs &in) {
    const std::string err = sketch_config_error(cfg.head_dim, cfg.bits, cfg.group);
    if (!err.empty()) throw std::invalid_argument(err);
    SketchStages st;
    Var s = st.s, x = st.x, h = st.h, n = st.n, d("d");
    const int S = cfg.page_size, gs = cfg.group, qmax = sketch_max_code(cfg.bits);
    Expr seq = clamp(in.touched(0, n), 0, in.batch - 1);
    Expr logical = clamp(in.touched(1, n), 0, in.max_pages - 1);
    Expr page = clamp(in.page_table(logical, seq), 0, in.num_pages - 1);
    Expr tokens = clamp(in.seq_lens(seq) - logical * S, 0, S);
    st.key = Func("sketch_key");
    st.key(d, s, h, n) = select(s < tokens, as_f32(kv_element(in.k_cache, cfg.layout, d, s, h, page)), 0.0f);
    RDom rc(0, gs, "rc");
    st.absmax = Func("sketch_absmax");
    st.absmax(s, x, h, n) = 0.0f;
    st.absmax(s, x, h, n) = Halide::max(st.absmax(s, x, h, n), Halide::abs(st.key(x * gs + rc, s, h, n)));
    // sigma rounded up, so |k / sigma| <= max code (to f32 rounding): every code fits. The
    // quotient is IEEE's (strict), not a product with a rounded reciprocal of qmax: the
    // reference's sigma, bit for bit.
    st.scale = Func("sketch_scale");
    st.scale(s, x, h, n) =
        round_outward(Halide::strict_float(st.absmax(s, x, h, n) / float(qmax)), Halide::BFloat(16), true, in.repr);
    st.code = Func("sketch_code");
    {
        Expr sigma = in.repr.to_f32(st.scale(s, d / gs, h, n), Halide::BFloat(16));
        Expr q = cast<int>(Halide::round(st.key(d, s, h, n) / sigma));
        st.code(d, s, h, n) = select(sigma > 0.0f, clamp(q, -qmax, qmax), 0);
    }
    st.codes = Func("sketch_codes");
    Var byte("byte");
    if (cfg.bits == 8) {
        st.codes(s, byte, h, n) = cast<uint8_t>(st.code(byte, s, h, n));
    } else {
        Expr low = st.code(2 * byte, s, h, n) & 15, high = st.code(2 * byte + 1, s, h, n) & 15;
        st.codes(s, byte, h, n) = cast<uint8_t>(low | (high << 4));
    }
    st.codes.bound(s, 0, S).bound(byte, 0, sketch_code_bytes(cfg.head_dim, cfg.bits));
    st.scale.bound(s, 0, S).bound(x, 0, cfg.head_dim / gs);
    return st;
}

Halide::Region sketch_region(const ShapeEstimate &e, int bits) {
    return {{0, e.page_size}, {0, sketch_code_bytes(e.head_dim, bits)}, {0, e.pages * e.batch}, {0, e.kv_heads}};
}
Halide::Region sketch_scale_region(const ShapeEstimate &e, int group) {
    return {{0, e.page_size}, {0, e.head_dim / group}, {0, e.pages * e.batch}, {0, e.kv_heads}};
}

Halide::Region q_region(const ShapeEstimate &e) {
    return {{0, e.head_dim}, {0, e.group}, {0, e.kv_heads}, {0, e.batch}};
}
Halide::Region kv_cache_region(const ShapeEstimate &e) {
    const int pages = e.pages * e.batch;
    if (e.layout == KvLayout::HND) return {{0, e.head_dim}, {0, e.page_size}, {0, e.kv_heads}, {0, pages}};
    return {{0, e.head_dim}, {0, e.kv_heads}, {0, e.page_size}, {0, pages}};
}
Halide::Region page_table_region(const ShapeEstimate &e) { return {{0, e.pages}, {0, e.batch}}; }
Halide::Region summary_region(const ShapeEstimate &e) {
    Halide::Region r;
    for (int64_t extent : SummaryLayout{e.head_dim, int64_t(e.pages) * e.batch, e.kv_heads}.extents())
        r.push_back({0, int(extent)});
    return r;
}
Halide::Region summary_scale_region(const ShapeEstimate &e, int groups) {
    return {{0, groups}, {0, e.pages * e.batch}, {0, e.kv_heads}};
}
Halide::Region value_norm_region(const ShapeEstimate &e) { return {{0, e.pages * e.batch}, {0, e.kv_heads}}; }
Halide::Region per_head_region(const ShapeEstimate &e, int first_extent) {
    Halide::Region r{{0, e.group}, {0, e.kv_heads}, {0, e.batch}};
    if (first_extent > 0) r.insert(r.begin(), {0, first_extent});
    return r;
}

Type halide_type(DType t) { return Type(halide_runtime_type(t)); }

DType dtype_of(const Type &t) {
    for (DType d : {DType::F32, DType::F16, DType::BF16, DType::I8})
        if (t == halide_type(d)) return d;
    throw std::invalid_argument("type " + type_name(t) + " is not float32, float16, bfloat16 or int8");
}

Type parse_type(const std::string &name) { return halide_type(parse_dtype(name)); }

std::string type_name(const Type &t) {
    for (DType d : {DType::F32, DType::F16, DType::BF16, DType::I8})
        if (t == halide_type(d)) return to_string(d);
    std::ostringstream os;
    os << t;
    return os.str();
}

}  // namespace vashista
