// The tuning loop: the strategy proposes, the builder compiles, the runner checks and
// measures, the database remembers. A run restarted after being killed resumes: the
// records already in the database are fed back to the strategy and not measured again.
#pragma once

#include "builder.h"
#include "database.h"
#include "runner.h"

#include <iosfwd>

namespace vashista::tune {

struct TuneOptions {
    int trials = 40;     // per workload, the hand schedule included
    double minutes = 0;  // per workload; 0: no limit
    uint64_t seed = 1;
    std::string strategy = "evolutionary";  // or random
    std::string work_dir = "build/tune";
    double build_timeout_s = 300;
    MeasureOptions measure;
    int finalists = 4;    // re-measured against the hand schedule at the end
    int final_reps = 21;  // round-robin runs each in that verification
    bool verify = false;  // run the verification round even if one is recorded
};

struct TuneResult {
    int trials = 0, failed = 0, wrong = 0, resumed = 0;
    double best_ms = 0, hand_ms = 0;
    json best_schedule;
};

TuneResult tune_task(const Task &task, const TuneOptions &options, Database &db, std::ostream &log);

// The verification round: the best `finalists` schedules and the hand schedule measured
// round-robin in one run; the winner is appended as a record of kind "final", which
// Database::best prefers. The hand schedule wins unless a finalist beats it.
json verify_finalists(const Task &task, const TuneOptions &options, Database &db, Runner &runner, std::ostream &log);

}  // namespace vashista::tune
