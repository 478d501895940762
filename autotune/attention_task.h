// The attention workload as a tuning task: the decode or dense Generator at a Workload's
// shape, run on a synthetic problem and checked against the reference.
#pragma once

#include "problem_buffers.h"
#include "reference.h"
#include "task.h"
#include "workload.h"

#include <vector>

namespace vashista::tune {

// The run side (Halide runtime only).
class AttentionInstance : public TaskInstance {
public:
    explicit AttentionInstance(const Workload &w);
    void bind(runtime::KernelCall &call) override;
    Check check() const override;

private:
    Workload w_;
    ref::Problem problem_;
    ProblemBuffers in_;
    float scale_ = 0;
    Halide::Runtime::Buffer<float> out_, lse_, diag_;
    Halide::Runtime::Buffer<int32_t> candidates_, pages_;
    std::vector<ref::HeadResult> sparse_;  // reference per head, decode workloads
    std::vector<ref::DenseResult> dense_;  // reference per head, dense workloads
};

// The build side (schedule spaces; linked with libHalide).
class AttentionTask : public Task {
public:
    explicit AttentionTask(Workload w) : w_(std::move(w)) {}
    std::string key() const override { return w_.key(); }
    json describe() const override { return w_.to_json(); }
    std::string target() const override;
    std::string generator() const override { return "vashista_" + w_.generator; }
    std::map<std::string, std::string> generator_params(const json &point) const override;
    SearchSpace space() const override;
    json hand_point() const override;
    std::unique_ptr<TaskInstance> instantiate() const override { return std::make_unique<AttentionInstance>(w_); }
    const Workload &workload() const { return w_; }

private:
    Workload w_;
};

}  // namespace vashista::tune
