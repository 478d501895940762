#include "attention_task.h"

#include "generator_params.h"
#include "schedule.h"

namespace vashista::tune {

namespace {

DecodeConfig decode_config(const Workload &w) {
    DecodeConfig c;
    c.head_dim = w.head_dim;
    c.page_size = w.page_size;
    c.top_pages = w.top_pages;
    c.top_tokens = w.top_tokens;
    c.group_size = w.group_size;
    c.kv_type = parse_type(w.kv_type);
    c.summary_type = parse_type(w.summary_type);
    c.layout = parse_layout(w.layout);
    c.solver = parse_solver(w.solver);
    c.routing = parse_routing(w.routing);
    c.group_routing = parse_group_routing(w.group_routing);
    c.sketch_bits = w.sketch_bits;
    c.sketch_group = w.sketch_group;
    c.super_pages = w.super_pages;
    c.super_expand = w.super_expand;
    c.sink_pages = w.sink_pages;
    c.local_pages = w.local_pages;
    c.solver_steps = w.solver_steps;
    c.solver_eta = w.solver_eta;
    c.solver_tau = w.solver_tau;
    return c;
}

DenseConfig dense_config(const Workload &w) {
    DenseConfig c;
    c.head_dim = w.head_dim;
    c.page_size = w.page_size;
    c.group_size = w.group_size;
    c.kv_type = parse_type(w.kv_type);
    c.layout = parse_layout(w.layout);
    return c;
}

template <typename Schedule, typename Shape>
SearchSpace adapt(const Shape &shape) {
    SearchSpace s;
    for (const auto &k : Schedule::space().knobs) {
        s.names.push_back(k.name);
        s.domains.push_back(k.domain);
    }
    s.violation = [shape](const json &point) -> std::string {
        try {
            Schedule sched = schedule_from_json<Schedule>(point);
            return Schedule::space().violation(sched, shape);
        } catch (const std::exception &e) {
            return e.what();
        }
    };
    return s;
}

}  // namespace

// Decode kernels need IEEE semantics for their certificate (decode_target()).
std::string AttentionTask::target() const {
    if (w_.generator != "decode" || w_.target.find("strict_float") != std::string::npos) return w_.target;
    return w_.target + "-strict_float";
}

std::map<std::string, std::string> AttentionTask::generator_params(const json &point) const {
    GeneratorParams p = w_.generator == "decode" ? vashista::generator_params(decode_config(w_))
                                                 : vashista::generator_params(dense_config(w_));
    p["schedule"] = point.dump();
    p["estimate_tokens"] = std::to_string(w_.tokens);
    p["estimate_batch"] = std::to_string(w_.batch);
    p["estimate_kv_heads"] = std::to_string(w_.kv_heads);
    return p;
}

SearchSpace AttentionTask::space() const {
    if (w_.generator == "decode") return adapt<DecodeCpuSchedule>(decode_config(w_));
    return adapt<DenseCpuSchedule>(dense_config(w_));
}

json AttentionTask::hand_point() const {
    if (w_.generator == "decode") return schedule_to_json(hand_schedule(decode_config(w_)));
    return schedule_to_json(hand_schedule(dense_config(w_)));
}

}  // namespace vashista::tune
