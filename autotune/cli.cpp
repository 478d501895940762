// vashista: tune schedules, query and merge tuning databases, build tuned kernel
// libraries, and benchmark schedules against Halide's autoschedulers.
#include "attention_task.h"
#include "tuner.h"

#include "measure.h"

#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>

#ifndef VASHISTA_SOURCE_DIR
#define VASHISTA_SOURCE_DIR "."
#endif

namespace fs = std::filesystem;
using namespace vashista;
using namespace vashista::tune;

namespace {

const char *kDefaultDb = VASHISTA_SOURCE_DIR "/autotune/db/cpu.jsonl";

const char *kUsage =
    "usage: vashista <command> [options]\n"
    "\n"
    "commands:\n"
    "  tune       search schedules for workloads and record them in a database\n"
    "  db         show | best | merge | ingest tuning databases\n"
    "  bench      measure schedules: --compare-schedulers (hand, tuned, autoschedulers);\n"
    "             --sweep: sparse vs dense vs llama.cpp over context lengths (make bench)\n"
    "  bundle     build candidates and a runner to measure on another machine\n"
    "  build-lib  build a static kernel library from a database's best schedules\n"
    "  quality    a real model decoding with sparse attention against dense (make quality)\n"
    "  diagnose   per head of a layer dump: support gap, mass captured, bound, recommendation\n"
    "\n"
    "`vashista <command> --help` describes each.\n";

struct Args {
    std::vector<std::string> positional;
    std::map<std::string, std::string> options;
    std::set<std::string> flags;
};

[[noreturn]] void fail(const std::string &message) {
    std::fprintf(stderr, "vashista: %s\n", message.c_str());
    std::exit(2);
}

// --key value options; `flag_names` take no value.
Args parse(int argc, char **argv, int first, const std::set<std::string> &value_names,
           const std::set<std::string> &flag_names, const char *help) {
    Args a;
    for (int i = first; i < argc; ++i) {
        std::string s = argv[i];
        if (s == "--help" || s == "-h") {
            std::fputs(help, stdout);
            std::exit(0);
        }
        if (s.rfind("--", 0) == 0) {
            if (flag_names.count(s)) {
                a.flags.insert(s);
            } else if (value_names.count(s)) {
                if (i + 1 >= argc) fail("option " + s + " needs a value");
                a.options[s] = argv[++i];
            } else {
                fail("unknown option " + s + " (see --help)");
            }
        } else {
            a.positional.push_back(s);
        }
    }
    return a;
}

std::string opt(const Args &a, const std::string &k, const std::string &def) {
    auto it = a.options.find(k);
    return it == a.options.end() ? def : it->second;
}

int int_opt(const Args &a, const std::string &k, int def) {
    const std::string v = opt(a, k, std::to_string(def));
    try {
        size_t used = 0;
        int x = std::stoi(v, &used);
        if (used != v.size()) throw std::invalid_argument(v);
        return x;
    } catch (...) {
        fail("option " + k + " = '" + v + "' is not an integer");
    }
}

double double_opt(const Args &a, const std::string &k, double def) {
    const std::string v = opt(a, k, std::to_string(def));
    try {
        return std::stod(v);
    } catch (...) {
        fail("option " + k + " = '" + v + "' is not a number");
    }
}

const std::set<std::string> kWorkloadOptions = {"--tokens", "--generator", "--target", "--workloads", "--shard"};

std::set<std::string> with_workload_options(std::set<std::string> names) {
    names.insert(kWorkloadOptions.begin(), kWorkloadOptions.end());
    return names;
}

const char *kWorkloadHelp =
    "workload options:\n"
    "  --tokens 8192,32768,131072  context lengths (default: the three)\n"
    "  --generator decode|dense    which kernel (default decode)\n"
    "  --target host               Halide target (default host)\n"
    "  --workloads FILE.json       a JSON list of workloads instead of the defaults\n"
    "  --shard i/n                 only workloads with index % n == i\n";

std::vector<Workload> workloads_from(const Args &a) {
    std::vector<Workload> ws;
    const std::string target = resolve_target(opt(a, "--target", "host"));
    if (a.options.count("--workloads")) {
        std::ifstream in(a.options.at("--workloads"));
        if (!in) fail("cannot read " + a.options.at("--workloads"));
        json j = json::parse(in, nullptr, false);
        if (!j.is_array()) fail(a.options.at("--workloads") + " is not a JSON list of workloads");
        for (const auto &e : j) {
            Workload w = Workload::from_json(e);
            w.target = resolve_target(w.target);
            ws.push_back(w);
        }
    } else {
        for (int t : bench::parse_int_list(opt(a, "--tokens", "8192,32768,131072"))) {
            Workload w;
            w.target = target;
            w.generator = opt(a, "--generator", "decode");
            w.tokens = t;
            ws.push_back(w);
        }
    }
    if (a.options.count("--shard")) {
        try {
            ws = shard(ws, a.options.at("--shard"));
        } catch (const std::exception &e) {
            fail(e.what());
        }
    }
    return ws;
}

void report_problems(const Database &db) {
    for (const auto &p : db.problems()) std::fprintf(stderr, "warning: %s\n", p.c_str());
}

int cmd_tune(int argc, char **argv) {
    static const std::string help =
        std::string(
            "usage: vashista tune [options]\n"
            "Searches schedules per workload: the hand schedule first, then the strategy's picks.\n"
            "Every candidate is built, checked against the reference, timed cold, and appended to\n"
            "the database; a killed run resumes where it stopped.\n"
            "  --db FILE            tuning database (default autotune/db/cpu.jsonl)\n"
            "  --trials N           trials per workload, the hand schedule included (default 40)\n"
            "  --minutes M          wall-time limit per workload (default none)\n"
            "  --seed S             strategy seed (default 1)\n"
            "  --strategy evolutionary|random\n"
            "  --work DIR           scratch folder for candidates (default build/tune)\n"
            "  --verify             rerun the verification round (finalists against the hand schedule)\n") +
        kWorkloadHelp;
    const std::set<std::string> names =
        with_workload_options({"--db", "--trials", "--minutes", "--seed", "--strategy", "--work"});
    Args a = parse(argc, argv, 2, names, {"--verify"}, help.c_str());
    TuneOptions o;
    o.trials = int_opt(a, "--trials", 40);
    o.minutes = double_opt(a, "--minutes", 0);
    o.seed = uint64_t(int_opt(a, "--seed", 1));
    o.strategy = opt(a, "--strategy", "evolutionary");
    o.work_dir = opt(a, "--work", "build/tune");
    o.verify = a.flags.count("--verify") > 0;
    if (o.strategy != "evolutionary" && o.strategy != "random") fail("--strategy must be evolutionary or random");
    Database db(opt(a, "--db", kDefaultDb));
    report_problems(db);
    const auto ws = workloads_from(a);
    for (size_t i = 0; i < ws.size(); ++i) {
        std::fprintf(stderr, "[%zu/%zu] tuning %s\n", i + 1, ws.size(), ws[i].key().c_str());
        TuneResult r = tune_task(AttentionTask(ws[i]), o, db, std::cerr);
        std::fprintf(stderr, "[%zu/%zu] best %.3f ms (hand %.3f ms, %.2fx) after %d trials, %d failed, %d wrong\n",
                     i + 1, ws.size(), r.best_ms, r.hand_ms, r.best_ms > 0 ? r.hand_ms / r.best_ms : 0.0, r.trials,
                     r.failed, r.wrong);
    }
    return 0;
}

int cmd_db(int argc, char **argv) {
    const char *help =
        "usage: vashista db <show|best|merge|ingest> ...\n"
        "  db show [--db FILE]                        records per workload and the best time\n"
        "  db best [--db FILE] [--workload KEY]       the best record(s) as JSON lines\n"
        "  db merge OUT IN [IN...]                    join databases from several machines\n"
        "  db ingest RESULTS [--db FILE]              add a bundle's results to a database\n";
    if (argc < 3) fail("db needs a subcommand (see vashista db --help)");
    const std::string sub = argv[2];
    if (sub == "--help" || sub == "-h") {
        std::fputs(help, stdout);
        return 0;
    }
    Args a = parse(argc, argv, 3, {"--db", "--workload"}, {}, help);
    if (sub == "show") {
        Database db(opt(a, "--db", kDefaultDb));
        report_problems(db);
        std::printf("%s: %zu records\n", db.path().c_str(), db.records().size());
        for (const auto &key : db.workload_keys()) {
            int ok = 0, bad = 0;
            double hand = 0;
            for (const auto &r : db.records())
                if (r["workload_key"] == key) {
                    (r["status"] == "ok" ? ok : bad)++;
                    if (r.value("kind", "") == "hand" && r["status"] == "ok") hand = r["median_ms"];
                }
            auto best = db.best(key);
            if (best && best->value("kind", "") == "final")
                std::printf(
                    "%s\n   %d ok, %d failed or wrong; verified best %.3f ms against hand %.3f ms in the same run "
                    "(median paired ratio %.3f)\n",
                    key.c_str(), ok, bad, (*best)["median_ms"].get<double>(), best->value("hand_ms", 0.0),
                    best->value("paired_ratio_vs_hand", 1.0));
            else
                std::printf("%s\n   %d ok, %d failed or wrong; best %.3f ms; hand %.3f ms\n", key.c_str(), ok, bad,
                            best ? (*best)["median_ms"].get<double>() : 0.0, hand);
        }
        return 0;
    }
    if (sub == "best") {
        Database db(opt(a, "--db", kDefaultDb));
        report_problems(db);
        for (const auto &key : db.workload_keys()) {
            if (a.options.count("--workload") && key != a.options.at("--workload")) continue;
            if (auto b = db.best(key)) std::printf("%s\n", b->dump().c_str());
        }
        return 0;
    }
    if (sub == "merge") {
        if (a.positional.size() < 2) fail("db merge needs OUT and at least one IN");
        std::vector<std::string> in(a.positional.begin() + 1, a.positional.end());
        size_t n = 0;
        for (const auto &p : merge_databases(in, a.positional[0], &n)) std::fprintf(stderr, "warning: %s\n", p.c_str());
        std::printf("wrote %zu records to %s\n", n, a.positional[0].c_str());
        return 0;
    }
    if (sub == "ingest") {
        if (a.positional.size() != 1) fail("db ingest needs one RESULTS file");
        const std::string db_path = opt(a, "--db", kDefaultDb);
        size_t n = 0;
        for (const auto &p : merge_databases({db_path, a.positional[0]}, db_path, &n))
            if (p.find("no such file") == std::string::npos || p.rfind(db_path, 0) != 0)
                std::fprintf(stderr, "warning: %s\n", p.c_str());
        std::printf("%s now holds %zu records\n", db_path.c_str(), n);
        return 0;
    }
    fail("unknown db subcommand '" + sub + "' (show, best, merge, ingest)");
}

// Builds one schedule kind for a workload; a failure becomes a record, not an exit.
std::pair<json, BuildResult> build_kind(const Workload &w, const std::string &kind, const json &schedule,
                                        const std::string &work) {
    const bool autosched = kind != "hand" && kind != "tuned";
    std::fprintf(stderr, "  building %s%s\n", kind.c_str(),
                 autosched ? " (autoscheduler; Adams2019 takes minutes)" : "");
    BuildResult built = build_candidate(
        build_request(AttentionTask(w), schedule, autosched ? kind : "", work + "/bench",
                      "bench_" + std::to_string(std::hash<std::string>{}(w.key() + kind + schedule.dump())), 1800));
    json r = {{"schedule", kind}, {"T", w.tokens}, {"workload_key", w.key()}, {"build_s", built.seconds}};
    if (!autosched) r["schedule_knobs"] = schedule;
    if (built.status != "ok") {
        r["status"] = built.status;
        r["error"] = built.error;
    }
    return {r, built};
}

int cmd_bench(int argc, char **argv) {
    // vashista bench --sweep [options]: the sweep `make bench` runs (bench/sweep), a program of
    // its own because it links llama.cpp's ggml; its options are its own (--help).
    if (argc > 2 && std::string(argv[2]) == "--sweep") {
        const fs::path sweep = fs::path(argv[0]).parent_path() / "vashista_bench";
        if (!fs::exists(sweep))
            fail("vashista bench --sweep runs " + sweep.string() +
                 ", which is not built: `make bench` or `make bench-quick` builds it (with llama.cpp's ggml)");
        std::vector<char *> args{const_cast<char *>(sweep.c_str())};
        for (int i = 3; i < argc; ++i) args.push_back(argv[i]);
        args.push_back(nullptr);
        execv(sweep.c_str(), args.data());
        fail("could not run " + sweep.string() + ": " + std::strerror(errno));
    }
    static const std::string help =
        std::string(
            "usage: vashista bench --compare-schedulers [options]\n"
            "       vashista bench --sweep [options]   (make bench's sweep: vashista bench --sweep --help)\n"
            "Measures the fused decode per workload with the hand schedule, the tuned schedule\n"
            "(the database's best) and Halide's CPU autoschedulers (Mullapudi2016, Adams2019,\n"
            "Li2018) applied to the same definitions: cold cache, median of repeats, each checked\n"
            "against the reference. An autoscheduler that fails is recorded with its error.\n"
            "  --json FILE     results (default build/compare.json)\n"
            "  --plot FILE     PNG bar chart (default: the JSON path with .png)\n"
            "  --db FILE       tuning database (default autotune/db/cpu.jsonl)\n"
            "  --retune        search again (--trials, --minutes, --seed) before measuring\n"
            "  --trials N  --minutes M  --seed S\n"
            "  --reps N        timed runs per schedule, round-robin across schedules (default 15)\n"
            "  --work DIR      scratch folder (default build/tune)\n") +
        kWorkloadHelp;
    const std::set<std::string> names =
        with_workload_options({"--json", "--plot", "--db", "--trials", "--minutes", "--seed", "--work", "--reps"});
    Args a = parse(argc, argv, 2, names, {"--compare-schedulers", "--retune"}, help.c_str());
    if (!a.flags.count("--compare-schedulers")) fail("bench needs --compare-schedulers (see --help)");
    const std::string json_path = opt(a, "--json", "build/compare.json");
    std::string plot = opt(a, "--plot", fs::path(json_path).replace_extension(".png").string());
    const std::string work = opt(a, "--work", "build/tune");
    Database db(opt(a, "--db", kDefaultDb));
    report_problems(db);
    json records = json::array();
    const auto ws = workloads_from(a);
    for (size_t i = 0; i < ws.size(); ++i) {
        const Workload &w = ws[i];
        if (a.flags.count("--retune")) {
            TuneOptions o;
            o.trials = int_opt(a, "--trials", 40);
            o.minutes = double_opt(a, "--minutes", 0);
            o.seed = uint64_t(int_opt(a, "--seed", 1));
            o.work_dir = work;
            tune_task(AttentionTask(w), o, db, std::cerr);
        }
        const AttentionTask task(w);
        load_runtime(build_runtime(work, task.target()));
        std::fprintf(stderr, "[%zu/%zu] T=%d: preparing synthetic KV and the reference\n", i + 1, ws.size(), w.tokens);
        Runner runner(task.instantiate());
        auto best = db.best(w.key());
        std::vector<std::pair<std::string, json>> kinds = {{"hand", task.hand_point()}};
        // The same schedule is the same kernel: measured once, reported for both.
        const bool tuned_is_hand = best && (*best)["schedule"] == task.hand_point();
        if (best && !tuned_is_hand) kinds.push_back({"tuned", (*best)["schedule"]});
        for (const char *as : {"Mullapudi2016", "Adams2019", "Li2018"}) kinds.push_back({as, json::object()});
        if (!best) {
            records.push_back({{"schedule", "tuned"},
                               {"T", w.tokens},
                               {"status", "not_tuned"},
                               {"error", "no record for " + w.key() + " in " + db.path() + " (run with --retune)"}});
            std::fprintf(stderr, "  tuned: no record for this workload in %s (use --retune)\n", db.path().c_str());
        }
        std::vector<json> rows;
        std::vector<std::pair<std::string, std::string>> built;
        std::vector<size_t> built_row;
        for (const auto &[kind, sched] : kinds) {
            auto [r, b] = build_kind(w, kind, sched, work);
            if (b.status == "ok") {
                built.push_back({b.library, b.function});
                built_row.push_back(rows.size());
            }
            rows.push_back(r);
        }
        const int reps = int_opt(a, "--reps", 15);
        std::vector<Measurement> ms = runner.measure_interleaved(built, reps);
        for (size_t k = 0; k < ms.size(); ++k) {
            json &r = rows[built_row[k]];
            const Measurement &m = ms[k];
            if (m.status == "ok" && ms[0].status == "ok" && built_row[0] == 0)
                r["speedup_vs_hand_paired"] = 1.0 / compare_paired(m, ms[0]).median_ratio;
            r["status"] = m.status;
            r["max_abs_err"] = m.max_abs_err;
            if (!m.error.empty()) r["error"] = m.error;
            if (m.status == "ok") {
                r["median_ms"] = m.median_ms;
                r["min_ms"] = m.min_ms;
                r["max_ms"] = m.max_ms;
                r["reps"] = m.reps;
            }
        }
        if (tuned_is_hand) {
            json same = rows[0];
            same["schedule"] = "tuned";
            same["same_as"] = "hand";
            rows.insert(rows.begin() + 1, same);
        }
        for (const json &r : rows) {
            if (r["status"] == "ok")
                std::fprintf(stderr, "  %-14s %8.3f ms  (min %.3f, max %.3f)  %.2fx hand (paired)  max err %.2g\n",
                             r["schedule"].get<std::string>().c_str(), r["median_ms"].get<double>(),
                             r["min_ms"].get<double>(), r["max_ms"].get<double>(),
                             r.value("speedup_vs_hand_paired", 1.0), r["max_abs_err"].get<double>());
            else
                std::fprintf(stderr, "  %-14s %s: %s\n", r["schedule"].get<std::string>().c_str(),
                             r["status"].get<std::string>().c_str(), r.value("error", "").substr(0, 200).c_str());
            records.push_back(r);
        }
    }
    bench::write_json(json_path, records);
    std::fprintf(stderr, "wrote %s\n", json_path.c_str());
    const std::string script = std::string(VASHISTA_SOURCE_DIR) + "/tools/plot_compare.py";
    const std::string python = std::string(VASHISTA_SOURCE_DIR) + "/.venv/bin/python";
    if (fs::exists(python) &&
        std::system(("'" + python + "' '" + script + "' '" + json_path + "' '" + plot + "'").c_str()) == 0)
        std::fprintf(stderr, "wrote %s\n", plot.c_str());
    else
        std::fprintf(stderr, "warning: no plot written (needs .venv with matplotlib; run tools/setup.sh)\n");
    return 0;
}

int cmd_bundle(int argc, char **argv) {
    static const std::string help =
        std::string(
            "usage: vashista bundle --out DIR [options]\n"
            "Builds candidates for measuring on another machine of the target kind: DIR holds\n"
            "the shared objects, the Halide runtime, manifest.json and the runner program. There:\n"
            "  DIR/vashista-runner DIR            (writes DIR/results.jsonl)\n"
            "then here: vashista db ingest DIR/results.jsonl\n"
            "  --out DIR         the bundle (required)\n"
            "  --trials N        candidates per workload: the hand schedule, then random points (default 16)\n"
            "  --seed S\n") +
        kWorkloadHelp;
    const std::set<std::string> names = with_workload_options({"--out", "--trials", "--seed"});
    Args a = parse(argc, argv, 2, names, {}, help.c_str());
    if (!a.options.count("--out")) fail("bundle needs --out DIR");
    const std::string dir = a.options.at("--out");
    const int trials = int_opt(a, "--trials", 16);
    const uint64_t seed = uint64_t(int_opt(a, "--seed", 1));
    json manifest = {{"halide_version", halide_version()}, {"candidates", json::array()}};
    const auto ws = workloads_from(a);
    for (const auto &w : ws) {
        const AttentionTask task(w);
        build_runtime(dir, task.target());
        RandomStrategy strategy(task.space(), seed);
        for (int t = 0; t < trials; ++t) {
            json point = t == 0 ? task.hand_point() : strategy.propose();
            BuildResult b = build_candidate(
                build_request(task, point, "", dir, "cand_" + std::to_string(manifest["candidates"].size()), 600));
            std::fprintf(stderr, "  %s %d/%d: %s\n", w.key().c_str(), t + 1, trials, b.status.c_str());
            json c = {{"workload", w.to_json()},
                      {"schedule", point},
                      {"kind", t == 0 ? "hand" : "search"},
                      {"trial", t},
                      {"seed", seed},
                      {"build_s", b.seconds},
                      {"status", b.status}};
            if (b.status == "ok") {
                c["library"] = fs::path(b.library).filename().string();
                c["function"] = b.function;
            } else {
                c["error"] = b.error;
            }
            manifest["candidates"].push_back(c);
        }
    }
    std::ofstream(dir + "/manifest.json") << manifest.dump(2) << "\n";
    const fs::path runner = fs::path(argv[0]).parent_path() / "vashista-runner";
    if (!fs::exists(runner))
        fail("the runner program " + runner.string() + " is missing; build target vashista-runner");
    fs::copy_file(runner, fs::path(dir) / "vashista-runner", fs::copy_options::overwrite_existing);
    std::printf("wrote %s: %zu candidates, manifest.json, vashista-runner\n", dir.c_str(),
                manifest["candidates"].size());
    return 0;
}

int cmd_build_lib(int argc, char **argv) {
    static const std::string help =
        std::string(
            "usage: vashista build-lib --out DIR [options]\n"
            "Builds a static kernel library (libNAME.a, vashista.h, dispatch table) for the\n"
            "workloads from the database's best schedules; a workload never tuned uses the hand\n"
            "schedule, and says so. Besides the workloads' kernels it holds what their caches\n"
            "need: summaries for their KV and summary dtypes and layouts, the sketch for sketch\n"
            "routing, dense kernels for the decode shapes (the fallback). Drives CMake (this\n"
            "build's, with its Halide) with vashista_add_kernel_library; for\n"
            "--target arm-64-linux[-...] it cross-builds with Debian's AArch64 toolchain\n"
            "(crossbuild-essential-arm64) and this build's generator executable.\n"
            "  --out DIR        output folder (required)\n"
            "  --name NAME      library name (default vashista_tuned)\n"
            "  --db FILE        tuning database (default autotune/db/cpu.jsonl)\n") +
        kWorkloadHelp;
    const std::set<std::string> names = with_workload_options({"--out", "--name", "--db"});
    Args a = parse(argc, argv, 2, names, {}, help.c_str());
    if (!a.options.count("--out")) fail("build-lib needs --out DIR");
    const fs::path out = fs::absolute(a.options.at("--out"));
    const std::string name = opt(a, "--name", "vashista_tuned");
    Database db(opt(a, "--db", kDefaultDb));
    report_problems(db);
    fs::create_directories(out / "schedules");
    // One kernel per shape serves every context length: the schedule tuned for the
    // longest T bucket is used, where the step time matters most.
    std::vector<Workload> ws = workloads_from(a);
    std::stable_sort(ws.begin(), ws.end(), [](const Workload &x, const Workload &y) { return x.tokens < y.tokens; });
    std::map<std::string, std::pair<std::string, std::string>> chosen;  // shape -> (generator, spec)
    // What a cache of the workloads' shapes needs besides: summaries (every append) in the
    // workloads' KV and summary dtypes and layouts, the sketch for sketch routing, and a dense
    // kernel per decode shape (the policy's fallback) where no dense workload gives one.
    std::set<std::string> summarize, sketch, dense_shapes, dense_fallback;
    for (const auto &w : ws) {
        const std::string base = "head_dim=" + std::to_string(w.head_dim) +
                                 ":page_size=" + std::to_string(w.page_size) + ":kv_type=" + w.kv_type +
                                 ":layout=" + w.layout;
        summarize.insert(base + ":summary_type=" + w.summary_type);
        if (w.sketch())
            sketch.insert(base + ":sketch_bits=" + std::to_string(w.sketch_bits) +
                          ":sketch_group=" + std::to_string(w.sketch_group));
        const std::string dense_shape = base + ":group_size=" + std::to_string(w.group_size);
        (w.generator == "dense" ? dense_shapes : dense_fallback).insert(dense_shape);
    }
    for (const auto &w : ws) {
        // The same query the kernel library's CMake makes (vashista_tuned_spec).
        const QueryResult found =
            query_best(db.records(), variant_query(w.generator, workload_params(w.to_json()), w.target, w.tokens));
        const auto &best = found.best;
        std::string spec = "head_dim=" + std::to_string(w.head_dim) + ":page_size=" + std::to_string(w.page_size) +
                           ":group_size=" + std::to_string(w.group_size) + ":kv_type=" + w.kv_type +
                           ":layout=" + w.layout;
        if (w.generator == "decode") {
            std::ostringstream params;
            params << ":top_pages=" << w.top_pages << ":top_tokens=" << w.top_tokens
                   << ":summary_type=" << w.summary_type << ":solver=" << w.solver << ":routing=" << w.routing
                   << ":group_routing=" << w.group_routing << ":sink_pages=" << w.sink_pages
                   << ":local_pages=" << w.local_pages << ":solver_steps=" << w.solver_steps
                   << ":solver_eta=" << w.solver_eta << ":solver_tau=" << w.solver_tau;
            spec += params.str();
        }
        if (w.sketch())
            spec += ":sketch_bits=" + std::to_string(w.sketch_bits) + ":sketch_group=" + std::to_string(w.sketch_group);
        const std::string shape = w.generator + ":" + spec;
        if (best) {
            const fs::path file = out / "schedules" / (w.generator + "_T" + std::to_string(w.tokens) + ".json");
            std::ofstream(file) << (*best)["schedule"].dump(2) << "\n";
            spec += ":schedule_file=" + file.string();
            std::printf("%s: tuned schedule, %.3f ms, %s\n", w.key().c_str(), (*best)["median_ms"].get<double>(),
                        found.how.c_str());
        } else {
            std::printf("%s: never tuned, using the hand schedule\n", w.key().c_str());
        }
        chosen[shape] = {w.generator, spec};
    }
    std::ostringstream decode, dense, summarize_specs, sketch_specs;
    for (const auto &[shape, gs] : chosen) (gs.first == "decode" ? decode : dense) << "    \"" << gs.second << "\"\n";
    for (const auto &spec : dense_fallback)
        if (!dense_shapes.count(spec)) {
            dense << "    \"" << spec << "\"\n";
            std::printf("dense %s: the decode policy's fallback, hand schedule\n", spec.c_str());
        }
    for (const auto &spec : summarize) summarize_specs << "    \"" << spec << "\"\n";
    for (const auto &spec : sketch) sketch_specs << "    \"" << spec << "\"\n";
    // Another architecture: a standalone project (cmake/VashistaStandalone.cmake) with a cross
    // toolchain and this build's generator executable.
    const std::string target = opt(a, "--target", "host");
    auto triple = [](const std::string &t) {  // arch-bits-os
        size_t at = 0;
        for (int i = 0; i < 3 && at != std::string::npos; ++i) at = t.find('-', at + (i > 0));
        return t.substr(0, at);
    };
    const std::string want = triple(resolve_target(target));
    const bool cross = want != triple(resolve_target("host"));
    std::string toolchain;
    if (cross) {
        if (want != "arm-64-linux")
            fail("build-lib: no cross toolchain for target " + target + " (AArch64 Linux, arm-64-linux, is supported)");
        toolchain = std::string(VASHISTA_SOURCE_DIR) + "/cmake/aarch64-linux-gnu.cmake";
    }
    std::ofstream cm(out / "CMakeLists.txt");
    cm << "cmake_minimum_required(VERSION 3.28)\nproject(" << name << " LANGUAGES C CXX)\n";
    if (cross)
        cm << "set(VASHISTA_GENERATOR \"" << VASHISTA_GENERATOR_PATH << "\")\ninclude(\"" << VASHISTA_SOURCE_DIR
           << "/cmake/VashistaStandalone.cmake\")\n";
    else  // a subproject: no tests, no install rules (their options default to off there)
        cm << "find_package(Halide 21 REQUIRED)\nadd_subdirectory(\"" << VASHISTA_SOURCE_DIR
           << "\" vashista EXCLUDE_FROM_ALL)\n";
    cm << "vashista_add_kernel_library(" << name << " TARGET " << target << "\n  DECODE\n"
       << decode.str() << "  DENSE\n"
       << dense.str() << "  SUMMARIZE\n"
       << summarize_specs.str();
    if (!sketch.empty()) cm << "  SKETCH\n" << sketch_specs.str();
    cm << ")\nset_target_properties(" << name << " PROPERTIES EXCLUDE_FROM_ALL OFF)\n";
    cm.close();
    // This build's CMake and Halide (VASHISTA_CMAKE_COMMAND and the Halide package CMake found
    // for it: the top-level CMakeLists.txt defines them), so nothing depends on where a Python
    // environment keeps its packages.
    const std::string cmake = VASHISTA_CMAKE_COMMAND;
    const std::string configure = "'" + cmake + "' -S '" + out.string() + "' -B '" + (out / "build").string() +
                                  "' -DCMAKE_BUILD_TYPE=Release -DHalide_DIR='" + VASHISTA_HALIDE_DIR +
                                  "' -DHalideHelpers_DIR='" + VASHISTA_HALIDE_HELPERS_DIR + "'" +
                                  (cross ? " -DCMAKE_TOOLCHAIN_FILE='" + toolchain + "'" : std::string()) + " > '" +
                                  (out / "configure.log").string() + "' 2>&1";
    if (std::system(configure.c_str()) != 0)
        fail("configuring " + (out / "build").string() + " failed (with " + cmake + ", Halide from " +
             VASHISTA_HALIDE_DIR + "); its output is in " + (out / "configure.log").string());
    if (std::system(
            ("'" + cmake + "' --build '" + (out / "build").string() + "' --target " + name + " -j 2").c_str()) != 0)
        fail("building " + name + " failed");
    // One self-contained archive: the dispatch table and runtime, every variant, the
    // Halide runtime.
    std::ostringstream mri;
    mri << "create " << (out / ("lib" + name + ".a")).string() << "\n";
    for (const auto &e : fs::recursive_directory_iterator(out / "build"))
        if (e.path().extension() == ".a" && e.path().filename().string().rfind("lib" + name, 0) == 0)
            mri << "addlib " << e.path().string() << "\n";
    mri << "save\nend\n";
    std::ofstream(out / "merge.mri") << mri.str();
    fs::remove(out / ("lib" + name + ".a"));
    if (std::system(("ar -M < '" + (out / "merge.mri").string() + "'").c_str()) != 0)
        fail("merging the archives failed");
    fs::remove(out / "merge.mri");
    for (const char *header : {"vashista.h", "vashista_prefix.h"})  // vashista.h includes the second
        fs::copy_file(fs::path(VASHISTA_SOURCE_DIR) / "runtime/include" / header, out / header,
                      fs::copy_options::overwrite_existing);
    std::printf(
        "wrote %s/lib%s.a and %s/vashista.h (with vashista_prefix.h); link with: -l%s -lstdc++ -lpthread "
        "-ldl -lm\n",
        out.string().c_str(), name.c_str(), out.string().c_str(), name.c_str());
    return 0;
}

}  // namespace

