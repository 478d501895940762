#include "runner.h"

#include "variants.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <fstream>
#include <functional>
#include <stdexcept>

namespace vashista::tune {

using Halide::Runtime::Buffer;

void load_runtime(const std::string &runtime_library) {
    static std::string loaded;
    if (loaded == runtime_library) return;
    if (!dlopen(runtime_library.c_str(), RTLD_NOW | RTLD_GLOBAL))
        throw std::runtime_error(std::string("cannot load the Halide runtime: ") + dlerror());
    loaded = runtime_library;
}

struct Runner::State {
    ref::Problem problem;
    ref::Summaries summaries;
    ProblemBuffers buffers;
    float scale = 0;
    std::vector<ref::HeadResult> sparse;  // reference per head, decode workloads
    std::vector<ref::DenseResult> dense;  // reference per head, dense workloads
    bench::Flusher flusher;
};

Runner::Runner(const Workload &w, MeasureOptions options) : workload_(w), options_(options), state_(new State) {
    State &s = *state_;
    s.problem = ref::make_problem(w.problem_spec());
    s.summaries =
        ref::summarize(s.problem.cache, s.problem.seqs, parse_dtype(w.summary_type), w.sketch_bits, w.sketch_group);
    s.buffers = problem_buffers(s.problem, s.summaries, parse_dtype(w.summary_type));
    s.scale = float(ref::default_scale(w.head_dim));
    ref::SparseOptions opt;
    opt.top_pages = w.top_pages;
    opt.top_tokens = w.top_tokens;
    opt.solver = parse_solver(w.solver);
    opt.routing = parse_routing(w.routing);
    opt.group_routing = parse_group_routing(w.group_routing);
    opt.sketch_bits = w.sketch_bits;
    opt.sketch_group = w.sketch_group;
    opt.sink_pages = w.sink_pages;
    opt.local_pages = w.local_pages;
    opt.solver_steps = w.solver_steps;
    opt.solver_eta = w.solver_eta;
    opt.solver_tau = w.solver_tau;
    for (int b = 0; b < w.batch; ++b)
        for (int h = 0; h < w.kv_heads; ++h)
            for (int g = 0; g < w.group_size; ++g) {
                if (w.generator == "decode")
                    s.sparse.push_back(
                        ref::sparse_head(s.problem.cache, s.problem.seqs, s.problem.q, s.summaries, opt, b, h, g));
                else
                    s.dense.push_back(ref::dense_head(s.problem.cache, s.problem.seqs, s.problem.q, 0.0, b, h, g));
            }
}

Runner::~Runner() = default;

namespace {

struct Loaded {
    std::function<int()> call;
    Buffer<float> out, lse, diag;
    Buffer<int32_t> cand, pages;
};

}  // namespace

// Loads a candidate and checks it against the reference; on failure `m` says why.
static std::unique_ptr<Loaded> load_checked(Runner::State &s, const Workload &w, const std::string &library,
                                            const std::string &function, Measurement &m) {
    void *handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        m.status = "run_failed";
        m.error = std::string("dlopen: ") + dlerror();
        return nullptr;
    }
    void *symbol = dlsym(handle, function.c_str());
    if (!symbol) {
        m.status = "run_failed";
        m.error = "no function " + function + " in " + library;
        return nullptr;
    }
    const int G = w.group_size, H = w.kv_heads, B = w.batch, D = w.head_dim;
    auto l = std::make_unique<Loaded>();
    l->out = Buffer<float>(D, G, H, B);
    l->lse = Buffer<float>(G, H, B);
    l->diag = Buffer<float>(kDiagFields, G, H, B);
    l->cand = Buffer<int32_t>(w.top_tokens, G, H, B);
    l->pages = Buffer<int32_t>(w.top_pages, G, H, B);
    auto &bf = s.buffers;
    Loaded *p = l.get();
    Runner::State *st = &s;
    if (w.generator == "decode") {
        auto fn = reinterpret_cast<runtime::DecodeFn>(symbol);
        l->call = [=, &bf] {
            return fn(bf.q.raw_buffer(), bf.k_cache.raw_buffer(), bf.v_cache.raw_buffer(), bf.page_table.raw_buffer(),
                      bf.seq_lens.raw_buffer(), bf.summary.raw_buffer(), bf.value_norm.raw_buffer(),
                      bf.key_absmax.raw_buffer(), bf.sketch.raw_buffer(), bf.sketch_scale.raw_buffer(), st->scale,
                      p->out.raw_buffer(), p->lse.raw_buffer(), p->diag.raw_buffer(), p->cand.raw_buffer(),
                      p->pages.raw_buffer());
        };
    } else {
        auto fn = reinterpret_cast<runtime::DenseFn>(symbol);
        l->call = [=, &bf] {
            return fn(bf.q.raw_buffer(), bf.k_cache.raw_buffer(), bf.v_cache.raw_buffer(), bf.page_table.raw_buffer(),
                      bf.seq_lens.raw_buffer(), st->scale, p->out.raw_buffer(), p->lse.raw_buffer());
        };
    }
    // Warm-up and the correctness check against the reference.
    if (int rc = l->call(); rc != 0) {
        m.status = "run_failed";
        m.error = "the candidate returned Halide error " + std::to_string(rc);
        return nullptr;
    }
    int head = 0;
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int g = 0; g < G; ++g, ++head) {
                const std::vector<double> &want = w.generator == "decode" ? s.sparse[head].out : s.dense[head].out;
                for (int d = 0; d < D; ++d)
                    m.max_abs_err = std::max(m.max_abs_err, std::abs(double(l->out(d, g, h, b)) - want[d]));
                if (w.generator == "decode") {
                    const auto &c = s.sparse[head].candidates;
                    for (int i = 0; i < w.top_tokens; ++i)
                        if (l->cand(i, g, h, b) != (i < int(c.size()) ? c[i] : -1)) ++m.candidate_mismatches;
                }
            }
    if (m.candidate_mismatches > 0 || !(m.max_abs_err <= 1e-4)) {
        m.status = "wrong";
        m.error = std::to_string(m.candidate_mismatches) +
                  " candidates differ from the reference; max |out - ref| = " + std::to_string(m.max_abs_err);
        return nullptr;
    }
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
    auto l = load_checked(*state_, workload_, library, function, m);
    if (!l) return m;
    std::vector<double> ms;
    while (int(ms.size()) < options_.max_reps) {
        state_->flusher.flush();
        bench::Timer t;
        l->call();
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
        loaded.push_back(load_checked(*state_, workload_, candidates[i].first, candidates[i].second, ms[i]));
    std::vector<std::vector<double>> times(candidates.size());
    for (int r = 0; r < reps; ++r)
        for (size_t i = 0; i < loaded.size(); ++i) {
            if (!loaded[i]) continue;
            state_->flusher.flush();
            bench::Timer t;
            loaded[i]->call();
            times[i].push_back(t.seconds() * 1e3);
        }
    for (size_t i = 0; i < loaded.size(); ++i)
        if (loaded[i]) finish(ms[i], times[i]);
    return ms;
}

json make_record(const Workload &w, const json &schedule, const std::string &kind, const BuildOutcome &build,
                 const Measurement &m, int trial, uint64_t seed, const std::string &halide_version) {
    const std::time_t now = std::time(nullptr);
    char when[32];
    std::strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    json r = {{"workload_key", w.key()},
              {"workload", w.to_json()},
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
