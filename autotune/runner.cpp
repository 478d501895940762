#include "runner.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <fstream>
#include <functional>
#include <stdexcept>

namespace vashista::tune {

void load_runtime(const std::string &runtime_library) {
    static std::string loaded;
    if (loaded == runtime_library) return;
    if (!dlopen(runtime_library.c_str(), RTLD_NOW | RTLD_GLOBAL))
        throw std::runtime_error(std::string("cannot load the Halide runtime: ") + dlerror());
    loaded = runtime_library;
}

struct Runner::Loaded {
    runtime::KernelCall call;
};

Runner::Runner(std::unique_ptr<TaskInstance> instance, MeasureOptions options)
    : instance_(std::move(instance)), options_(options) {}

Runner::~Runner() = default;

// Loads a candidate, binds it and checks it against the reference; on failure `m` says why.
std::unique_ptr<Runner::Loaded> Runner::load_checked(const std::string &library, const std::string &function,
                                                     Measurement &m) {
    m.status = "run_failed";
    void *handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        m.error = std::string("dlopen: ") + dlerror();
        return nullptr;
    }
    runtime::Kernel kernel{function.c_str(),
                           reinterpret_cast<runtime::KernelArgv>(dlsym(handle, (function + "_argv").c_str())),
                           reinterpret_cast<runtime::KernelMetadata>(dlsym(handle, (function + "_metadata").c_str()))};
    if (!kernel.argv || !kernel.metadata) {
        m.error = "no function " + function + "_argv or " + function + "_metadata in " + library;
        return nullptr;
    }
    auto l = std::unique_ptr<Loaded>(new Loaded{runtime::KernelCall(kernel)});
    instance_->bind(l->call);
    // Warm-up and the correctness check against the reference.
    if (int rc = l->call.run(); rc != 0) {
        m.error = rc == runtime::KernelCall::kBindError ? l->call.error()
                                                        : "the candidate returned Halide error " + std::to_string(rc);
        return nullptr;
    }
    const TaskInstance::Check c = instance_->check();
    m.max_abs_err = c.max_abs_err;
    if (!c.ok) {
        m.status = "wrong";
        m.error = c.error;
        return nullptr;
    }
    m.status = "ok";
    return l;
}

Paired compare_paired(const Measurement &a, const Measurement &b) {
    Paired p;
    const size_t n = std::min(a.samples_ms.size(), b.samples_ms.size());
    if (n == 0) return p;
    std::vector<double> ratio;
    for (size_t i = 0; i < n; ++i) {
        ratio.push_back(a.samples_ms[i] / b.samples_ms[i]);
        p.wins += a.samples_ms[i] < b.samples_ms[i] ? 1.0 / n : 0.0;
    }
    p.median_ratio = bench::summarize(ratio).median;
    return p;
}

static void finish(Measurement &m, const std::vector<double> &ms) {
    m.samples_ms = ms;
    bench::Stats st = bench::summarize(ms);
    m.status = "ok";
    m.median_ms = st.median;
    m.min_ms = st.min;
    m.max_ms = st.max;
    m.reps = int(ms.size());
}

Measurement Runner::measure(const std::string &library, const std::string &function) {
    Measurement m;
    auto l = load_checked(library, function, m);
    if (!l) return m;
    std::vector<double> ms;
    while (int(ms.size()) < options_.max_reps) {
        flusher_.flush();
        bench::Timer t;
        l->call.run();
        ms.push_back(t.seconds() * 1e3);
        if (int(ms.size()) >= options_.min_reps) {
            std::vector<double> last(ms.end() - options_.min_reps, ms.end());
            bench::Stats st = bench::summarize(last);
            if ((st.max - st.min) / st.median < options_.spread) break;
        }
    }
    finish(m, ms);
    return m;
}

std::vector<Measurement> Runner::measure_interleaved(const std::vector<std::pair<std::string, std::string>> &candidates,
                                                     int reps) {
    std::vector<Measurement> ms(candidates.size());
    std::vector<std::unique_ptr<Loaded>> loaded;
    for (size_t i = 0; i < candidates.size(); ++i)
        loaded.push_back(load_checked(candidates[i].first, candidates[i].second, ms[i]));
    std::vector<std::vector<double>> times(candidates.size());
    for (int r = 0; r < reps; ++r)
        for (size_t i = 0; i < loaded.size(); ++i) {
            if (!loaded[i]) continue;
            flusher_.flush();
            bench::Timer t;
            loaded[i]->call.run();
            times[i].push_back(t.seconds() * 1e3);
        }
    for (size_t i = 0; i < loaded.size(); ++i)
        if (loaded[i]) finish(ms[i], times[i]);
    return ms;
}

json make_record(const std::string &key, const json &workload, const json &schedule, const std::string &kind,
                 const BuildOutcome &build, const Measurement &m, int trial, uint64_t seed,
                 const std::string &halide_version) {
    const std::time_t now = std::time(nullptr);
    char when[32];
    std::strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    json r = {{"workload_key", key},
              {"workload", workload},
              {"schedule", schedule},
              {"kind", kind},
              {"trial", trial},
              {"seed", seed},
              {"build_s", build.seconds},
              {"halide_version", halide_version},
              {"machine", machine_description()},
              {"time", when}};
    if (build.status != "ok") {
        r["status"] = build.status;
        r["error"] = build.error;
        return r;
    }
    r["status"] = m.status;
    if (!m.error.empty()) r["error"] = m.error;
    r["max_abs_err"] = m.max_abs_err;
    if (m.status == "ok") {
        r["median_ms"] = m.median_ms;
        r["min_ms"] = m.min_ms;
        r["max_ms"] = m.max_ms;
        r["reps"] = m.reps;
    }
    return r;
}

json machine_description() {
    std::string model;
    std::ifstream cpuinfo("/proc/cpuinfo");
    for (std::string line; std::getline(cpuinfo, line);)
        if (line.rfind("model name", 0) == 0) {
            model = line.substr(line.find(':') + 2);
            break;
        }
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    return {{"cpu", model},
            {"cores", int(sysconf(_SC_NPROCESSORS_ONLN))},
            {"host", host},
            {"flush_bytes", bench::flush_bytes()}};
}

}  // namespace vashista::tune
