// How each stage is computed on a CPU or a GPU. A schedule is data: a struct of integer knobs
// that round-trips through JSON. Each struct declares its knobs, their domains and the
// constraints between them in one place (`space()`), so the hand-written defaults, the
// tuner's search and the JSON files all describe points of the same space.
#pragma once

#include "algorithm.h"

#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>
#include <vector>

namespace vashista {

// What a knob is: its JSON name, its domain and where it lives in the struct.
template <typename Schedule>
struct Knob {
    const char *name;
    std::vector<int> domain;
    int Schedule::*field;
};

// A schedule space: knobs plus the constraint that ties them to a shape.
template <typename Schedule, typename Shape>
struct Space {
    std::vector<Knob<Schedule>> knobs;
    // Empty when `s` is a valid point for `shape`, else why not.
    std::string (*violation)(const Schedule &s, const Shape &shape);
};

struct DecodeCpuSchedule {
    int vector_width = 16;  // f32 lanes of elementwise stages
    int page_lanes = 16;    // pages per block of routing's page scores (a vector of them in the sketch scan)
    int group_inner = 1;    // one summary / key load serves all heads of a group
    int count_lanes = 16;   // lanes of the top-k counting passes
    int dot_lanes = 16;     // lanes along D of token scores and summary page scores
    int out_unroll = 8;     // D vectors accumulated at once in the output sum
    int parallel = 1;       // parallel over (KV head, sequence)
    int route_split = 0;    // 1: page scores in their own parallel loop over page blocks
    int route_block = 64;   // pages per task when route_split (64 when not split)
    int count_unroll = 1;   // unroll of the top-k counting passes
    int head_tasks = 0;     // 0: one task per KV head (a group together); 1: per query head
    int route_gather = 0;   // 1: routing copies a block's summary rows together before scoring them (scattered pages)
    static const Space<DecodeCpuSchedule, DecodeConfig> &space();
};

struct DenseCpuSchedule {
    int split_pages = 16;  // pages per flash-decoding chunk
    int vector_width = 16;
    int dot_lanes = 16;
    int group_inner = 1;
    int acc_unroll = 4;  // 16 accumulators (4 heads x 4 vectors) fit the 32 registers
    int parallel = 1;
    static const Space<DenseCpuSchedule, DenseConfig> &space();
};

struct SummaryCpuSchedule {
    int vector_width = 16;
    int parallel = 1;
    static const Space<SummaryCpuSchedule, SummaryConfig> &space();
};

struct SketchCpuSchedule {
    int parallel = 1;
    static const Space<SketchCpuSchedule, SketchConfig> &space();
};

// check_point, and a dense schedule's split equal to the definition's (the split is a
// knob of the schedule, fixed in the definition).
template <typename Schedule>
void check_dense_point(const Schedule &s, const DenseConfig &cfg) {
    check_point(s, cfg);
    if (cfg.split_pages != s.split_pages)
        throw std::invalid_argument("dense schedule split_pages must match the definition's split_pages");
}

// GPU schedules (schedules/gpu.cpp): blocks over independent work, threads inside a
// block, block-local stages in shared memory. Every directive they use lowers to OpenCL
// and CUDA alike, so the OpenCL target (run on the CPU through pocl) checks the same
// loop nests a CUDA build runs.
struct DecodeGpuSchedule {
    int threads = 128;   // threads per block, over each stage's first free dimension
    int digit_bits = 4;  // top-k: bits of the threshold per counting pass (TopKOptions)
    static const Space<DecodeGpuSchedule, DecodeConfig> &space();
};

struct DenseGpuSchedule {
    int split_pages = 16;   // pages per block (one flash-decoding chunk)
    int d_vector = 2;       // D elements per thread in the value sum (2: bf16 pairs)
    int group_threads = 0;  // 1: the group's heads are a second thread dimension, else a loop per thread
    static const Space<DenseGpuSchedule, DenseConfig> &space();
};

struct SummaryGpuSchedule {
    int pages_per_block = 2;  // touched pages per block (threads over D x pages)
    static const Space<SummaryGpuSchedule, SummaryConfig> &space();
};

struct SketchGpuSchedule {
    int pages_per_block = 2;  // touched pages per block (threads over tokens x groups x pages)
    static const Space<SketchGpuSchedule, SketchConfig> &space();
};

// JSON round trip over a space's knobs. from_json rejects unknown knobs and values
// outside a domain, naming them.
template <typename Schedule>
nlohmann::json schedule_to_json(const Schedule &s) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto &knob : Schedule::space().knobs) j[knob.name] = s.*(knob.field);
    return j;
}

