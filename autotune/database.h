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

// The one best-record query. For a target, records of that target come first; with none,
// records of another CPU of the same ISA level (x86-64-linux with AVX-512, say: a Zen 5
// record serves a Sapphire Rapids build), never of a higher or lower level. Then, among
// correct records: a verified winner (kind "final", the latest) outranks single
// measurements, else the fastest; across contexts, the longest tuned unless `tokens`
// names one. Database::best asks it for one workload key; kernel libraries
// (vashista_tuned_spec in CMake, through vashista-db-query, and `vashista build-lib`) for
// a variant's shape on a target (variant_query).
struct RecordQuery {
    std::string workload_key;                   // if set, only this key
    std::string generator;                      // if set, workload.generator
    std::map<std::string, std::string> fields;  // workload fields that must have these values
    std::string target;                         // if set, the target the record is for
    int tokens = 0;                             // 0: the longest context tuned
};
struct QueryResult {
    std::optional<json> best;
    std::string how;                         // why this record: the target it was tuned on, and how it matched
    std::vector<std::string> other_targets;  // targets of records matching all but the target, unused
};
QueryResult query_best(const std::vector<json> &records, const RecordQuery &q);

// The workload fields a kernel library's variant must share with a record: its shape and
// method (not the context length, which the query ranks, nor the solver's constants).
std::vector<std::string> tuning_fields(const std::string &generator, const std::string &routing);
// A workload's fields as text, the form variant_query takes.
std::map<std::string, std::string> workload_params(const json &workload);
// The query for a variant given by its GeneratorParam values (a kernel library's spec).
RecordQuery variant_query(const std::string &generator, const std::map<std::string, std::string> &params,
                          const std::string &target, int tokens = 0);

// A target as records are compared by it: the features that do not change a schedule's
// speed (strict_float, no_runtime, large_buffers) dropped.
std::string record_target(const std::string &target);
// Its ISA level: the arch-bits-os prefix and the widest vector extension (x86: avx512, avx2,
// sse41 or baseline; ARM: sve2, sve or baseline), e.g. "x86-64-linux avx512".
std::string isa_level(const std::string &target);

// Joins databases into `output` (records in input order, exact duplicates dropped).
// Returns the problems found in the inputs.
std::vector<std::string> merge_databases(const std::vector<std::string> &inputs, const std::string &output,
                                         size_t *written = nullptr);

}  // namespace vashista::tune
