// Calls a compiled kernel through its argv entry point with its arguments bound by name,
// each checked against the metadata the kernel was compiled with (kind, dimensions and
// element type). The Generator's Inputs and Outputs are then the one statement of a
// kernel's interface: no caller declares its argument list or order again.
//
// A kernel compiled for a GPU target (its metadata's target names cuda, opencl, metal,
// vulkan, d3d12compute or webgpu) runs on the host memory it is given: each call copies its
// inputs to the device, its outputs back, and frees the device copies. A 16-bit float
// buffer binds to a uint16 argument of such a kernel (a device language without 16-bit
// floats takes their bits: Float16Repr in generators/algorithm.h).
#pragma once

#include "HalideRuntime.h"

#include <string>

namespace vashista::runtime {

using KernelArgv = int (*)(void **);
using KernelMetadata = const halide_filter_metadata_t *(*)();

// A compiled kernel: a name for messages, its argv entry point and its metadata
// (the `<name>_argv` and `<name>_metadata` functions of a Halide AOT object).
struct Kernel {
    const char *name = nullptr;
    KernelArgv argv = nullptr;
    KernelMetadata metadata = nullptr;
};

// The GPU API a kernel was compiled for ("cuda", "opencl", ...; from its metadata's
// target), or nullptr for a CPU kernel.
const char *device_api(const Kernel &kernel);

class KernelCall {
public:
    static constexpr int kMaxArgs = 32;
    // Returned by run() when an argument is missing or does not match the metadata.
    static constexpr int kBindError = -1000;

    explicit KernelCall(const Kernel &kernel);
    // An input or output buffer of the kernel, by its Generator name.
    KernelCall &buffer(const char *name, halide_buffer_t *b);
    // A float scalar input.
    KernelCall &scalar(const char *name, float value);
    // What the kernel passes to halide_malloc and halide_do_par_for (kernels compiled with
    // Halide's user_context feature; ignored by others). Null unless set.
    KernelCall &user_context(void *context);
    // The first mismatch between the arguments bound and the metadata, "" when none.
    const std::string &error() const { return error_; }
    // Calls the kernel (Halide's return code), or kBindError without calling it.
    int run();

private:
    int find(const char *name, int kind, int dimensions, halide_type_t type);
    void fail(const std::string &message);

    Kernel kernel_;
    const halide_filter_metadata_t *md_ = nullptr;
    void *args_[kMaxArgs] = {};
    float scalars_[kMaxArgs] = {};
    bool bound_[kMaxArgs] = {};
    halide_buffer_t views_[kMaxArgs] = {};  // 16-bit float buffers retyped as their bits
    bool device_ = false;
    void *user_context_ = nullptr;
    std::string error_;
};

}  // namespace vashista::runtime