std::string knob_domain_error(const char *knob, int value, const std::vector<int> &domain);
// Empty when `lanes` divides `extent`, else a sentence naming both.
std::string divides(const char *what, int lanes, const char *of, int extent);

// Throws std::invalid_argument naming the first knob outside its domain or the violated
// constraint of `s` for `shape`.
template <typename Schedule, typename Shape>
void check_point(const Schedule &s, const Shape &shape) {
    for (const auto &knob : Schedule::space().knobs) {
        std::string err = knob_domain_error(knob.name, s.*(knob.field), knob.domain);
        if (!err.empty()) throw std::invalid_argument(err);
    }
    std::string err = Schedule::space().violation(s, shape);
    if (!err.empty()) throw std::invalid_argument("invalid schedule: " + err);
}

template <typename Schedule>
Schedule schedule_from_json(const nlohmann::json &j) {
    Schedule s;
    if (!j.is_object()) throw std::invalid_argument("schedule JSON must be an object, got " + j.dump());
    for (auto it = j.begin(); it != j.end(); ++it) {
        const Knob<Schedule> *found = nullptr;
        for (const auto &knob : Schedule::space().knobs)
            if (it.key() == knob.name) found = &knob;
        if (!found) throw std::invalid_argument("unknown schedule knob '" + it.key() + "'");
        if (!it.value().is_number_integer())
            throw std::invalid_argument("schedule knob '" + it.key() + "' must be an integer, got " +
                                        it.value().dump());
        int v = it.value().template get<int>();
        std::string err = knob_domain_error(found->name, v, found->domain);
        if (!err.empty()) throw std::invalid_argument(err);
        s.*(found->field) = v;
    }
    return s;
}

// A uniformly drawn valid point of a space (rejection sampling over the constraints).
template <typename Schedule, typename Shape, typename Rng>
Schedule random_point(const Shape &shape, Rng &rng) {
    const auto &space = Schedule::space();
    for (int attempt = 0; attempt < 10000; ++attempt) {
        Schedule s;
        for (const auto &knob : space.knobs) s.*(knob.field) = knob.domain[rng() % knob.domain.size()];
        if (space.violation(s, shape).empty()) return s;
    }
    throw std::runtime_error("no valid schedule found for this shape");
}

// The hand-written defaults, tuned by hand on the demo shape.
DecodeCpuSchedule hand_schedule(const DecodeConfig &cfg);
DenseCpuSchedule hand_schedule(const DenseConfig &cfg);
SummaryCpuSchedule hand_schedule(const SummaryConfig &cfg);
SketchCpuSchedule hand_schedule(const SketchConfig &cfg);

DecodeGpuSchedule hand_gpu_schedule(const DecodeConfig &cfg);
DenseGpuSchedule hand_gpu_schedule(const DenseConfig &cfg);
SummaryGpuSchedule hand_gpu_schedule(const SummaryConfig &cfg);
SketchGpuSchedule hand_gpu_schedule(const SketchConfig &cfg);

// Turn a schedule into Halide directives. Throws std::invalid_argument on a point that
// violates its space's constraints.
void apply_cpu(const DecodeCpuSchedule &s, const DecodeConfig &cfg, DecodeStages &st);
void apply_cpu(const DenseCpuSchedule &s, const DenseConfig &cfg, DenseStages &st);
void apply_cpu(const SummaryCpuSchedule &s, const SummaryConfig &cfg, SummaryStages &st);
void apply_cpu(const SketchCpuSchedule &s, const SketchConfig &cfg, SketchStages &st);

void apply_gpu(const DecodeGpuSchedule &s, const DecodeConfig &cfg, DecodeStages &st);
void apply_gpu(const DenseGpuSchedule &s, const DenseConfig &cfg, DenseStages &st);
void apply_gpu(const SummaryGpuSchedule &s, const SummaryConfig &cfg, SummaryStages &st);
void apply_gpu(const SketchGpuSchedule &s, const SketchConfig &cfg, SketchStages &st);

}  // namespace vashista
