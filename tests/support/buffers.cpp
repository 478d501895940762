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
    buf.summary = Halide::Buffer<>(std::move(pb.summary));
    buf.value_norm = Halide::Buffer<float>(std::move(pb.value_norm));
    buf.key_absmax = Halide::Buffer<float>(std::move(pb.key_absmax));
    buf.sketch = Halide::Buffer<uint8_t>(std::move(pb.sketch));
    buf.sketch_scale = Halide::Buffer<>(std::move(pb.sketch_scale));
    buf.scale = float(scale);
    buf.allocate_outputs(cfg);
    return buf;
}

}  // namespace vashista::test
