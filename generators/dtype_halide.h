// The Halide element type of each DType, for code that holds Halide buffers without the
// compiler (the runtime, the tuner's runner) as well as for the definitions.
#pragma once

#include "HalideRuntime.h"
#include "method_types.h"

namespace vashista {

inline halide_type_t halide_runtime_type(DType t) {
    return t == DType::F32    ? halide_type_t(halide_type_float, 32)
           : t == DType::F16  ? halide_type_t(halide_type_float, 16)
           : t == DType::BF16 ? halide_type_t(halide_type_bfloat, 16)
                              : halide_type_t(halide_type_int, 8);
}

}  // namespace vashista
