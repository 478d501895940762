#include "workload.h"

#include <sstream>
#include <stdexcept>

namespace vashista::tune {

std::string Workload::key() const {
    std::ostringstream os;
    os << generator << "|" << target << "|D" << head_dim << "|S" << page_size;
    if (generator == "decode") os << "|P" << top_pages << "|K" << top_tokens;
    os << "|G" << group_size << "|H" << kv_heads << "|B" << batch << "|" << kv_type;
    if (generator == "decode") os << "|sum=" << summary_type;
    os << "|" << layout;
    if (generator == "decode") os << "|" << solver << "|" << routing << "|" << group_routing;
    if (sketch()) os << "|sk" << sketch_bits << "g" << sketch_group;
    if (hier()) os << "|R" << super_pages << "Q" << super_expand;
    // Parameters at their defaults stay out of the key, so records from before they were
    // part of it keep theirs.
    if (generator == "decode" && (sink_pages != 0 || local_pages != 0))
        os << "|sink" << sink_pages << "|local" << local_pages;
    if (generator == "decode" &&
        (solver_steps != kSolverStepsDefault || solver_eta != kSolverEtaDefault || solver_tau != kSolverTauDefault))
        os << "|N" << solver_steps << "|eta" << solver_eta << "|tau" << solver_tau;
    os << "|T" << tokens;
    return os.str();
}

json Workload::to_json() const {
    json j = {{"generator", generator},
              {"target", target},
              {"head_dim", head_dim},
              {"page_size", page_size},
              {"top_pages", top_pages},
              {"top_tokens", top_tokens},
              {"group_size", group_size},
              {"kv_heads", kv_heads},
              {"batch", batch},
              {"kv_type", kv_type},
              {"summary_type", summary_type},
              {"layout", layout},
              {"solver", solver},
              {"routing", routing},
              {"group_routing", group_routing},
              {"tokens", tokens}};
    if (sketch()) {
        j["sketch_bits"] = sketch_bits;
        j["sketch_group"] = sketch_group;
    }
    if (hier()) {
        j["super_pages"] = super_pages;
        j["super_expand"] = super_expand;
    }
    if (generator == "decode") {
        j["sink_pages"] = sink_pages;
        j["local_pages"] = local_pages;
        j["solver_steps"] = solver_steps;
        j["solver_eta"] = solver_eta;
        j["solver_tau"] = solver_tau;
    }
    return j;
}

Workload Workload::from_json(const json &j) {
    Workload w;
    auto get = [&](const char *k, auto &v) {
        if (j.contains(k)) v = j.at(k).get<std::decay_t<decltype(v)>>();
    };
    get("generator", w.generator);
    get("target", w.target);
    get("head_dim", w.head_dim);
    get("page_size", w.page_size);
    get("top_pages", w.top_pages);
    get("top_tokens", w.top_tokens);
    get("group_size", w.group_size);
    get("kv_heads", w.kv_heads);
    get("batch", w.batch);
    get("kv_type", w.kv_type);
    get("summary_type", w.summary_type);
    get("layout", w.layout);
    get("solver", w.solver);
    get("routing", w.routing);
    get("group_routing", w.group_routing);
    get("sketch_bits", w.sketch_bits);
    get("sketch_group", w.sketch_group);
    get("super_pages", w.super_pages);
    get("super_expand", w.super_expand);
    get("sink_pages", w.sink_pages);
    get("local_pages", w.local_pages);
    get("solver_steps", w.solver_steps);
    get("solver_eta", w.solver_eta);
    get("solver_tau", w.solver_tau);
    get("tokens", w.tokens);
    if (w.generator != "decode" && w.generator != "dense")
        throw std::invalid_argument("workload generator '" + w.generator + "' is not decode or dense");
    parse_layout(w.layout);
    parse_solver(w.solver);
    parse_routing(w.routing);
    parse_group_routing(w.group_routing);
    if (w.sink_pages < 0 || w.local_pages < 0 || w.sink_pages + w.local_pages > w.top_pages)
        throw std::invalid_argument("workload: sink_pages = " + std::to_string(w.sink_pages) +
                                    " and local_pages = " + std::to_string(w.local_pages) +
                                    " must be >= 0 and together at most top_pages = " + std::to_string(w.top_pages));
    if (w.solver_steps < 1) throw std::invalid_argument("workload: solver_steps must be at least 1");
    if (w.sketch()) {
        const std::string why = sketch_config_error(w.head_dim, w.sketch_bits, w.sketch_group);
        if (!why.empty()) throw std::invalid_argument("workload: " + why);
    }
    if (w.hier()) {
        const std::string why = hier_config_error(w.super_pages, w.super_expand);
        if (!why.empty()) throw std::invalid_argument("workload: " + why);
    }
    const std::string dtypes = summary_config_error(w.head_dim, parse_dtype(w.kv_type), parse_dtype(w.summary_type));
    if (!dtypes.empty()) throw std::invalid_argument("workload: " + dtypes);
    return w;
}

ref::ProblemSpec Workload::problem_spec() const {
    ref::ProblemSpec s;
    s.kv_heads = kv_heads;
    s.group = group_size;
    s.head_dim = head_dim;
    s.page_size = page_size;
    s.seq_lens.assign(batch, tokens);
    s.extra_pages = 0;
    s.spare_pages = 0;
    s.layout = parse_layout(layout);
    s.dtype = parse_dtype(kv_type);
    s.kind = ref::DataKind::Planted;
    s.needle_score = 40.0;
    s.seed = 42;
    return s;
}

std::vector<Workload> default_workloads(const std::string &target) {
    std::vector<Workload> out;
    for (int t : {8192, 32768, 131072}) {
        Workload w;
        w.target = target;
        w.tokens = t;
        out.push_back(w);
    }
    return out;
}

std::vector<Workload> shard(const std::vector<Workload> &all, const std::string &spec) {
    int i = -1, n = -1;
    char slash = 0;
    std::istringstream is(spec);
    if (!(is >> i >> slash >> n) || slash != '/' || n < 1 || i < 0 || i >= n || !is.eof())
        throw std::invalid_argument("--shard '" + spec + "' is not i/n with 0 <= i < n");
    std::vector<Workload> out;
    for (size_t k = 0; k < all.size(); ++k)
        if (int(k % n) == i) out.push_back(all[k]);
    return out;
}

}  // namespace vashista::tune
