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

const char *device_api(const Kernel &kernel) {
    const halide_filter_metadata_t *md = kernel.metadata ? kernel.metadata() : nullptr;
    if (!md || !md->target) return nullptr;
    // Target features are '-'-separated; the GPU APIs Halide generates code for.
    for (const char *api : {"cuda", "opencl", "metal", "vulkan", "d3d12compute", "webgpu"})
        if (std::strstr(md->target, (std::string("-") + api).c_str())) return api;
    return nullptr;
}

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
    device_ = device_api(kernel) != nullptr;
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
        const bool as_bits = device_ && a.type == halide_type_t(halide_type_uint, 16) && type.bits == 16 &&
                             (type.code == halide_type_float || type.code == halide_type_bfloat);
        if (a.dimensions != dimensions || !(a.type == type || as_bits)) {
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
        if (!(md_->arguments[i].type == b->type)) {
            views_[i] = *b;
            views_[i].type = md_->arguments[i].type;
            args_[i] = &views_[i];
        }
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
    if (!device_) return kernel_.argv(args_);
    // On a GPU: the inputs' host memory is the truth (copied in), the outputs come back.
    // (The user context is a scalar argument.)
    auto buffer_at = [&](int i) -> halide_buffer_t * {
        return md_->arguments[i].kind == halide_argument_kind_input_scalar ? nullptr
                                                                           : static_cast<halide_buffer_t *>(args_[i]);
    };
    for (int i = 0; i < md_->num_arguments; ++i)
        if (halide_buffer_t *b = buffer_at(i); b && md_->arguments[i].kind == halide_argument_kind_input_buffer)
            b->flags |= halide_buffer_flag_host_dirty;
    int result = kernel_.argv(args_);
    // Through each buffer's device interface (the kernel's own runtime: a program that loads
    // kernels as shared objects links no Halide runtime of its own).
    for (int i = 0; i < md_->num_arguments; ++i) {
        halide_buffer_t *b = buffer_at(i);
        if (!b || !b->device || !b->device_interface) continue;
        if (result == 0 && md_->arguments[i].kind == halide_argument_kind_output_buffer &&
            (b->flags & halide_buffer_flag_device_dirty))
            result = b->device_interface->copy_to_host(user_context_, b);
        const int freed = b->device_interface->device_free(user_context_, b);
        if (result == 0) result = freed;
    }
    return result;
}

}  // namespace vashista::runtime
