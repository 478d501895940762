// Append-only tuning records, one JSON object per line. A record holds the workload
// (and its key), the schedule, the outcome (status: ok | wrong | build_failed | timeout),
// the timings, the Halide version and the machine. Each append is flushed and synced,
// so a run killed at any moment loses at most the line being written; a damaged line is
// reported with its number and skipped on load.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace vashista::tune {

using nlohmann::json;

struct LoadReport {
    std::vector<json> records;
    std::vector<std::string> problems;  // "FILE:LINE: why"
};

LoadReport load_records(const std::string &path);  // a missing file is empty

class Database {
public:
    explicit Database(std::string path);
    const std::string &path() const { return path_; }
    const std::vector<json> &records() const { return records_; }
    const std::vector<std::string> &problems() const { return problems_; }
    void append(const json &record);
    // The latest verified winner (kind "final") for a workload key, else the fastest
    // correct record, if any.
    std::optional<json> best(const std::string &workload_key) const;
    std::vector<std::string> workload_keys() const;

private:
    std::string path_;
    std::vector<json> records_;
    std::vector<std::string> problems_;
};

// The one best-record query. Among correct records: a verified winner (kind "final", the
// latest) outranks single measurements, else the fastest; across contexts, the longest
// tuned unless `tokens` names one. Database::best asks it for one workload key;
// kernel libraries (vashista_tuned_spec in CMake, through vashista-db-query) for a
// generator's shape on a target.
struct RecordQuery {
    std::string workload_key;                   // if set, only this key
    std::string generator;                      // if set, workload.generator
    std::map<std::string, std::string> fields;  // workload fields that must have these values
    std::string target;                         // if set, workload.target as record_target() writes it
    int tokens = 0;                             // 0: the longest context tuned
};
struct QueryResult {
    std::optional<json> best;
    std::vector<std::string> other_targets;  // targets of records matching all but the target
};
QueryResult query_best(const std::vector<json> &records, const RecordQuery &q);

// A target as records are compared by it: the features that do not change a schedule's
// speed (strict_float, no_runtime, large_buffers) dropped.
std::string record_target(const std::string &target);

// Joins databases into `output` (records in input order, exact duplicates dropped).
// Returns the problems found in the inputs.
std::vector<std::string> merge_databases(const std::vector<std::string> &inputs, const std::string &output,
                                         size_t *written = nullptr);

}  // namespace vashista::tune
