// What a tuning run tunes, as the tuner's generic parts see it (MetaSchedule's TuneContext):
// the Generator and GeneratorParams a schedule point compiles to, the schedule space and its
// hand point, and an instance (inputs, output buffers, reference) that the runner checks and
// times built kernels on. Builder, runner, database and strategy know a workload only through
// these two interfaces; attention_task.h is the attention workload's implementation.
#pragma once

#include "kernel_call.h"
#include "strategy.h"

#include <map>
#include <memory>
#include <string>

namespace vashista::tune {

// The run side: needs the Halide runtime only, so a bundle's runner can carry it.
class TaskInstance {
public:
    virtual ~TaskInstance() = default;
    // Binds every argument of a built kernel: this instance's inputs and output buffers.
    virtual void bind(runtime::KernelCall &call) = 0;
    struct Check {
        bool ok = false;
        double max_abs_err = 0;  // over the outputs compared
        std::string error;       // what differs, when not ok
    };
    // The outputs the last call wrote, against the reference.
    virtual Check check() const = 0;
};

// The build side.
class Task {
public:
    virtual ~Task() = default;
    virtual std::string key() const = 0;          // stable across runs; records are filed under it
    virtual nlohmann::json describe() const = 0;  // stored with every record
    virtual std::string target() const = 0;       // Halide target of the kernels
    virtual std::string generator() const = 0;    // registered Generator name
    // The GeneratorParams of a schedule point (an autoscheduler ignores the schedule in them).
    virtual std::map<std::string, std::string> generator_params(const json &point) const = 0;
    virtual SearchSpace space() const = 0;
    virtual json hand_point() const = 0;
    // Makes the inputs and the reference outputs (seconds at long contexts).
    virtual std::unique_ptr<TaskInstance> instantiate() const = 0;
};

}  // namespace vashista::tune
