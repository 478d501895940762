// Append-only tuning records, one JSON object per line. A record holds the workload
// (and its key), the schedule, the outcome (status: ok | wrong | build_failed | timeout),
// the timings, the Halide version and the machine. Each append is flushed and synced,
// so a run killed at any moment loses at most the line being written; a damaged line is
// reported with its number and skipped on load.
#pragma once

#include <nlohmann/json.hpp>

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

// Joins databases into `output` (records in input order, exact duplicates dropped).
// Returns the problems found in the inputs.
std::vector<std::string> merge_databases(const std::vector<std::string> &inputs, const std::string &output,
                                         size_t *written = nullptr);

}  // namespace vashista::tune
