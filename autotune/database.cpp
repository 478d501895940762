#include "database.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>

namespace vashista::tune {

LoadReport load_records(const std::string &path) {
    LoadReport r;
    std::ifstream in(path);
    if (!in) return r;
    std::string line;
    for (size_t n = 1; std::getline(in, line); ++n) {
        if (line.empty()) continue;
        try {
            json j = json::parse(line);
            if (!j.is_object() || !j.contains("workload_key") || !j.contains("status"))
                throw std::runtime_error("not a tuning record (needs workload_key and status)");
            r.records.push_back(std::move(j));
        } catch (const std::exception &e) {
            r.problems.push_back(path + ":" + std::to_string(n) + ": skipped damaged line: " + e.what());
        }
    }
    return r;
}

Database::Database(std::string path) : path_(std::move(path)) {
    LoadReport r = load_records(path_);
    records_ = std::move(r.records);
    problems_ = std::move(r.problems);
}

void Database::append(const json &record) {
    const std::filesystem::path p(path_);
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
    const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_APPEND, 0644);  // read: the last byte
    if (fd < 0) throw std::runtime_error("cannot open database " + path_ + " for appending");
    // A line cut short by a crash must not join the next record: start on a new line.
    const off_t size = ::lseek(fd, 0, SEEK_END);
    std::string line = record.dump() + "\n";
    if (size > 0) {
        char last = '\n';
        if (::pread(fd, &last, 1, size - 1) == 1 && last != '\n') line = "\n" + line;
    }
    const ssize_t written = ::write(fd, line.data(), line.size());
    ::fsync(fd);
    ::close(fd);
    if (written != ssize_t(line.size())) throw std::runtime_error("short write to database " + path_);
    records_.push_back(record);
}

std::optional<json> Database::best(const std::string &key) const {
    RecordQuery q;
    q.workload_key = key;
    return query_best(records_, q).best;
}

std::string record_target(const std::string &target) {
    std::string t = target;
    for (const char *feature : {"-strict_float", "-no_runtime", "-large_buffers"})
        for (size_t at; (at = t.find(feature)) != std::string::npos;) t.erase(at, std::strlen(feature));
    return t;
}

std::string isa_level(const std::string &target) {
    std::vector<std::string> tokens;
    std::string token;
    for (char ch : record_target(target) + "-") {
        if (ch != '-') {
            token += ch;
            continue;
        }
        tokens.push_back(token);
        token.clear();
    }
    if (tokens.size() < 3) return target;
    auto has = [&](const char *f) { return std::find(tokens.begin() + 3, tokens.end(), f) != tokens.end(); };
    // A GPU target's kernels are GPU schedules: its level is the GPU API, whatever the host's.
    for (const char *api : {"cuda", "opencl", "metal", "vulkan", "d3d12compute", "webgpu"})
        if (has(api)) return tokens[0] + "-" + tokens[1] + "-" + tokens[2] + " " + api;
    const char *level = "baseline";
    for (const char *f : {"avx512", "avx2", "sse41", "sve2", "sve"})
        if (has(f)) {
            level = f;
            break;
        }
    return tokens[0] + "-" + tokens[1] + "-" + tokens[2] + " " + level;
}

std::vector<std::string> tuning_fields(const std::string &generator, const std::string &routing) {
    std::vector<std::string> f = {"head_dim", "page_size", "group_size", "kv_type", "layout"};
    if (generator == "decode") {
        for (const char *k : {"top_pages", "top_tokens", "summary_type", "solver", "routing", "group_routing"})
            f.push_back(k);
        if (routing == "sketch") f.insert(f.end(), {"sketch_bits", "sketch_group"});
        if (routing == "hier_bound") f.insert(f.end(), {"super_pages", "super_expand"});
    }
    return f;
}

RecordQuery variant_query(const std::string &generator, const std::map<std::string, std::string> &params,
                          const std::string &target, int tokens) {
    RecordQuery q;
    q.generator = generator;
    q.target = target;
    q.tokens = tokens;
    const auto routing = params.find("routing");
    for (const std::string &f : tuning_fields(generator, routing == params.end() ? "" : routing->second)) {
        const auto v = params.find(f);
        if (v == params.end()) throw std::invalid_argument("variant_query: the variant has no value for '" + f + "'");
        q.fields[f] = v->second;
    }
    return q;
}

