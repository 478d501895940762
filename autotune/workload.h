// A tuning workload: what is compiled (generator and its parameters), for which target,
// and the context length it is measured at. Plain data, no compiler.
#pragma once

#include "problem.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace vashista::tune {

using nlohmann::json;

struct Workload {
    std::string generator = "decode";  // decode | dense
    std::string target = "host";       // Halide target string
    int head_dim = 128, page_size = 16, top_pages = 64, top_tokens = 128, group_size = 4;
    int kv_heads = 8, batch = 1;
    std::string kv_type = "bfloat16", summary_type = "bfloat16", layout = "HND";
    std::string solver = "softmax", routing = "bound", group_routing = "per_head";
    int sketch_bits = kSketchBitsDefault, sketch_group = kSketchGroupDefault;  // sketch routing's sketch
    int super_pages = kSuperPagesDefault, super_expand = kSuperExpandDefault;  // hier_bound's R and Q
    int sink_pages = 0, local_pages = 0;                                       // always routed
    int solver_steps = kSolverStepsDefault;
    float solver_eta = kSolverEtaDefault, solver_tau = kSolverTauDefault;
    int tokens = 32768;  // the T bucket measured

    bool sketch() const { return generator == "decode" && routing == "sketch"; }
    bool hier() const { return generator == "decode" && routing == "hier_bound"; }
    std::string key() const;  // canonical, stable across runs
    json to_json() const;
    static Workload from_json(const json &j);
    // The synthetic problem the runner measures and checks on.
    ref::ProblemSpec problem_spec() const;
};

// The default workloads: the CPU demo shape at T = 8K, 32K and 128K.
std::vector<Workload> default_workloads(const std::string &target);

// "i/n": keep workloads whose index modulo n is i (0-based).
std::vector<Workload> shard(const std::vector<Workload> &all, const std::string &spec);

}  // namespace vashista::tune
