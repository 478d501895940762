// GPU schedules. Blocks take independent work (a flash-decoding chunk of one KV head of one
// sequence; a few touched pages of one KV head), threads the dimension whose loads are
// contiguous (D for values and summaries, tokens for key scores), and a block's
// intermediates live in shared memory. Reductions over tokens run serially per thread.
#include "schedule.h"

#include <stdexcept>

namespace vashista {

using Halide::RVar;
using Halide::TailStrategy;

const Space<DecodeGpuSchedule, DecodeConfig> &DecodeGpuSchedule::space() {
    static const Space<DecodeGpuSchedule, DecodeConfig> s{
        {
            {"threads", {32, 64, 128, 256}, &DecodeGpuSchedule::threads},
            {"digit_bits", {1, 2, 4}, &DecodeGpuSchedule::digit_bits},
        },
        [](const DecodeGpuSchedule &, const DecodeConfig &) -> std::string { return ""; }};
    return s;
}

const Space<DenseGpuSchedule, DenseConfig> &DenseGpuSchedule::space() {
    static const Space<DenseGpuSchedule, DenseConfig> s{
        {
            {"split_pages", {4, 8, 16, 32, 64}, &DenseGpuSchedule::split_pages},
            {"d_vector", {1, 2, 4}, &DenseGpuSchedule::d_vector},
            {"group_threads", {0, 1}, &DenseGpuSchedule::group_threads},
        },
        [](const DenseGpuSchedule &s, const DenseConfig &cfg) -> std::string {
            std::string e = divides("d_vector", s.d_vector, "head_dim", cfg.head_dim);
            // A block's threads: tokens of its chunk (key scores), D + 2 (its state), times
            // the group when the group is a thread dimension.
            const int threads =
                std::max(s.split_pages * cfg.page_size, cfg.head_dim + 2) * (s.group_threads ? cfg.group_size : 1);
            if (e.empty() && threads > 1024) e = "a block of " + std::to_string(threads) + " threads is more than 1024";
            return e;
        }};
    return s;
}

const Space<SummaryGpuSchedule, SummaryConfig> &SummaryGpuSchedule::space() {
    static const Space<SummaryGpuSchedule, SummaryConfig> s{
        {{"pages_per_block", {1, 2, 4, 8}, &SummaryGpuSchedule::pages_per_block}},
        [](const SummaryGpuSchedule &s, const SummaryConfig &cfg) -> std::string {
            const int threads = cfg.head_dim * s.pages_per_block;
            if (threads > 1024) return "a block of " + std::to_string(threads) + " threads is more than 1024";
            return "";
        }};
    return s;
}

const Space<SketchGpuSchedule, SketchConfig> &SketchGpuSchedule::space() {
    static const Space<SketchGpuSchedule, SketchConfig> s{
        {{"pages_per_block", {1, 2, 4, 8}, &SketchGpuSchedule::pages_per_block}},
        [](const SketchGpuSchedule &, const SketchConfig &) -> std::string { return ""; }};
    return s;
}

DecodeGpuSchedule hand_gpu_schedule(const DecodeConfig &) { return DecodeGpuSchedule{}; }

DenseGpuSchedule hand_gpu_schedule(const DenseConfig &cfg) {
    DenseGpuSchedule s;
    if (cfg.head_dim % s.d_vector != 0) s.d_vector = 1;
    return s;
}

SummaryGpuSchedule hand_gpu_schedule(const SummaryConfig &cfg) {
    SummaryGpuSchedule s;
    while (cfg.head_dim * s.pages_per_block > 1024 && s.pages_per_block > 1) s.pages_per_block /= 2;
    return s;
}

SketchGpuSchedule hand_gpu_schedule(const SketchConfig &) { return SketchGpuSchedule{}; }

namespace {

// Threads (`threads` per block) over the first argument of `f`'s stage `stage` (0: its pure
// definition, k: update k - 1) that the stage leaves free, the rest of the stage in loops
// inside each thread. Returns the thread variable.
Var threads_over_first_free(Func f, int stage, int threads) {
    const std::vector<Var> pure = f.args();
    std::vector<Expr> at(pure.begin(), pure.end());
    if (stage > 0) at = f.update_args(stage - 1);
    Halide::Stage st = stage == 0 ? Halide::Stage(f) : f.update(stage - 1);
    for (size_t j = 0; j < pure.size(); ++j) {
        const auto *v = at[j].as<Halide::Internal::Variable>();
        if (!v || v->name != pure[j].name()) continue;
        Var outer(pure[j].name() + "_o"), inner(pure[j].name() + "_t");
        st.split(pure[j], outer, inner, threads, TailStrategy::GuardWithIf).gpu_threads(inner);
        return inner;
    }
    throw std::logic_error("stage " + std::to_string(stage) + " of " + f.name() + " leaves no argument free");
}

}  // namespace

void apply_gpu(const DecodeGpuSchedule &s, const DecodeConfig &cfg, DecodeStages &st) {
    check_point(s, cfg);
    if (cfg.routing == RoutingMode::HierBound)
        throw std::invalid_argument("decode GPU schedule: hier_bound routing has no GPU schedule yet");
    if (s.digit_bits != cfg.top_k.digit_bits)
        throw std::invalid_argument("decode GPU schedule: digit_bits " + std::to_string(s.digit_bits) +
                                    " differs from the definition's " + std::to_string(cfg.top_k.digit_bits) +
                                    " (the Generator defines the top-k with the schedule's)");
    Var h = st.h, b = st.b;
    // One block per (KV head, sequence) runs its query heads' whole step; every stage is
    // computed in the block, threads over its first free dimension (pages, slots,
    // candidates, D; the query heads where a stage reduces over the rest), reductions in
    // order inside a thread, so results are the CPU kernel's up to f32 reassociation.
    Func rec = st.record;
    rec.compute_root().reorder(rec.args()[0], st.g, h, b).gpu_blocks(h, b);
    threads_over_first_free(rec, 0, s.threads);

    auto in_block = [&](Func f) {
        if (!f.defined()) return;
        f.compute_at(rec, h);
        for (int k = 0; k <= f.num_update_definitions(); ++k) threads_over_first_free(f, k, s.threads);
    };
    // The top-k: each counting pass over all threads (partial counts at every digit value
    // per thread, strided so neighbouring threads read neighbouring keys, then summed a
    // thread per digit value), a thread per word for the masks, and the compaction's writes
    // (distinct slots) a thread per index.
    auto top_k_in_block = [&](TopKStages &tk) {
        for (Func count : tk.count_at_least) {
            RVar r = count.rvars(0)[0], rt("rt");
            Func part = count.update().split(r, r, rt, s.threads, TailStrategy::GuardWithIf).rfactor(rt, Var("u"));
            in_block(count);
            in_block(part);
        }
        for (Func f : tk.threshold) in_block(f);
        in_block(tk.mask);
        in_block(tk.words_before);
        tk.index.compute_at(rec, h);
        threads_over_first_free(tk.index, 0, s.threads);
        RVar rk = tk.index.rvars(0)[0], rkt("rkt");
        tk.index.update()
            .allow_race_conditions()
            .split(rk, rk, rkt, s.threads, TailStrategy::GuardWithIf)
            .gpu_threads(rkt);
    };
    for (Func f : {st.q_step, st.q_code, st.q_group_weight, st.q_l1}) in_block(f);
    if (cfg.routing == RoutingMode::Sketch) {
        // The scan of every token's sketch: a thread per page, its tokens' scores in the thread.
        in_block(st.page_leak);
        const Var page_thread = Var(st.page_leak.args()[0].name() + "_t");
        st.sketch_token.compute_at(st.page_leak, page_thread);
    }
    in_block(st.head_page_score);
    in_block(st.route_score);
    in_block(st.route_key);
    top_k_in_block(st.route);
    in_block(st.token_score);
    in_block(st.slot_token);
    in_block(st.token_key);
    top_k_in_block(st.select);
    for (Func f : {st.cand_location, st.cand_dot, st.cand_score, st.max_score, st.weight, st.weight_sum, st.alpha})
        in_block(f);
    for (Func f : st.solver_steps) in_block(f);
    for (Func f : {st.out, st.out_norm, st.inside_stats, st.outside_stats}) in_block(f);
    // The outputs, views of the record: a block per sequence.
    for (Func f : st.outputs()) {
        f.compute_root();
        threads_over_first_free(f, 0, s.threads);
        f.gpu_blocks(b);
    }
}

void apply_gpu(const DenseGpuSchedule &s, const DenseConfig &cfg, DenseStages &st) {
    check_dense_point(s, cfg);
    Var d = st.d, t = st.t, g = st.g, h = st.h, b = st.b, ch = st.ch;
    const bool gt = s.group_threads;
    Func state = st.chunk_state;
    // One block per (chunk, KV head, sequence); threads over the state's D + 2 entries.
    Var x = state.args()[0];
    state.compute_root().reorder(x, g, ch, h, b).gpu_blocks(ch, h, b);
    if (gt)
        state.gpu_threads(x, g);
    else
        state.gpu_threads(x);

    // Key scores: a thread per token of the chunk; without group threads each key load
    // serves every head of the group.
    st.score.compute_at(state, ch);
    if (gt) {
        st.score.gpu_threads(t, g);
        st.score.update().gpu_threads(t, g);
    } else {
        st.score.reorder(g, t).gpu_threads(t);
        RVar rd = st.score.rvars(0)[0];
        st.score.update().reorder(g, rd, t).unroll(g).gpu_threads(t);
    }
    st.weight.compute_at(state, ch);
    if (gt)
        st.weight.gpu_threads(t, g);
    else
        st.weight.reorder(g, t).gpu_threads(t);
    for (Func f : {st.chunk_max, st.chunk_sum}) {
        f.compute_at(state, ch).gpu_threads(g);
        f.update().gpu_threads(g);
    }
    // The chunk's value sum: threads over D (d_vector consecutive elements each), the
    // chunk's tokens in order inside a thread.
    {
        Func acc = st.chunk_acc;
        Var dt("dt"), dv("dv");
        RVar rt = acc.rvars(0)[0];
        acc.compute_at(state, ch).split(d, dt, dv, s.d_vector).vectorize(dv);
        acc.update().split(d, dt, dv, s.d_vector).vectorize(dv);
        if (gt) {
            acc.reorder(dv, dt, g).gpu_threads(dt, g);
            acc.update().reorder(dv, rt, dt, g).gpu_threads(dt, g);
        } else {
            acc.reorder(dv, g, dt).gpu_threads(dt);
            acc.update().reorder(dv, g, rt, dt).unroll(g).gpu_threads(dt);
        }
    }

    // The merge over chunks: one block per (KV head, sequence).
    for (Func f : {st.max_score, st.sum}) {
        f.compute_root().gpu_blocks(h, b).gpu_threads(g);
        f.update().gpu_blocks(h, b).gpu_threads(g);
    }
    st.out.compute_root().reorder(d, g, h, b).gpu_blocks(h, b);
    if (gt)
        st.out.gpu_threads(d, g);
    else
        st.out.gpu_threads(d);
    st.merged_acc.compute_at(st.out, d);
    st.lse.compute_root().gpu_blocks(h, b).gpu_threads(g);
}

namespace {
// A per-page stage (first argument within a page, `h`, touched page `n`): blocks over
// (KV head, pages_per_block touched pages), threads over `inner` and the block's pages,
// the `serial` arguments loops inside each thread.
void per_page_blocks(Halide::Stage f, Var inner, Var h, Var n, int pages_per_block, std::vector<Var> serial = {}) {
    Var no("no"), ni("ni");
    f.split(n, no, ni, pages_per_block, TailStrategy::GuardWithIf);
    std::vector<Halide::VarOrRVar> order;
    for (Var v : serial) order.push_back(v);
    for (Var v : {inner, ni, h, no}) order.push_back(v);
    f.reorder(order).gpu_blocks(h, no).gpu_threads(inner, ni);
}
}  // namespace

void apply_gpu(const SummaryGpuSchedule &s, const SummaryConfig &cfg, SummaryStages &st) {
    check_point(s, cfg);
    Var d = st.d, c = st.c, h = st.h, n = st.n;
    const int ppb = s.pages_per_block;
    for (Func f : {st.key_sum, st.key_min, st.key_max}) {
        f.compute_root();
        per_page_blocks(f, d, h, n, ppb);
        per_page_blocks(f.update(), d, h, n, ppb);
    }
    st.summary.compute_root();
    per_page_blocks(st.summary, d, h, n, ppb, {c});
    st.scale.compute_root();
    per_page_blocks(st.scale, st.scale.args()[0], h, n, ppb);
    // Per-page scalars: a thread per (KV head, page).
    auto per_page_threads = [&](Halide::Stage f) {
        Var no("no"), ni("ni");
        f.split(n, no, ni, 64, TailStrategy::GuardWithIf).reorder(ni, h, no).gpu_blocks(h, no).gpu_threads(ni);
        return ni;
    };
    st.value_norm.compute_root();
    st.value_norm_sq.compute_at(st.value_norm, per_page_threads(st.value_norm));
    st.key_absmax.compute_root();
    per_page_threads(st.key_absmax);
    per_page_threads(st.key_absmax.update());
}

void apply_gpu(const SketchGpuSchedule &s, const SketchConfig &cfg, SketchStages &st) {
    check_point(s, cfg);
    Var sv = st.s, x = st.x, h = st.h, n = st.n;
    // Scales: threads over the pages' tokens; a token's groups in turn.
    st.scale.compute_root();
    per_page_blocks(st.scale, sv, h, n, s.pages_per_block, {x});
    // Codes: threads over tokens (stored innermost, so the writes are contiguous), a
    // token's bytes in turn.
    st.codes.compute_root();
    per_page_blocks(st.codes, sv, h, n, s.pages_per_block, {st.codes.args()[1]});
    (void)cfg;
}

}  // namespace vashista
