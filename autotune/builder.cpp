#include "builder.h"

#include "jit.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#ifndef VASHISTA_HALIDE_LIB_DIR
#define VASHISTA_HALIDE_LIB_DIR ""
#endif

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

// Estimates of the workload's real shapes, for the autoschedulers.
ShapeEstimate estimate(const Workload &w) {
    return ShapeEstimate{w.head_dim,
                         w.page_size,
                         w.group_size,
                         w.kv_heads,
                         w.batch,
                         (w.tokens + w.page_size - 1) / w.page_size,
                         parse_layout(w.layout)};
}

void set_estimates(DecodeJit &jit, const Workload &w) {
    const ShapeEstimate e = estimate(w);
    set_shared_input_estimates(jit, e);
    jit.summary.set_estimates(summary_region(e));
    jit.value_norm.set_estimates(value_norm_region(e));
    jit.key_absmax.set_estimates(value_norm_region(e));
    jit.sketch.set_estimates(sketch_region(e, jit.cfg.sketch_bits));
    jit.sketch_scale.set_estimates(sketch_scale_region(e, jit.cfg.sketch_group));
    auto &st = jit.stages;
    st.result_out.set_estimates(q_region(e));
    st.result_lse.set_estimates(per_head_region(e, 0));
    st.result_diag.set_estimates(per_head_region(e, kDiagFields));
    st.result_candidates.set_estimates(per_head_region(e, w.top_tokens));
    st.result_pages.set_estimates(per_head_region(e, w.top_pages));
}

void set_estimates(DenseJit &jit, const Workload &w) {
    const ShapeEstimate e = estimate(w);
    set_shared_input_estimates(jit, e);
    jit.stages.out.set_estimates(q_region(e));
    jit.stages.lse.set_estimates(per_head_region(e, 0));
}

void apply_autoscheduler(Halide::Pipeline &p, const std::string &name, const Halide::Target &t) {
    static const std::pair<const char *, const char *> plugins[] = {
        {"Mullapudi2016", "mullapudi2016"}, {"Adams2019", "adams2019"}, {"Li2018", "li2018"}};
    for (auto [n, lib] : plugins)
        if (name == n) {
            Halide::load_plugin(std::string(VASHISTA_HALIDE_LIB_DIR) + "/libautoschedule_" + lib + ".so");
            p.apply_autoscheduler(t, Halide::AutoschedulerParams(name, {{"parallelism", "2"}}));
            return;
        }
    throw std::invalid_argument("autoscheduler '" + name + "' is not Mullapudi2016, Adams2019 or Li2018");
}

// Compiles the candidate to an object file; runs in the child.
void compile_object(const BuildRequest &r, const std::string &object) {
    const Workload &w = r.workload;
    Halide::Target target = Halide::Target(resolve_target(w.target)).with_feature(Halide::Target::NoRuntime);
    if (w.generator == "decode") {
        DecodeJit jit(decode_config(w));
        if (r.autoscheduler.empty()) {
            jit.schedule(schedule_from_json<DecodeCpuSchedule>(r.schedule));
        } else {
            set_estimates(jit, w);
            apply_autoscheduler(jit.pipeline, r.autoscheduler, target);
        }
        jit.pipeline.compile_to_object(object,
                                       {jit.q, jit.k_cache, jit.v_cache, jit.page_table, jit.seq_lens, jit.summary,
                                        jit.value_norm, jit.key_absmax, jit.sketch, jit.sketch_scale, jit.scale},
                                       r.name, decode_target(target));
    } else {
        DenseConfig cfg = dense_config(w);
        DenseCpuSchedule s = schedule_from_json<DenseCpuSchedule>(r.schedule);
        cfg.split_pages = s.split_pages;
        DenseJit jit(cfg);
        if (r.autoscheduler.empty()) {
            jit.schedule(s);
        } else {
            set_estimates(jit, w);
            apply_autoscheduler(jit.pipeline, r.autoscheduler, target);
        }
        jit.pipeline.compile_to_object(
            object, {jit.q, jit.k_cache, jit.v_cache, jit.page_table, jit.seq_lens, jit.scale}, r.name, target);
    }
}

