// Builder: compiles one candidate (a workload and a schedule, or an autoscheduler) from
// the generators' definitions into a shared object, in a child process with a time
// limit. A candidate that fails or runs out of time is reported, never fatal.
#pragma once

#include "strategy.h"
#include "workload.h"

#include <string>

namespace vashista::tune {

struct BuildRequest {
    Workload workload;
    json schedule;              // a point of the workload's space; ignored with an autoscheduler
    std::string autoscheduler;  // "", "Mullapudi2016", "Adams2019" or "Li2018"
    std::string dir;            // where the object and shared library go
    std::string name;           // the function name (and file stem)
    double timeout_s = 300;
};

struct BuildResult {
    std::string status = "build_failed";  // ok | build_failed | timeout
    std::string error;
    std::string library, function;
    double seconds = 0;
};

BuildResult build_candidate(const BuildRequest &request);

// The Halide runtime as a shared library for `target`, built once into `dir`;
// candidates are compiled without a runtime and resolve it from here.
std::string build_runtime(const std::string &dir, const std::string &target);

// The space of schedules for a workload, and the hand schedule's point in it.
SearchSpace search_space(const Workload &w);
json hand_point(const Workload &w);

// "host" becomes this machine's target string.
std::string resolve_target(const std::string &target);
std::string halide_version();

}  // namespace vashista::tune
