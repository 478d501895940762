// Builder: compiles one candidate (a Generator with its GeneratorParams, the schedule among
// them, or an autoscheduler) into a shared object, in a child process with a time limit,
// through the same Halide entry point as the generator executable. A candidate that fails
// or runs out of time is reported, never fatal. It knows nothing of what it compiles.
#pragma once

#include "task.h"

#include <map>
#include <string>

namespace vashista::tune {

struct BuildRequest {
    std::string generator;                      // registered Generator name
    std::map<std::string, std::string> params;  // its GeneratorParams
    std::string target;                         // Halide target ("host..." allowed)
    std::string autoscheduler;                  // "", "Mullapudi2016", "Adams2019" or "Li2018"
    std::string dir;                            // where the object and shared library go
    std::string name;                           // the function name (and file stem)
    double timeout_s = 300;
};

// A request for a task's kernel at a schedule point.
BuildRequest build_request(const Task &task, const json &point, const std::string &autoscheduler,
                           const std::string &dir, const std::string &name, double timeout_s);

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

// "host" becomes this machine's target string.
std::string resolve_target(const std::string &target);
std::string halide_version();

}  // namespace vashista::tune
