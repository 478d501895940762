// Runner: loads a built candidate, binds its arguments by name against the metadata it was
// compiled with, checks its outputs through the task instance (a wrong candidate is recorded
// as wrong and never timed), then measures it cold: the cache is flushed before every run,
// after a warm-up, repeating until the spread is small or a cap is hit. Knows nothing of
// what the kernel computes. Needs only the Halide runtime, so a bundle can carry it.
#pragma once

#include "measure.h"
#include "task.h"

#include <memory>
#include <string>
#include <vector>

namespace vashista::tune {

struct MeasureOptions {
    int min_reps = 5, max_reps = 25;
    double spread = 0.05;  // stop when (max - min) / median of the last min_reps runs is below
};

struct Measurement {
    std::string status = "wrong";  // ok | wrong | run_failed
    std::string error;
    double median_ms = 0, min_ms = 0, max_ms = 0;
    int reps = 0;
    double max_abs_err = 0;
    std::vector<double> samples_ms;  // in the order run
};

// Paired comparison of two candidates timed round-robin: the median of the per-round
// ratios a/b (adjacent runs share the machine's state, so drift cancels) and the
// fraction of rounds in which a was faster.
struct Paired {
    double median_ratio = 0, wins = 0;
};
Paired compare_paired(const Measurement &a, const Measurement &b);

// Loads the Halide runtime a bundle's candidates share (once per process).
void load_runtime(const std::string &runtime_library);

class Runner {
public:
    explicit Runner(std::unique_ptr<TaskInstance> instance, MeasureOptions options = {});
    ~Runner();
    // Check, then time until the spread is small or max_reps.
    Measurement measure(const std::string &library, const std::string &function);
    // Check and time several candidates round-robin (flush, run one, flush, run the
    // next, ...) so that drift in the machine's speed affects them all alike.
    std::vector<Measurement> measure_interleaved(const std::vector<std::pair<std::string, std::string>> &candidates,
                                                 int reps);

private:
    struct Loaded;
    std::unique_ptr<Loaded> load_checked(const std::string &library, const std::string &function, Measurement &m);

    std::unique_ptr<TaskInstance> instance_;
    MeasureOptions options_;
    bench::Flusher flusher_;
};

json machine_description();

// How the build of a candidate went, as a record needs it.
struct BuildOutcome {
    std::string status, error;  // status: ok | build_failed | timeout
    double seconds = 0;
};

// A database record of one candidate's outcome.
json make_record(const std::string &key, const json &workload, const json &schedule, const std::string &kind,
                 const BuildOutcome &build, const Measurement &m, int trial, uint64_t seed,
                 const std::string &halide_version);

}  // namespace vashista::tune
