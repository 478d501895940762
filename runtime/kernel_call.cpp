#include "kernel_call.h"

#include <cstring>

namespace vashista::runtime {

namespace {

const char *kind_name(int kind) {
    switch (kind) {
        case halide_argument_kind_input_scalar:
            return "a scalar input";
        case halide_argument_kind_input_buffer:
            return "an input buffer";
        default:
            return "an output buffer";
    }
}

std::string type_name(halide_type_t t) {
    const char *code = t.code == halide_type_int      ? "int"
                       : t.code == halide_type_uint   ? "uint"
                       : t.code == halide_type_float  ? "float"
                       : t.code == halide_type_bfloat ? "bfloat"
                                                      : "handle";
    return code + std::to_string(t.bits) + (t.lanes > 1 ? "x" + std::to_string(t.lanes) : "");
}

}  // namespace

KernelCall::KernelCall(const Kernel &kernel) : kernel_(kernel) {
    if (!kernel.argv || !kernel.metadata) {
        fail("has no argv entry point or metadata");
        return;
    }
    md_ = kernel.metadata();
    if (!md_ || md_->num_arguments > kMaxArgs) {
        fail("has metadata with " + std::to_string(md_ ? md_->num_arguments : 0) + " arguments (at most " +
             std::to_string(kMaxArgs) + " are supported)");
        return;
    }
    // Halide names the user context argument of a kernel compiled with it "__user_context".
    for (int i = 0; i < md_->num_arguments; ++i)
        if (std::strcmp(md_->arguments[i].name, "__user_context") == 0) {
            args_[i] = &user_context_;
            bound_[i] = true;
        }
}

KernelCall &KernelCall::user_context(void *context) {
    user_context_ = context;
    return *this;
}

void KernelCall::fail(const std::string &message) {
    if (error_.empty()) error_ = std::string("kernel ") + (kernel_.name ? kernel_.name : "?") + " " + message;
}

int KernelCall::find(const char *name, int kind, int dimensions, halide_type_t type) {
    if (!md_ || !error_.empty()) return -1;
    for (int i = 0; i < md_->num_arguments; ++i) {
        const halide_filter_argument_t &a = md_->arguments[i];
        if (std::strcmp(a.name, name) != 0) continue;
        const bool is_buffer = a.kind != halide_argument_kind_input_scalar;
        if (is_buffer != (kind != halide_argument_kind_input_scalar)) {
            fail(std::string("takes '") + name + "' as " + kind_name(a.kind) + ", not " + kind_name(kind));
            return -1;
        }
        if (a.dimensions != dimensions || !(a.type == type)) {
            fail(std::string("takes '") + name + "' as " + type_name(a.type) + " with " + std::to_string(a.dimensions) +
                 " dimensions, not " + type_name(type) + " with " + std::to_string(dimensions));
            return -1;
        }
        return i;
    }
    std::string names;
    for (int i = 0; i < md_->num_arguments; ++i) names += std::string(i ? ", " : "") + md_->arguments[i].name;
    fail(std::string("has no argument '") + name + "' (its arguments: " + names + ")");
    return -1;
}

KernelCall &KernelCall::buffer(const char *name, halide_buffer_t *b) {
    if (!b) {
        fail(std::string("was given a null buffer for '") + name + "'");
        return *this;
    }
    const int i = find(name, halide_argument_kind_input_buffer, b->dimensions, b->type);
    if (i >= 0) {
        args_[i] = b;
        bound_[i] = true;
    }
    return *this;
}

KernelCall &KernelCall::scalar(const char *name, float value) {
    const int i = find(name, halide_argument_kind_input_scalar, 0, halide_type_t(halide_type_float, 32));
    if (i >= 0) {
        scalars_[i] = value;
        args_[i] = &scalars_[i];
        bound_[i] = true;
    }
    return *this;
}

int KernelCall::run() {
    if (md_ && error_.empty())
        for (int i = 0; i < md_->num_arguments; ++i)
            if (!bound_[i]) fail(std::string("was called without its argument '") + md_->arguments[i].name + "'");
    if (!error_.empty()) return kBindError;
    return kernel_.argv(args_);
}

}  // namespace vashista::runtime
