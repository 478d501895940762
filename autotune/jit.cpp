#include "jit.h"

#include <stdexcept>

namespace vashista {

using Halide::Internal::AbstractGenerator;
using Halide::Internal::ArgInfoDirection;
using Halide::Internal::ArgInfoKind;

GeneratorJit::GeneratorJit(const std::string &generator, const GeneratorParams &params, const Halide::Target &target)
    : name_(generator) {
    generator_ = Halide::Internal::GeneratorRegistry::create(generator, Halide::GeneratorContext(target));
    if (!generator_) {
        std::string names;
        for (const auto &n : generator_names()) names += (names.empty() ? "" : ", ") + n;
        throw std::invalid_argument("no Generator named '" + generator + "' (there are: " + names + ")");
    }
    generator_->set_generatorparam_values(params);
    pipeline_ = generator_->build_pipeline();
    args_ = generator_->arginfos();
    pipeline_.compile_jit(target);
}

const AbstractGenerator::ArgInfo &GeneratorJit::arg(const std::string &name) const {
    for (const auto &a : args_)
        if (a.name == name) return a;
    throw std::invalid_argument("Generator " + name_ + " has no argument '" + name + "'");
}

GeneratorJit &GeneratorJit::buffer(const std::string &name, const Halide::Buffer<> &b) {
    const auto &a = arg(name);
    const Halide::Type t = a.kind == ArgInfoKind::Buffer ? a.types.at(0) : Halide::Type();
    // A Generator may take 16-bit floats as their bits (Float16Repr): the same memory, typed so.
    const bool as_bits = t == Halide::UInt(16) && b.type().is_float() && b.type().bits() == 16;
    if (a.kind != ArgInfoKind::Buffer || a.dimensions != b.dimensions() || (t != b.type() && !as_bits))
        throw std::invalid_argument("Generator " + name_ + " argument '" + name + "' is not a " +
                                    std::to_string(b.dimensions()) + "-dimensional buffer of this type");
    Halide::Buffer<> bound = b;
    views_.erase(name);  // a rebound argument drops its old view
    if (as_bits) {
        halide_buffer_t raw = *b.raw_buffer();
        raw.type = t;
        bound = Halide::Buffer<>(Halide::Runtime::Buffer<void>(raw));  // a view: `b` owns the memory
        views_[name] = {b, bound};
    }
    if (a.dir == ArgInfoDirection::Output)
        outputs_[name] = bound;
    else {
        inputs_[name] = bound;
        generator_->input_parameter(name).at(0).set_buffer(bound);
    }
    return *this;
}

GeneratorJit &GeneratorJit::scalar(const std::string &name, float value) {
    const auto &a = arg(name);
    if (a.kind != ArgInfoKind::Scalar || a.types.at(0) != Halide::Float(32))
        throw std::invalid_argument("Generator " + name_ + " argument '" + name + "' is not a float scalar");
    generator_->input_parameter(name).at(0).set_scalar<float>(value);
    return *this;
}

void GeneratorJit::run() {
    std::vector<Halide::Buffer<>> outs;
    for (const auto &a : args_) {
        if (a.dir != ArgInfoDirection::Output) continue;
        auto it = outputs_.find(a.name);
        if (it == outputs_.end())
            throw std::invalid_argument("Generator " + name_ + " output '" + a.name + "' has no buffer bound");
        outs.push_back(it->second);
    }
    // The host data is the input: a GPU target copies it to the device only when the buffer
    // says its host side changed (callers write through raw pointers).
    for (auto &[name, b] : inputs_) b.set_host_dirty();
    pipeline_.realize(Halide::Realization(outs));
    for (auto &b : outs) b.copy_to_host();                        // a GPU target leaves its outputs on the device
    for (auto &[name, view] : views_) view.second.device_free();  // views own no memory, device memory included
}

GeneratorParams decode_params(const DecodeConfig &cfg, const DecodeCpuSchedule *schedule) {
    GeneratorParams p = generator_params(cfg);
    p["schedule"] = schedule_to_json(schedule ? *schedule : hand_schedule(cfg)).dump();
    return p;
}

}  // namespace vashista