namespace {
std::string field_text(const json &v) { return v.is_string() ? v.get<std::string>() : v.dump(); }
}  // namespace

std::map<std::string, std::string> workload_params(const json &workload) {
    std::map<std::string, std::string> p;
    for (const auto &[k, v] : workload.items()) p[k] = field_text(v);
    return p;
}

QueryResult query_best(const std::vector<json> &records, const RecordQuery &q) {
    QueryResult result;
    const json *best = nullptr;
    int best_tokens = -1, best_tier = 2;
    std::string best_target;
    const std::string want = record_target(q.target), want_level = isa_level(q.target);
    for (const json &r : records) {
        if (r.value("status", "") != "ok" || !r.contains("median_ms")) continue;
        if (!q.workload_key.empty() && r.value("workload_key", "") != q.workload_key) continue;
        static const json kNoWorkload = json::object();
        const json &w = r.contains("workload") ? r["workload"] : kNoWorkload;
        if (!q.generator.empty() && w.value("generator", "") != q.generator) continue;
        bool match = true;
        for (const auto &[name, value] : q.fields)
            if (!w.contains(name) || field_text(w[name]) != value) {
                match = false;
                break;
            }
        if (!match) continue;
        const int tokens = w.value("tokens", 0);
        if (q.tokens && tokens != q.tokens) continue;
        // Tier 0: the target itself; 1: another CPU of its ISA level.
        int tier = 0;
        if (!q.target.empty()) {
            const std::string t = record_target(w.value("target", ""));
            tier = t == want ? 0 : isa_level(t) == want_level ? 1 : 2;
            if (tier == 2) {
                if (std::find(result.other_targets.begin(), result.other_targets.end(), t) ==
                    result.other_targets.end())
                    result.other_targets.push_back(t);
                continue;
            }
        }
        const bool final = r.value("kind", "") == "final";
        const bool best_final = best && best->value("kind", "") == "final";
        if (!best || tier < best_tier ||
            (tier == best_tier &&
             (tokens > best_tokens ||
              (tokens == best_tokens &&
               (final || (!best_final && r["median_ms"].get<double>() < (*best)["median_ms"].get<double>())))))) {
            best = &r;
            best_target = record_target(w.value("target", ""));
            best_tokens = tokens;
            best_tier = tier;
        }
    }
    if (best) {
        result.best = *best;
        const std::string &t = best_target;
        if (q.target.empty())
            result.how = "tuned on " + t;
        else if (best_tier == 0)
            result.how = "tuned on this target";
        else
            result.how = "tuned on " + t + ", the same ISA level (" + want_level + ") as " + want;
    }
    return result;
}

std::vector<std::string> Database::workload_keys() const {
    std::vector<std::string> keys;
    std::set<std::string> seen;
    for (const auto &r : records_) {
        const std::string k = r.value("workload_key", "");
        if (seen.insert(k).second) keys.push_back(k);
    }
    return keys;
}

std::vector<std::string> merge_databases(const std::vector<std::string> &inputs, const std::string &output,
                                         size_t *written) {
    std::vector<std::string> problems;
    std::set<std::string> lines;
    std::vector<std::string> ordered;
    for (const auto &in : inputs) {
        if (!std::filesystem::exists(in)) {
            problems.push_back(in + ": no such file");
            continue;
        }
        LoadReport r = load_records(in);
        problems.insert(problems.end(), r.problems.begin(), r.problems.end());
        for (const auto &rec : r.records) {
            std::string s = rec.dump();
            if (lines.insert(s).second) ordered.push_back(s);
        }
    }
    const std::string tmp = output + ".tmp";
    {
        std::ofstream out(tmp);
        if (!out) throw std::runtime_error("cannot write " + tmp);
        for (const auto &s : ordered) out << s << "\n";
    }
    std::filesystem::rename(tmp, output);
    if (written) *written = ordered.size();
    return problems;
}

}  // namespace vashista::tune