int run_command(const std::string &cmd) { return std::system(cmd.c_str()); }

// Halide warns that bf16 arithmetic is emulated on targets without AVX512-BF16; the
// kernels only widen bf16 to f32 (a shift), so that warning is dropped, others kept.
struct CandidateReporter : Halide::CompileTimeErrorReporter {
    void warning(const char *msg) override {
        if (!std::strstr(msg, "type operation is emulated")) std::fputs(msg, stderr);
    }
    void error(const char *msg) override { throw std::runtime_error(msg); }
};

}  // namespace

std::string resolve_target(const std::string &target) {
    return target == "host" ? Halide::get_host_target().to_string() : Halide::Target(target).to_string();
}

std::string halide_version() {
    return std::to_string(HALIDE_VERSION_MAJOR) + "." + std::to_string(HALIDE_VERSION_MINOR) + "." +
           std::to_string(HALIDE_VERSION_PATCH);
}

SearchSpace search_space(const Workload &w) {
    if (w.generator == "decode") return adapt<DecodeCpuSchedule>(decode_config(w));
    return adapt<DenseCpuSchedule>(dense_config(w));
}

json hand_point(const Workload &w) {
    if (w.generator == "decode") return schedule_to_json(hand_schedule(decode_config(w)));
    return schedule_to_json(hand_schedule(dense_config(w)));
}

std::string build_runtime(const std::string &dir, const std::string &target) {
    std::filesystem::create_directories(dir);
    const std::string so = dir + "/libvashista_halide_runtime.so";
    if (std::filesystem::exists(so)) return so;
    const std::string object = dir + "/halide_runtime.o";
    Halide::compile_standalone_runtime(object, Halide::Target(resolve_target(target)));
    if (run_command("c++ -shared -o '" + so + "' '" + object + "' -lpthread -ldl") != 0)
        throw std::runtime_error("linking the Halide runtime into " + so + " failed");
    std::filesystem::remove(object);
    return so;
}

BuildResult build_candidate(const BuildRequest &r) {
    BuildResult result;
    result.function = r.name;
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    std::filesystem::create_directories(r.dir);
    const std::string object = r.dir + "/" + r.name + ".o";
    const std::string library = r.dir + "/lib" + r.name + ".so";
    const std::string error_file = r.dir + "/" + r.name + ".error";
    std::filesystem::remove(error_file);

    std::fflush(nullptr);
    const pid_t child = fork();
    if (child < 0) {
        result.error = "fork failed";
        return result;
    }
    if (child == 0) {
        static CandidateReporter reporter;
        Halide::set_custom_compile_time_error_reporter(&reporter);
        int code = 0;
        try {
            compile_object(r, object);
        } catch (const std::exception &e) {
            if (FILE *f = std::fopen(error_file.c_str(), "w")) {
                std::fputs(e.what(), f);
                std::fclose(f);
            }
            code = 1;
        }
        std::_Exit(code);
    }
    int status = 0;
    for (;;) {
        const pid_t done = waitpid(child, &status, WNOHANG);
        if (done == child) break;
        if (elapsed() > r.timeout_s) {
            kill(child, SIGKILL);
            waitpid(child, &status, 0);
            result.status = "timeout";
            result.error = "compilation exceeded " + std::to_string(int(r.timeout_s)) + " s";
            result.seconds = elapsed();
            return result;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        std::string message = "compiler process failed";
        if (FILE *f = std::fopen(error_file.c_str(), "r")) {
            char buf[4096];
            const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
            buf[n] = 0;
            message = buf;
            std::fclose(f);
        } else if (WIFSIGNALED(status)) {
            message = "compiler process killed by signal " + std::to_string(WTERMSIG(status));
        }
        result.error = message;
        result.seconds = elapsed();
        return result;
    }
    if (run_command("c++ -shared -o '" + library + "' '" + object + "'") != 0) {
        result.error = "linking " + library + " failed";
        result.seconds = elapsed();
        return result;
    }
    std::filesystem::remove(object);
    result.status = "ok";
    result.library = library;
    result.seconds = elapsed();
    return result;
}

}  // namespace vashista::tune
