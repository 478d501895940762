// The GeneratorParams that compile a config, for in-process users of the Generators (the
// JIT path and the tuner's builder). Written in generators.cpp beside the Generators'
// declarations of those parameters, so the Generators stay the one statement of each
// kernel's parameters, inputs and outputs.
#pragma once

#include "algorithm.h"

#include <map>
#include <string>
#include <vector>

namespace vashista {

using GeneratorParams = std::map<std::string, std::string>;

// The registered names: vashista_decode, vashista_dense, vashista_summarize, vashista_sketch.
std::vector<std::string> generator_names();

// Dense's split_pages is not among them: the dense Generator takes it from its schedule.
GeneratorParams generator_params(const DecodeConfig &c);
GeneratorParams generator_params(const DenseConfig &c);
GeneratorParams generator_params(const SummaryConfig &c);
GeneratorParams generator_params(const SketchConfig &c);

}  // namespace vashista
