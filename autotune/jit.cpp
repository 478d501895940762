#include "jit.h"

namespace vashista {

using Halide::Buffer;
using Halide::Float;
using Halide::ImageParam;
using Halide::Int;

DecodeJit::DecodeJit(const DecodeConfig &c)
    : cfg(c),
      q(Float(32), 4, "q"),
      k_cache(c.kv_type, 4, "k_cache"),
      v_cache(c.kv_type, 4, "v_cache"),
      page_table(Int(32), 2, "page_table"),
      seq_lens(Int(32), 1, "seq_lens"),
      summary(c.summary_type, 6, "summary"),
      value_norm(Float(32), 3, "value_norm"),
      key_absmax(Float(32), 3, "key_absmax"),
      sketch(Halide::UInt(8), 5, "sketch"),
      sketch_scale(Halide::BFloat(16), 5, "sketch_scale") {
    require_dense_sketch_rows(sketch, cfg.page_size);
    DecodeInputs in{q,
                    k_cache,
                    v_cache,
                    page_table,
                    seq_lens,
                    summary,
                    value_norm,
                    key_absmax,
                    sketch,
                    sketch_scale,
                    scale,
                    page_table.dim(0).extent(),
                    k_cache.dim(3).extent()};
    stages = define_decode(cfg, in);
    pipeline = Halide::Pipeline(stages.outputs());
}

void DecodeJit::compile(const Halide::Target &target) { pipeline.compile_jit(decode_target(target)); }

void DecodeBuffers::allocate_outputs(const DecodeConfig &cfg) {
    const int G = q.dim(1).extent(), H = q.dim(2).extent(), B = q.dim(3).extent();
    out = Buffer<float>(cfg.head_dim, G, H, B);
    lse = Buffer<float>(G, H, B);
    diag = Buffer<float>(kDiagFields, G, H, B);
    candidates = Buffer<int32_t>(cfg.top_tokens, G, H, B);
    pages = Buffer<int32_t>(cfg.top_pages, G, H, B);
}

void run(DecodeJit &jit, DecodeBuffers &buf) {
    jit.q.set(buf.q);
    jit.k_cache.set(buf.k_cache);
    jit.v_cache.set(buf.v_cache);
    jit.page_table.set(buf.page_table);
    jit.seq_lens.set(buf.seq_lens);
    jit.summary.set(buf.summary);
    jit.value_norm.set(buf.value_norm);
    jit.key_absmax.set(buf.key_absmax);
    if (jit.cfg.routing == RoutingMode::Sketch) {
        jit.sketch.set(buf.sketch);
        jit.sketch_scale.set(buf.sketch_scale);
    }
    jit.scale.set(buf.scale);
    jit.pipeline.realize(Halide::Realization({buf.out, buf.lse, buf.diag, buf.candidates, buf.pages}));
}

DenseJit::DenseJit(const DenseConfig &c)
    : cfg(c),
      q(Float(32), 4, "q"),
      k_cache(c.kv_type, 4, "k_cache"),
      v_cache(c.kv_type, 4, "v_cache"),
      page_table(Int(32), 2, "page_table"),
      seq_lens(Int(32), 1, "seq_lens") {
    DenseInputs in{
        q, k_cache, v_cache, page_table, seq_lens, scale, page_table.dim(0).extent(), k_cache.dim(3).extent()};
    stages = define_dense(cfg, in);
    pipeline = Halide::Pipeline({stages.out, stages.lse});
}

void DenseJit::compile(const Halide::Target &target) { pipeline.compile_jit(target); }

void DenseJit::run(const DecodeBuffers &in, Buffer<float> &out, Buffer<float> &lse) {
    q.set(in.q);
    k_cache.set(in.k_cache);
    v_cache.set(in.v_cache);
    page_table.set(in.page_table);
    seq_lens.set(in.seq_lens);
    scale.set(in.scale);
    pipeline.realize(Halide::Realization({out, lse}));
}

SketchJit::SketchJit(const SketchConfig &c)
    : cfg(c),
      k_cache(c.kv_type, 4, "k_cache"),
      page_table(Int(32), 2, "page_table"),
      seq_lens(Int(32), 1, "seq_lens"),
      touched(Int(32), 2, "touched") {
    SummaryInputs in{k_cache,
                     Halide::Func(),
                     page_table,
                     seq_lens,
                     touched,
                     page_table.dim(0).extent(),
                     k_cache.dim(3).extent(),
                     page_table.dim(1).extent()};
    stages = define_sketch(cfg, in);
    apply_cpu(hand_schedule(cfg), cfg, stages);
    pipeline = Halide::Pipeline({stages.codes, stages.scale});
}

void SketchJit::compile(const Halide::Target &target) { pipeline.compile_jit(target); }

SummaryJit::SummaryJit(const SummaryConfig &c)
    : cfg(c),
      k_cache(c.kv_type, 4, "k_cache"),
      v_cache(c.kv_type, 4, "v_cache"),
      page_table(Int(32), 2, "page_table"),
      seq_lens(Int(32), 1, "seq_lens"),
      touched(Int(32), 2, "touched") {
    SummaryInputs in{k_cache,
                     v_cache,
                     page_table,
                     seq_lens,
                     touched,
                     page_table.dim(0).extent(),
                     k_cache.dim(3).extent(),
                     page_table.dim(1).extent()};
    stages = define_summary(cfg, in);
    pipeline = Halide::Pipeline({stages.summary, stages.value_norm, stages.key_absmax});
}

void SummaryJit::compile(const Halide::Target &target) { pipeline.compile_jit(target); }

}  // namespace vashista