// quality and diagnose are Python (quality/vashista_quality), run with the project's .venv.
int cmd_python(const char *module, int argc, char **argv) {
    const std::string python = VASHISTA_SOURCE_DIR "/.venv/bin/python";
    std::string path = VASHISTA_SOURCE_DIR "/quality";
    if (const char *old = std::getenv("PYTHONPATH"); old && *old) path += std::string(":") + old;
    setenv("PYTHONPATH", path.c_str(), 1);
    std::vector<char *> args{const_cast<char *>(python.c_str()), const_cast<char *>("-m"), const_cast<char *>(module)};
    for (int i = 2; i < argc; ++i) args.push_back(argv[i]);
    args.push_back(nullptr);
    execv(python.c_str(), args.data());
    fail("cannot run " + python + ": " + std::strerror(errno) + " (tools/setup.sh installs it)");
}

int main(int argc, char **argv) {
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
        std::fputs(kUsage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const std::string cmd = argv[1];
    try {
        if (cmd == "tune") return cmd_tune(argc, argv);
        if (cmd == "db") return cmd_db(argc, argv);
        if (cmd == "bench") return cmd_bench(argc, argv);
        if (cmd == "bundle") return cmd_bundle(argc, argv);
        if (cmd == "build-lib") return cmd_build_lib(argc, argv);
        if (cmd == "quality") return cmd_python("vashista_quality.quality", argc, argv);
        if (cmd == "diagnose") return cmd_python("vashista_quality.diagnose", argc, argv);
    } catch (const std::exception &e) {
        fail(e.what());
    }
    fail("unknown command '" + cmd + "'\n" + kUsage);
}
