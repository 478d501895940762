#include "schedule.h"

#include <algorithm>
#include <sstream>
#include <stdexcept>

namespace vashista {

using Halide::RVar;
using Halide::TailStrategy;

std::string divides(const char *what, int lanes, const char *of, int extent) {
    if (extent % lanes == 0) return "";
    std::ostringstream os;
    os << what << " = " << lanes << " does not divide " << of << " = " << extent;
    return os.str();
}

std::string knob_domain_error(const char *knob, int value, const std::vector<int> &domain) {
    if (std::find(domain.begin(), domain.end(), value) != domain.end()) return "";
    std::ostringstream os;
    os << "schedule knob '" << knob << "' = " << value << " is not one of {";
    for (size_t i = 0; i < domain.size(); ++i) os << (i ? ", " : "") << domain[i];
    os << "}";
    return os.str();
}

namespace {

// Splits an associative reduction (sum, max, or a tuple of them) into `lanes` vector
// lanes (rfactor) computed inside `f`'s loop over `at`, unrolls `unroll` vectors of it,
// then reduces the lanes.
void vectorize_sum(Func f, int lanes, int unroll, Var at) {
    RVar r = f.rvars(0)[0];
    RVar ro("ro"), ri("ri"), rou("rou");
    Var u("u");
    Func lanes_f = f.update().split(r, ro, ri, lanes, TailStrategy::GuardWithIf).rfactor(ri, u);
    lanes_f.compute_at(f, at).vectorize(u);
    if (unroll > 1) {
        RVar lro = lanes_f.rvars(0)[0];
        lanes_f.update(0).split(lro, lro, rou, unroll, TailStrategy::GuardWithIf).unroll(rou).vectorize(u);
    } else {
        lanes_f.update(0).vectorize(u);
    }
}

// A dot product over D per (token, query head): D split into `lanes` vector lanes
// (rfactor) accumulated per token, stored lanes innermost so each FMA writes one
// contiguous vector; with `group_inner` every head of the group uses each key load;
// one horizontal add per score.
void vectorize_dot(Func f, Var token, Var g, int lanes, bool group_inner) {
    RVar rd = f.rvars(0)[0];
    RVar ro("rdo"), ri("rdi");
    Var u("u");
    f.update().reorder(g, token);
    Func lanes_f = f.update().split(rd, ro, ri, lanes).rfactor(ri, u);
    lanes_f.compute_at(f, token).reorder_storage(u, g).vectorize(u);
    if (group_inner) {
        lanes_f.update().reorder(u, g, ro).vectorize(u).unroll(g);
    } else {
        lanes_f.update().vectorize(u);
    }
    f.update().atomic().vectorize(ri);
}

// Page scores from summary rows, `block` pages at a time: with `gather`, the block's rows
// are copied together first (each page's rows lie where its physical page does; a short copy
// loop keeps many scattered rows in flight, where scoring page by page waits on each); D
// split into `lanes` vector lanes (rfactor) accumulated per page and head, every head of the
// group from the same row loads with `group_inner`; then the lanes summed for the block's
// pages as vectors across pages (a horizontal sum per score is a serial chain under
// strict_float). Returns the loop over blocks.
Var vectorize_page_scores(Func f, Func rows, Var i, Var g, int lanes, int block, bool group_inner, bool gather) {
    RVar rd = f.rvars(0)[0];
    RVar ro("rdo"), ri("rdi");
    Var u("u"), io("pio"), ii("pii");
    Func lanes_f = f.update().split(rd, ro, ri, lanes).rfactor(ri, u);
    // The lanes folded in halves, each a contiguous vector add per page and head, down to 4;
    // the last 4 summed per page as vectors across the block's pages.
    RVar rest = ri;
    std::vector<Func> folds;
    for (int width = lanes / 2; width >= 4; width /= 2) {
        const std::string n = std::to_string(width);
        RVar hi("rh" + n), lo("rl" + n);
        Var v("v" + n);
        folds.push_back(f.update().split(rest, hi, lo, width).rfactor(lo, v));
        rest = lo;
    }
    f.update().split(i, io, ii, block, TailStrategy::RoundUp).reorder(ii, rest, g, io).vectorize(ii);
    f.vectorize(i, block, TailStrategy::RoundUp);
    for (Func fold : folds) {
        const Var v = fold.args()[0];
        fold.compute_at(f, io).vectorize(v);
        fold.update().vectorize(v);
    }
    lanes_f.compute_at(f, io).reorder_storage(u, g, i).vectorize(u);
    if (group_inner) {
        lanes_f.update().reorder(u, g, ro, i).vectorize(u).unroll(g);
    } else {
        lanes_f.update().reorder(u, ro, g, i).vectorize(u);
    }
    if (gather) rows.compute_at(f, io).vectorize(rows.args()[0], lanes);
    return io;
}

// The sketch scores of a page's tokens (s across vector lanes), placed by the caller: per
// page i, the per-group inner sums, their sigma-weighted sum and the width. With
// `group_inner` the heads of the group inside the page, unrolled, so each code load serves
// all of them; else one head at a time. The reductions keep their order (no rfactor): the
// scan and the selected pages' scores give the same bits.
void schedule_sketch_scores(Func token, Func dot, Func width, Func inner, Var s, Var x, Var i, Var g, int groups,
                            bool group_inner) {
    token.vectorize(s);
    if (group_inner) {
        token.reorder(s, g, i).unroll(g);
    } else {
        token.reorder(s, i, g);
    }
    // The per-group sums run over their channels with several groups' and heads' accumulators
    // in registers (independent chains, so the adds' latency hides); dot and width run over
    // the groups with the heads' accumulators held across them.
    const int groups_at_once = groups % 2 == 0 ? 2 : 1;  // 4 was slower (register pressure)
    Var xo("xo"), xi("xi");
    for (Func f : {dot, width, inner}) {
        f.compute_at(token, i).vectorize(s);
        RVar r = f.rvars(0)[0];
        auto u = f.update();
        if (f.name() == inner.name()) {
            // The channel pair innermost and in the vector with the tokens: each pair of
            // int16 products sums into one int32 lane (vpmaddwd, or vpdpwssd with VNNI).
            RVar pair = f.rvars(0)[1];
            u.split(x, xo, xi, groups_at_once);
            group_inner ? u.reorder(r, s, g, xi, pair, xo) : u.reorder(r, s, xi, pair, xo);
            u.atomic().vectorize(r).unroll(xi);
        } else {
            group_inner ? u.reorder(s, g, r) : u.reorder(s, r);
        }
        u.vectorize(s);
        if (group_inner) u.unroll(g);
    }
}

}  // namespace

const Space<DecodeCpuSchedule, DecodeConfig> &DecodeCpuSchedule::space() {
    static const Space<DecodeCpuSchedule, DecodeConfig> s{
        {
            {"vector_width", {8, 16}, &DecodeCpuSchedule::vector_width},
            {"page_lanes", {4, 8, 16}, &DecodeCpuSchedule::page_lanes},
            {"group_inner", {0, 1}, &DecodeCpuSchedule::group_inner},
            {"count_lanes", {8, 16, 32, 64}, &DecodeCpuSchedule::count_lanes},
            {"dot_lanes", {8, 16, 32}, &DecodeCpuSchedule::dot_lanes},
            {"out_unroll", {1, 2, 4, 8}, &DecodeCpuSchedule::out_unroll},
            {"parallel", {0, 1}, &DecodeCpuSchedule::parallel},
            {"route_split", {0, 1}, &DecodeCpuSchedule::route_split},
            {"route_block", {64, 256, 1024}, &DecodeCpuSchedule::route_block},
            {"count_unroll", {1, 2, 4}, &DecodeCpuSchedule::count_unroll},
            {"head_tasks", {0, 1}, &DecodeCpuSchedule::head_tasks},
            {"route_gather", {0, 1}, &DecodeCpuSchedule::route_gather},
        },
        [](const DecodeCpuSchedule &s, const DecodeConfig &cfg) -> std::string {
            if (!s.route_split && s.route_block != 64) return "route_block only applies with route_split = 1";
            std::string e = divides("dot_lanes", s.dot_lanes, "head_dim", cfg.head_dim);
            if (e.empty())
                e = divides("out_unroll * vector_width", s.out_unroll * s.vector_width, "head_dim", cfg.head_dim);
            return e;
        }};
    return s;
}

const Space<DenseCpuSchedule, DenseConfig> &DenseCpuSchedule::space() {
    static const Space<DenseCpuSchedule, DenseConfig> s{
        {
            {"split_pages", {8, 16, 32, 64, 128, 256}, &DenseCpuSchedule::split_pages},
            {"vector_width", {8, 16}, &DenseCpuSchedule::vector_width},
            {"dot_lanes", {8, 16, 32}, &DenseCpuSchedule::dot_lanes},
            {"group_inner", {0, 1}, &DenseCpuSchedule::group_inner},
            {"acc_unroll", {1, 2, 4, 8}, &DenseCpuSchedule::acc_unroll},
            {"parallel", {0, 1}, &DenseCpuSchedule::parallel},
        },
        [](const DenseCpuSchedule &s, const DenseConfig &cfg) -> std::string {
            std::string e = divides("dot_lanes", s.dot_lanes, "head_dim", cfg.head_dim);
            if (e.empty())
                e = divides("acc_unroll * vector_width", s.acc_unroll * s.vector_width, "head_dim", cfg.head_dim);
            return e;
        }};
    return s;
}

const Space<SummaryCpuSchedule, SummaryConfig> &SummaryCpuSchedule::space() {
    static const Space<SummaryCpuSchedule, SummaryConfig> s{
        {
            {"vector_width", {8, 16}, &SummaryCpuSchedule::vector_width},
            {"parallel", {0, 1}, &SummaryCpuSchedule::parallel},
        },
        [](const SummaryCpuSchedule &s, const SummaryConfig &cfg) -> std::string {
            return divides("vector_width", s.vector_width, "head_dim", cfg.head_dim);
        }};
    return s;
}

const Space<SketchCpuSchedule, SketchConfig> &SketchCpuSchedule::space() {
    static const Space<SketchCpuSchedule, SketchConfig> s{
        {{"parallel", {0, 1}, &SketchCpuSchedule::parallel}},
        [](const SketchCpuSchedule &, const SketchConfig &) -> std::string { return ""; }};
    return s;
}

SketchCpuSchedule hand_schedule(const SketchConfig &) { return SketchCpuSchedule{}; }

DecodeCpuSchedule hand_schedule(const DecodeConfig &cfg) {
    DecodeCpuSchedule s;
    while (cfg.head_dim % (s.out_unroll * s.vector_width) != 0 && s.out_unroll > 1) s.out_unroll /= 2;
    while (cfg.head_dim % (s.out_unroll * s.vector_width) != 0) s.vector_width = 8, s.out_unroll = 1;
    if (cfg.head_dim % s.dot_lanes != 0) s.dot_lanes = 8;
    return s;
}

DenseCpuSchedule hand_schedule(const DenseConfig &cfg) {
    DenseCpuSchedule s;
    while (cfg.head_dim % (s.acc_unroll * s.vector_width) != 0 && s.acc_unroll > 1) s.acc_unroll /= 2;
    while (cfg.head_dim % (s.acc_unroll * s.vector_width) != 0) s.vector_width = 8, s.acc_unroll = 1;
    if (cfg.head_dim % s.dot_lanes != 0) s.dot_lanes = 8;
    return s;
}

SummaryCpuSchedule hand_schedule(const SummaryConfig &cfg) {
    SummaryCpuSchedule s;
    if (cfg.head_dim % s.vector_width != 0) s.vector_width = 8;
    return s;
}

void apply_cpu(const DecodeCpuSchedule &s, const DecodeConfig &cfg, DecodeStages &st) {
    check_point(s, cfg);
    Var d = st.d, i = st.i, g = st.g, h = st.h, b = st.b, c = st.c;
    const int vw = s.vector_width;

    // One task per (KV head, sequence) computes all of its query heads' steps, or
    // (head_tasks) one task per query head, when few KV heads would leave cores idle.
    Func rec = st.record;
    Var x = rec.args()[0];
    Var hb("hb");
    if (s.head_tasks) {
        rec.compute_root().fuse(g, h, hb).fuse(hb, b, hb);
    } else {
        rec.compute_root().fuse(h, b, hb);
    }
    if (s.parallel) rec.parallel(hb);
    auto at_head = [&](Func f) { f.compute_at(rec, hb); };

    // Sketch routing: the scan of every token's sketch, a page's 16 tokens per vector and
    // every head of the group from the same code load, in blocks of pages whose per-page
    // reductions run across pages (page_lanes per vector). Inside the head's task, or
    // (route_split) as its own parallel loop over blocks of pages.
    if (cfg.routing == RoutingMode::Sketch) {
        Var io("io"), ii("ii"), ib("ib"), task("route_task");
        Func leak = st.page_leak;
        RVar rs = leak.rvars(0)[0], phase = leak.rvars(0)[1];
        if (s.route_split) {
            for (Func f : {st.q_step, st.q_code, st.q_group_weight})
                f.compute_root();  // the scan runs outside the heads' tasks
            leak.compute_root()
                .split(i, ib, i, s.route_block, TailStrategy::GuardWithIf)
                .fuse(ib, h, task)
                .fuse(task, b, task);
            leak.update()
                .split(i, ib, i, s.route_block, TailStrategy::GuardWithIf)
                .split(i, io, ii, s.page_lanes, TailStrategy::GuardWithIf)
                .reorder(ii, rs, phase, g, io, ib, h, b)
                .vectorize(ii)
                .unroll(phase)
                .fuse(ib, h, task)
                .fuse(task, b, task);
            if (s.parallel) {
                leak.parallel(task);
                leak.update().parallel(task);
            }
        } else {
            for (Func f : {st.q_step, st.q_code, st.q_group_weight}) at_head(f);
            at_head(leak);
            leak.update()
                .split(i, io, ii, s.page_lanes, TailStrategy::GuardWithIf)
                .reorder(ii, rs, phase, g, io)
                .vectorize(ii)
                .unroll(phase);
        }
        st.sketch_token.compute_at(leak, io);
        schedule_sketch_scores(st.sketch_token, st.sketch_dot, st.sketch_width, st.sketch_inner, st.s, st.x, i, g,
                               cfg.head_dim / cfg.sketch_group, true);
    } else if (cfg.routing == RoutingMode::HierBound) {
        // Hierarchical bounds: the super-pages' and then the pool's box scores as page
        // scores are (lanes of d, page_lanes at a time), in the head's task; the rows are
        // read where they lie (the pool's pages are a few per super-page).
        for (Func f : {st.super_score, st.head_page_score}) {
            vectorize_page_scores(f, Func(), i, g, s.dot_lanes, s.page_lanes, s.group_inner, false);
            at_head(f);
        }
        at_head(st.pool_page);
        st.pool_page.vectorize(i, vw, TailStrategy::RoundUp);
        at_head(st.super_rank);
        st.super_rank.vectorize(i, vw, TailStrategy::RoundUp);
        st.super_rank.update().vectorize(i, vw, TailStrategy::RoundUp);
        if (cfg.group_routing == GroupRouting::Shared) {
            at_head(st.super_route_score);
            st.super_route_score.vectorize(i, vw, TailStrategy::RoundUp);
            st.super_route_score.update().vectorize(i, vw, TailStrategy::RoundUp);
        }
    } else {
        // Mean and bound routing: a page's summary rows are contiguous in d, so each page's
        // score is a dot-product-like reduction over D (lanes of d), page_lanes pages at a
        // time. Inside the head's task, or (route_split) as its own parallel loop over blocks
        // of pages.
        Func hps = st.head_page_score;
        const Var blocks =
            vectorize_page_scores(hps, st.page_rows, i, g, s.dot_lanes, s.page_lanes, s.group_inner, s.route_gather);
        if (s.route_split) {
            Var ib("ib"), task("route_task");
            hps.compute_root()
                .split(i, ib, i, s.route_block, TailStrategy::GuardWithIf)
                .reorder(i, g, ib, h, b)
                .fuse(ib, h, task)
                .fuse(task, b, task);
            hps.update()
                .split(blocks, ib, blocks, s.route_block / s.page_lanes, TailStrategy::GuardWithIf)
                .fuse(ib, h, task)
                .fuse(task, b, task);
            if (s.parallel) {
                hps.parallel(task);
                hps.update().parallel(task);
            }
        } else {
            at_head(hps);
        }
    }
    if (cfg.group_routing == GroupRouting::Shared) {
        at_head(st.route_score);
        st.route_score.vectorize(i, vw, TailStrategy::RoundUp);
        st.route_score.update().vectorize(i, vw, TailStrategy::RoundUp);
    }

    auto schedule_top_k = [&](TopKStages &tk, Func key) {
        at_head(key);
        key.vectorize(i, vw, TailStrategy::RoundUp);
        for (Func count : tk.count_at_least) {
            at_head(count);
            vectorize_sum(count, s.count_lanes, s.count_unroll, g);
        }
        for (Func t : tk.threshold) at_head(t);
        // The word masks, words across vector lanes (each lane gathers its word's keys).
        at_head(tk.mask);
        tk.mask.vectorize(i, vw, TailStrategy::RoundUp);
        tk.mask.update().vectorize(i, vw, TailStrategy::GuardWithIf);
        at_head(tk.words_before);
        at_head(tk.index);
    };
    if (cfg.routing == RoutingMode::HierBound) schedule_top_k(st.super_route, st.super_key);
    schedule_top_k(st.route, st.route_key);

    // Token scores: D split into vector lanes; with shared routing every head of the
    // group uses each key load.
    if (cfg.routing == RoutingMode::Sketch) {
        // The selected pages' sketch, one page rank at a time; with shared routing every
        // head of the group reads the same pages, and each code load serves all of them.
        at_head(st.slot_token);
        const bool shared = cfg.group_routing == GroupRouting::Shared;
        schedule_sketch_scores(st.slot_token, st.slot_dot, st.slot_width, st.slot_inner, st.s, st.x, i, g,
                               cfg.head_dim / cfg.sketch_group, shared && s.group_inner);
    } else {
        at_head(st.token_score);
        vectorize_dot(st.token_score, i, g, s.dot_lanes, s.group_inner);
    }
    schedule_top_k(st.select, st.token_key);

    for (Func f : {st.cand_score, st.weight, st.alpha}) {
        at_head(f);
        f.vectorize(c, vw, TailStrategy::RoundUp);
    }
    at_head(st.cand_location);
    // The f64 rescoring of the candidates: candidates across lanes, D innermost.
    at_head(st.cand_dot);
    st.cand_dot.vectorize(c, 8, TailStrategy::GuardWithIf);
    st.cand_dot.update().reorder(st.cand_dot.rvars(0)[0], c).vectorize(c, 8, TailStrategy::GuardWithIf);
    for (Func f : {st.max_score, st.weight_sum, st.q_l1}) at_head(f);
    for (Func f : st.solver_steps) at_head(f);

    // Output: candidates outer, D vectors unrolled inner.
    at_head(st.out);
    {
        Var dout("dout"), din("din");
        st.out.vectorize(d, vw);
        RVar rc = st.out.rvars(0)[0];
        st.out.update()
            .split(d, dout, din, vw)
            .split(dout, dout, Var("du"), s.out_unroll)
            .reorder(din, Var("du"), rc, dout)
            .vectorize(din)
            .unroll(Var("du"));
    }
    at_head(st.out_norm);
    for (Func f : {st.inside_stats, st.outside_stats}) {
        at_head(f);
        vectorize_sum(f, vw, 1, g);
    }
    (void)x;
    for (Func f : st.outputs()) f.compute_root();
    st.result_out.vectorize(d, vw);
}

void apply_cpu(const DenseCpuSchedule &s, const DenseConfig &cfg, DenseStages &st) {
    check_dense_point(s, cfg);
    Var d = st.d, t = st.t, g = st.g, h = st.h, b = st.b, ch = st.ch;
    const int vw = s.vector_width;
    // One task per (chunk, KV head, sequence); the chunk's scores stay in cache.
    Var task("task");
    Func state = st.chunk_state;
    state.compute_root().fuse(ch, h, task).fuse(task, b, task);
    if (s.parallel) state.parallel(task);
    Func acc = st.chunk_acc;
    acc.compute_at(state, task).vectorize(d, vw);
    {
        RVar rt = acc.rvars(0)[0];
        Var dout("dout"), din("din"), du("du");
        acc.update()
            .split(d, dout, din, vw)
            .split(dout, dout, du, s.acc_unroll)
            .reorder(din, du, g, rt, dout)
            .vectorize(din)
            .unroll(du);
        if (s.group_inner) acc.update().unroll(g);
    }
    st.weight.compute_at(state, task).vectorize(t, vw);
    for (Func f : {st.chunk_max, st.chunk_sum}) {
        f.compute_at(state, task);
        vectorize_sum(f, vw, 1, g);
    }
    st.score.compute_at(state, task);
    vectorize_dot(st.score, t, g, s.dot_lanes, s.group_inner);
    // The merge over chunks is small; one pass per head.
    Var hb("hb");
    st.out.compute_root().fuse(h, b, hb).vectorize(d, vw);
    if (s.parallel) st.out.parallel(hb);
    st.merged_acc.compute_at(st.out, hb).vectorize(d, vw);
    st.merged_acc.update().vectorize(d, vw);
    for (Func f : {st.max_score, st.sum}) f.compute_root();
    (void)t;
}

void apply_cpu(const SketchCpuSchedule &s, const SketchConfig &cfg, SketchStages &st) {
    check_point(s, cfg);
    Var sv = st.s, h = st.h, n = st.n;
    Var hn("hn");
    for (Func f : {st.scale, st.codes}) {
        f.compute_root().fuse(h, n, hn).vectorize(sv, std::min(16, cfg.page_size), TailStrategy::GuardWithIf);
        if (s.parallel) f.parallel(hn);
    }
    st.absmax.compute_at(st.scale, hn);
}

void apply_cpu(const SummaryCpuSchedule &s, const SummaryConfig &cfg, SummaryStages &st) {
    check_point(s, cfg);
    Var d = st.d, c = st.c, h = st.h, n = st.n;
    Var hn("hn");
    // Per-channel sums and extremes once per (head, page); the summary rows and the
    // page scalars read them.
    for (Func f : {st.key_sum, st.key_min, st.key_max}) {
        f.compute_root().fuse(h, n, hn).vectorize(d, s.vector_width);
        f.update().fuse(h, n, hn).vectorize(d, s.vector_width);
        if (s.parallel) {
            f.parallel(hn);
            f.update().parallel(hn);
        }
    }
    st.summary.compute_root().reorder(d, c, h, n).fuse(h, n, hn).vectorize(d, s.vector_width);
    if (s.parallel) st.summary.parallel(hn);
    st.value_norm.compute_root();
    st.value_norm_sq.compute_at(st.value_norm, st.value_norm.args()[1]);
    st.key_absmax.compute_root();
    (void)c;
}

}  // namespace vashista
