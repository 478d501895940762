// The JIT path: a Generator of generators.cpp, created through Halide's generator registry
// with its GeneratorParams and compiled in-process. Arguments are bound by the names the
// Generator declares, as they are for the AOT kernels (runtime/kernel_call.h), so the
// libraries, the tuner and the tests share one statement of each kernel's interface.
#pragma once

#include "generator_params.h"
#include "schedule.h"

#include <map>
#include <string>
#include <vector>

namespace vashista {

class GeneratorJit {
public:
    // `generator`: one of generator_names(). Decode kernels need decode_target(target).
    GeneratorJit(const std::string &generator, const GeneratorParams &params, const Halide::Target &target);
    // An input or output buffer, by its name in the Generator; outputs are written by run(),
    // on a GPU target copied back to `b`'s host memory.
    GeneratorJit &buffer(const std::string &name, const Halide::Buffer<> &b);
    GeneratorJit &scalar(const std::string &name, float value);
    // Realizes every output into the buffer bound to it.
    void run();

private:
    const Halide::Internal::AbstractGenerator::ArgInfo &arg(const std::string &name) const;

    std::string name_;
    Halide::Internal::AbstractGeneratorPtr generator_;
    Halide::Pipeline pipeline_;
    std::vector<Halide::Internal::AbstractGenerator::ArgInfo> args_;
    std::map<std::string, Halide::Buffer<>> inputs_, outputs_;
    std::map<std::string, std::pair<Halide::Buffer<>, Halide::Buffer<>>> views_;  // name -> {owner, its bits}
};

// The parameters of a decode kernel with `schedule` (the hand schedule when null).
GeneratorParams decode_params(const DecodeConfig &cfg, const DecodeCpuSchedule *schedule = nullptr);

}  // namespace vashista
