// The JIT path: compiles the generators' definitions in-process with any schedule.
// The tuner's builder and the tests use it; AOT generators compile the same Funcs.
#pragma once

#include "algorithm.h"
#include "schedule.h"

namespace vashista {

struct DecodeJit {
    DecodeConfig cfg;
    Halide::ImageParam q, k_cache, v_cache, page_table, seq_lens, summary, value_norm, key_absmax;
    Halide::ImageParam sketch, sketch_scale;  // read in sketch routing only
    Halide::Param<float> scale{"scale"};
    DecodeStages stages;
    Halide::Pipeline pipeline;
    explicit DecodeJit(const DecodeConfig &cfg);
    void schedule(const DecodeCpuSchedule &s) { apply_cpu(s, cfg, stages); }
    void compile(const Halide::Target &target);
};

struct DecodeBuffers {
    Halide::Buffer<float> q;                       // (d, g, h, b)
    Halide::Buffer<> k_cache, v_cache;             // 4-D per layout
    Halide::Buffer<int32_t> page_table, seq_lens;  // (j, b), (b)
    Halide::Buffer<> summary;                      // (lane, d, c, blk, h, b)
    Halide::Buffer<float> value_norm, key_absmax;  // (j, h, b)
    Halide::Buffer<uint8_t> sketch;                // (s, byte, j, h, b)
    Halide::Buffer<> sketch_scale;                 // (s, group, j, h, b) bf16
    float scale = 0;
    Halide::Buffer<float> out, lse, diag;       // (d,g,h,b), (g,h,b), (k,g,h,b)
    Halide::Buffer<int32_t> candidates, pages;  // (c,g,h,b), (i,g,h,b)
    // Allocates the outputs for `cfg` and the shape of q.
    void allocate_outputs(const DecodeConfig &cfg);
};

void run(DecodeJit &jit, DecodeBuffers &buf);

struct DenseJit {
    DenseConfig cfg;
    Halide::ImageParam q, k_cache, v_cache, page_table, seq_lens;
    Halide::Param<float> scale{"scale"};
    DenseStages stages;
    Halide::Pipeline pipeline;
    explicit DenseJit(const DenseConfig &cfg);
    void schedule(const DenseCpuSchedule &s) { apply_cpu(s, cfg, stages); }
    void compile(const Halide::Target &target);
    // Writes out (d,g,h,b) and lse (g,h,b).
    void run(const DecodeBuffers &in, Halide::Buffer<float> &out, Halide::Buffer<float> &lse);
};

struct SketchJit {
    SketchConfig cfg;
    Halide::ImageParam k_cache, page_table, seq_lens, touched;
    SketchStages stages;
    Halide::Pipeline pipeline;
    explicit SketchJit(const SketchConfig &cfg);
    void compile(const Halide::Target &target);
};

struct SummaryJit {
    SummaryConfig cfg;
    Halide::ImageParam k_cache, v_cache, page_table, seq_lens, touched;
    SummaryStages stages;
    Halide::Pipeline pipeline;
    explicit SummaryJit(const SummaryConfig &cfg);
    void schedule(const SummaryCpuSchedule &s) { apply_cpu(s, cfg, stages); }
    void compile(const Halide::Target &target);
};

}  // namespace vashista
