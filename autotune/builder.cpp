#include "builder.h"

#include "Halide.h"

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

void load_autoscheduler(const std::string &name) {
    static const std::pair<const char *, const char *> plugins[] = {
        {"Mullapudi2016", "mullapudi2016"}, {"Adams2019", "adams2019"}, {"Li2018", "li2018"}};
    for (auto [n, lib] : plugins)
        if (name == n) {
            Halide::load_plugin(std::string(VASHISTA_HALIDE_LIB_DIR) + "/libautoschedule_" + lib + ".so");
            return;
        }
    throw std::invalid_argument("autoscheduler '" + name + "' is not Mullapudi2016, Adams2019 or Li2018");
}

// Compiles the candidate to an object file as the generator executable would; runs in the child.
void compile_object(const BuildRequest &r) {
    Halide::Internal::ExecuteGeneratorArgs args;
    args.output_dir = r.dir;
    args.output_types = {Halide::OutputFileType::object};
    args.targets = {Halide::Target(resolve_target(r.target)).with_feature(Halide::Target::NoRuntime)};
    args.generator_name = r.generator;
    args.function_name = r.name;
    args.generator_params = r.params;
    if (!r.autoscheduler.empty()) {
        load_autoscheduler(r.autoscheduler);
        args.generator_params["autoscheduler"] = r.autoscheduler;
        args.generator_params["autoscheduler.parallelism"] = "2";
    }
    Halide::Internal::execute_generator(args);
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

// "host" and "host-<features>" name this machine's target (with those features).
std::string resolve_target(const std::string &target) { return Halide::Target(target).to_string(); }

BuildRequest build_request(const Task &task, const json &point, const std::string &autoscheduler,
                           const std::string &dir, const std::string &name, double timeout_s) {
    return {task.generator(), task.generator_params(point), task.target(), autoscheduler, dir, name, timeout_s};
}

std::string halide_version() {
    return std::to_string(HALIDE_VERSION_MAJOR) + "." + std::to_string(HALIDE_VERSION_MINOR) + "." +
           std::to_string(HALIDE_VERSION_PATCH);
}

std::string build_runtime(const std::string &dir, const std::string &target) {
    std::filesystem::create_directories(dir);
    const std::string so = dir + "/libvashista_halide_runtime.so";
    if (std::filesystem::exists(so)) return so;
    const std::string object = dir + "/halide_runtime.o";
    // The runtime takes no strict_float (its code generation refuses it); kernels compiled
    // with it call the same runtime.
    Halide::compile_standalone_runtime(
        object, Halide::Target(resolve_target(target)).without_feature(Halide::Target::StrictFloat));
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
            compile_object(r);
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
