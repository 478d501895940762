// Calls a compiled kernel through its argv entry point with its arguments bound by name,
// each checked against the metadata the kernel was compiled with (kind, dimensions and
// element type). The Generator's Inputs and Outputs are then the one statement of a
// kernel's interface: no caller declares its argument list or order again.
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
    void *user_context_ = nullptr;
    std::string error_;
};

}  // namespace vashista::runtime
