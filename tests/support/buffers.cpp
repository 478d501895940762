#include "buffers.h"

#include "problem_buffers.h"

#include <utility>

namespace vashista::test {

DecodeBuffers decode_buffers(const ref::Problem &p, const DecodeConfig &cfg, const ref::Summaries &sum, double scale) {
    ProblemBuffers pb = problem_buffers(p, sum, dtype_of(cfg.summary_type));
    DecodeBuffers buf;
    buf.q = Halide::Buffer<float>(std::move(pb.q));
    buf.k_cache = Halide::Buffer<>(std::move(pb.k_cache));
    buf.v_cache = Halide::Buffer<>(std::move(pb.v_cache));
    buf.page_table = Halide::Buffer<int32_t>(std::move(pb.page_table));
    buf.seq_lens = Halide::Buffer<int32_t>(std::move(pb.seq_lens));
    buf.route_pages = Halide::Buffer<int32_t>(std::move(pb.route_pages));
    buf.route_rank = Halide::Buffer<int32_t>(std::move(pb.route_rank));
    buf.summary = Halide::Buffer<>(std::move(pb.summary));
    buf.value_norm = Halide::Buffer<float>(std::move(pb.value_norm));
    buf.key_absmax = Halide::Buffer<float>(std::move(pb.key_absmax));
    buf.summary_scale = Halide::Buffer<>(std::move(pb.summary_scale));
    buf.sketch = Halide::Buffer<uint8_t>(std::move(pb.sketch));
    buf.sketch_scale = Halide::Buffer<>(std::move(pb.sketch_scale));
    buf.super_summary = Halide::Buffer<float>(std::move(pb.super_summary));
    buf.super_table = Halide::Buffer<int32_t>(std::move(pb.super_table));
    buf.scale = float(scale);
    const int G = buf.q.dim(1).extent(), H = buf.q.dim(2).extent(), B = buf.q.dim(3).extent();
    buf.out = Halide::Buffer<float>(cfg.head_dim, G, H, B);
    buf.lse = Halide::Buffer<float>(G, H, B);
    buf.diag = Halide::Buffer<float>(kDiagFields, G, H, B);
    buf.candidates = Halide::Buffer<int32_t>(cfg.top_tokens, G, H, B);
    buf.pages = Halide::Buffer<int32_t>(cfg.top_pages, G, H, B);
    return buf;
}

void run(GeneratorJit &decode, DecodeBuffers &buf) {
    decode.buffer("q", buf.q)
        .buffer("k_cache", buf.k_cache)
        .buffer("v_cache", buf.v_cache)
        .buffer("page_table", buf.page_table)
        .buffer("seq_lens", buf.seq_lens)
        .buffer("route_pages", buf.route_pages)
        .buffer("route_rank", buf.route_rank)
        .buffer("summary", buf.summary)
        .buffer("value_norm", buf.value_norm)
        .buffer("key_absmax", buf.key_absmax)
        .buffer("summary_scale", buf.summary_scale)
        .buffer("sketch", buf.sketch)
        .buffer("sketch_scale", buf.sketch_scale)
        .buffer("super_summary", buf.super_summary)
        .buffer("super_table", buf.super_table)
        .scalar("scale", buf.scale)
        .buffer("out", buf.out)
        .buffer("lse", buf.lse)
        .buffer("diag", buf.diag)
        .buffer("candidates", buf.candidates)
        .buffer("pages", buf.pages)
        .run();
}

}  // namespace vashista::test
