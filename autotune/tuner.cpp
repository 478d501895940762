#include "tuner.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <iomanip>
#include <ostream>
#include <sstream>

namespace vashista::tune {

namespace {

std::string candidate_name(const Workload &w, const json &schedule, const std::string &kind) {
    std::ostringstream os;
    os << "cand_" << std::hex << std::hash<std::string>{}(w.key() + schedule.dump() + kind);
    return os.str();
}

std::unique_ptr<Strategy> make_strategy(const std::string &name, SearchSpace space, uint64_t seed) {
    if (name == "random") return std::make_unique<RandomStrategy>(std::move(space), seed);
    if (name == "evolutionary") return std::make_unique<EvolutionaryStrategy>(std::move(space), seed);
    throw std::invalid_argument("strategy '" + name + "' is not evolutionary or random");
}

std::string clock(double seconds) {
    std::ostringstream os;
    os << int(seconds) / 60 << ":" << std::setw(2) << std::setfill('0') << int(seconds) % 60;
    return os.str();
}

}  // namespace

TuneResult tune_workload(const Workload &w, const TuneOptions &opt, Database &db, std::ostream &log) {
    TuneResult result;
    const std::string key = w.key();
    auto strategy = make_strategy(opt.strategy, search_space(w), opt.seed);
    const json hand = hand_point(w);
    bool hand_done = false;
    double best = kFailed;
    for (const auto &r : db.records()) {
        if (r.value("workload_key", "") != key || !r.contains("schedule") || r.value("kind", "") == "autoscheduler")
            continue;
        const double cost = r.value("status", "") == "ok" ? r["median_ms"].get<double>() : kFailed;
        strategy->observe(r["schedule"], cost);
        ++result.resumed;
        if (r["schedule"] == hand) {
            hand_done = true;
            if (cost < kFailed) result.hand_ms = cost;
        }
        if (cost < best) {
            best = cost;
            result.best_schedule = r["schedule"];
        }
        if (cost == kFailed) ++result.failed;
    }
    result.trials = result.resumed;
    if (result.resumed) log << "resuming " << key << ": " << result.resumed << " trials already in " << db.path() << "\n";

    const std::string runtime = build_runtime(opt.work_dir, w.target);
    load_runtime(runtime);
    log << "preparing " << key << " (synthetic KV and reference)\n" << std::flush;
    Runner runner(w, opt.measure);
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    const bool tty = isatty(fileno(stderr));
    int new_trials = 0;
    while (result.trials < opt.trials && !(opt.minutes > 0 && elapsed() > opt.minutes * 60)) {
        const bool first = !hand_done;
        json point = first ? hand : strategy->propose();
        hand_done = true;
        BuildRequest req{w, point, "", opt.work_dir + "/candidates", candidate_name(w, point, "search"), opt.build_timeout_s};
        BuildResult built = build_candidate(req);
        Measurement m;
        if (built.status == "ok") m = runner.measure(built.library, built.function);
        const json record = make_record(w, point, first ? "hand" : "search", {built.status, built.error, built.seconds},
                                        m, result.trials, opt.seed, halide_version());
        db.append(record);
        const double cost = record["status"] == "ok" ? m.median_ms : kFailed;
        strategy->observe(point, cost);
        if (built.status == "ok") std::remove(built.library.c_str());
        if (record["status"] != "ok") ++result.failed;
        if (record["status"] == "wrong") ++result.wrong;
        if (first && cost < kFailed) result.hand_ms = cost;
        if (cost < best) {
            best = cost;
            result.best_schedule = point;
        }
        ++result.trials;
        ++new_trials;
        const double per_trial = elapsed() / new_trials;
        double eta = per_trial * (opt.trials - result.trials);
        if (opt.minutes > 0) eta = std::min(eta, std::max(0.0, opt.minutes * 60 - elapsed()));
        std::ostringstream line;
        line << "  trial " << result.trials << "/" << opt.trials << "  failed " << result.failed << "  best "
             << std::fixed << std::setprecision(3) << (best < kFailed ? best : 0.0) << " ms  hand "
             << result.hand_ms << " ms  last " << (cost < kFailed ? std::to_string(cost).substr(0, 6) : record["status"].get<std::string>())
             << "  ETA " << clock(eta);
        std::fprintf(stderr, tty ? "\r%-100s" : "%s\n", line.str().c_str());
        if (record["status"] != "ok" && !tty) std::fprintf(stderr, "    %s: %s\n", record["status"].get<std::string>().c_str(),
                                                          record.value("error", "").substr(0, 300).c_str());
    }
    if (tty) std::fprintf(stderr, "\n");
    result.best_ms = best < kFailed ? best : 0;
    return result;
}

}  // namespace vashista::tune
