// Halide buffers of a reference problem, in the layouts the kernels read.
#pragma once

#include "jit.h"
#include "problem.h"

namespace vashista::test {

// Inputs for a decode step; summaries come from the reference rounded to
// cfg.summary_type, so routing sees exactly the values the reference uses.
DecodeBuffers decode_buffers(const ref::Problem &p, const DecodeConfig &cfg, const ref::Summaries &sum, double scale);

}  // namespace vashista::test
