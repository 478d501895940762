#include "attention_task.h"

#include <algorithm>
#include <cmath>

namespace vashista::tune {

AttentionInstance::AttentionInstance(const Workload &w) : w_(w) {
    problem_ = ref::make_problem(w.problem_spec());
    ref::Summaries summaries =
        ref::summarize(problem_.cache, problem_.seqs, parse_dtype(w.summary_type), w.sketch_bits, w.sketch_group);
    if (w.hier()) ref::add_super_pages(summaries, problem_.seqs, w.super_pages);
    in_ = problem_buffers(problem_, summaries, parse_dtype(w.summary_type));
    scale_ = float(ref::default_scale(w.head_dim));
    const int G = w.group_size, H = w.kv_heads, B = w.batch;
    out_ = Halide::Runtime::Buffer<float>(w.head_dim, G, H, B);
    lse_ = Halide::Runtime::Buffer<float>(G, H, B);
    diag_ = Halide::Runtime::Buffer<float>(kDiagFields, G, H, B);
    candidates_ = Halide::Runtime::Buffer<int32_t>(w.top_tokens, G, H, B);
    pages_ = Halide::Runtime::Buffer<int32_t>(w.top_pages, G, H, B);
    ref::SparseOptions opt;
    opt.top_pages = w.top_pages;
    opt.top_tokens = w.top_tokens;
    opt.solver = parse_solver(w.solver);
    opt.routing = parse_routing(w.routing);
    opt.group_routing = parse_group_routing(w.group_routing);
    opt.sketch_bits = w.sketch_bits;
    opt.sketch_group = w.sketch_group;
    opt.super_pages = w.super_pages;
    opt.super_expand = w.super_expand;
    opt.sink_pages = w.sink_pages;
    opt.local_pages = w.local_pages;
    opt.solver_steps = w.solver_steps;
    opt.solver_eta = w.solver_eta;
    opt.solver_tau = w.solver_tau;
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int g = 0; g < G; ++g) {
                if (w.generator == "decode")
                    sparse_.push_back(
                        ref::sparse_head(problem_.cache, problem_.seqs, problem_.q, summaries, opt, b, h, g));
                else
                    dense_.push_back(ref::dense_head(problem_.cache, problem_.seqs, problem_.q, 0.0, b, h, g));
            }
}

void AttentionInstance::bind(runtime::KernelCall &call) {
    call.buffer("q", in_.q.raw_buffer())
        .buffer("k_cache", in_.k_cache.raw_buffer())
        .buffer("v_cache", in_.v_cache.raw_buffer())
        .buffer("page_table", in_.page_table.raw_buffer())
        .buffer("seq_lens", in_.seq_lens.raw_buffer())
        .scalar("scale", scale_)
        .buffer("out", out_.raw_buffer())
        .buffer("lse", lse_.raw_buffer());
    if (w_.generator != "decode") return;
    call.buffer("route_pages", in_.route_pages.raw_buffer())
        .buffer("route_rank", in_.route_rank.raw_buffer())
        .buffer("summary", in_.summary.raw_buffer())
        .buffer("value_norm", in_.value_norm.raw_buffer())
        .buffer("key_absmax", in_.key_absmax.raw_buffer())
        .buffer("summary_scale", in_.summary_scale.raw_buffer())
        .buffer("sketch", in_.sketch.raw_buffer())
        .buffer("sketch_scale", in_.sketch_scale.raw_buffer())
        .buffer("super_summary", in_.super_summary.raw_buffer())
        .buffer("super_table", in_.super_table.raw_buffer())
        .buffer("diag", diag_.raw_buffer())
        .buffer("candidates", candidates_.raw_buffer())
        .buffer("pages", pages_.raw_buffer());
}

// Exact candidate sets and outputs within 1e-4 (values are O(1)).
TaskInstance::Check AttentionInstance::check() const {
    Check c;
    int mismatches = 0, head = 0;
    for (int b = 0; b < w_.batch; ++b)
        for (int h = 0; h < w_.kv_heads; ++h)
            for (int g = 0; g < w_.group_size; ++g, ++head) {
                const bool decode = w_.generator == "decode";
                const std::vector<double> &want = decode ? sparse_[head].out : dense_[head].out;
                for (int d = 0; d < w_.head_dim; ++d)
                    c.max_abs_err = std::max(c.max_abs_err, std::abs(double(out_(d, g, h, b)) - want[d]));
                if (!decode) continue;
                const auto &cand = sparse_[head].candidates;
                for (int i = 0; i < w_.top_tokens; ++i)
                    if (candidates_(i, g, h, b) != (i < int(cand.size()) ? cand[i] : -1)) ++mismatches;
            }
    c.ok = mismatches == 0 && c.max_abs_err <= 1e-4;
    if (!c.ok)
        c.error = std::to_string(mismatches) +
                  " candidates differ from the reference; max |out - ref| = " + std::to_string(c.max_abs_err);
    return c;
}

}  // namespace vashista::tune
