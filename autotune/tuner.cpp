#include "tuner.h"

#include <unistd.h>

#include <algorithm>
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

std::string candidate_name(const Task &task, const json &schedule, const std::string &kind) {
    std::ostringstream os;
    os << "cand_" << std::hex << std::hash<std::string>{}(task.key() + schedule.dump() + kind);
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

TuneResult tune_task(const Task &task, const TuneOptions &opt, Database &db, std::ostream &log) {
    TuneResult result;
    const std::string key = task.key();
    auto strategy = make_strategy(opt.strategy, task.space(), opt.seed);
    const json hand = task.hand_point();
    bool hand_done = false;
    double best = kFailed;
    for (const auto &r : db.records()) {
        if (r.value("workload_key", "") != key || !r.contains("schedule") || r.value("kind", "") == "final") continue;
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
    if (result.resumed)
        log << "resuming " << key << ": " << result.resumed << " trials already in " << db.path() << "\n";

    const std::string runtime = build_runtime(opt.work_dir, task.target());
    load_runtime(runtime);
    log << "preparing " << key << " (inputs and reference)\n" << std::flush;
    Runner runner(task.instantiate(), opt.measure);
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    const bool tty = isatty(fileno(stderr));
    int new_trials = 0;
    while (result.trials < opt.trials && !(opt.minutes > 0 && elapsed() > opt.minutes * 60)) {
        const bool first = !hand_done;
        json point = first ? hand : strategy->propose();
        hand_done = true;
        BuildResult built = build_candidate(build_request(task, point, "", opt.work_dir + "/candidates",
                                                          candidate_name(task, point, "search"), opt.build_timeout_s));
        Measurement m;
        if (built.status == "ok") m = runner.measure(built.library, built.function);
        const json record =
            make_record(key, task.describe(), point, first ? "hand" : "search",
                        {built.status, built.error, built.seconds}, m, result.trials, opt.seed, halide_version());
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
             << std::fixed << std::setprecision(3) << (best < kFailed ? best : 0.0) << " ms  hand " << result.hand_ms
             << " ms  last "
             << (cost < kFailed ? std::to_string(cost).substr(0, 6) : record["status"].get<std::string>()) << "  ETA "
             << clock(eta);
        std::fprintf(stderr, tty ? "\r%-100s" : "%s\n", line.str().c_str());
        if (record["status"] != "ok" && !tty)
            std::fprintf(stderr, "    %s: %s\n", record["status"].get<std::string>().c_str(),
                         record.value("error", "").substr(0, 300).c_str());
    }
    if (tty) std::fprintf(stderr, "\n");
    result.best_ms = best < kFailed ? best : 0;
    if (opt.verify || new_trials > 0 || !db.best(key) || db.best(key)->value("kind", "") != "final") {
        const json winner = verify_finalists(task, opt, db, runner, log);
        if (winner.value("status", "") == "ok") {
            result.best_ms = winner["median_ms"];
            result.best_schedule = winner["schedule"];
            result.hand_ms = winner.value("hand_ms", result.hand_ms);
        }
    }
    return result;
}

json verify_finalists(const Task &task, const TuneOptions &opt, Database &db, Runner &runner, std::ostream &log) {
    const std::string key = task.key();
    const json hand = task.hand_point();
    std::vector<std::pair<double, json>> ranked;
    for (const auto &r : db.records())
        if (r.value("workload_key", "") == key && r.value("status", "") == "ok" && r.value("kind", "") != "final" &&
            r["schedule"] != hand)
            ranked.push_back({r["median_ms"].get<double>(), r["schedule"]});
    std::sort(ranked.begin(), ranked.end(), [](const auto &a, const auto &b) { return a.first < b.first; });
    std::vector<json> entrants{hand};
    for (const auto &[ms, sched] : ranked) {
        if (int(entrants.size()) > opt.finalists) break;
        if (std::find(entrants.begin(), entrants.end(), sched) == entrants.end()) entrants.push_back(sched);
    }
    std::vector<std::pair<std::string, std::string>> built;
    std::vector<json> built_schedules;
    BuildOutcome outcome{"ok", "", 0};
    for (const json &sched : entrants) {
        BuildResult b = build_candidate(build_request(task, sched, "", opt.work_dir + "/candidates",
                                                      candidate_name(task, sched, "final"), opt.build_timeout_s));
        if (b.status != "ok") continue;
        outcome.seconds += b.seconds;
        built.push_back({b.library, b.function});
        built_schedules.push_back(sched);
    }
    log << "verifying " << built.size() - 1 << " finalists against the hand schedule (" << opt.final_reps
        << " round-robin runs each)\n";
    std::vector<Measurement> ms = runner.measure_interleaved(built, opt.final_reps);
    // The hand schedule stays unless a finalist beats it consistently: a median paired
    // ratio below 0.97 and faster in at least two rounds of three.
    size_t winner = 0;
    double best_ratio = 0.97;
    for (size_t i = 1; i < ms.size(); ++i) {
        if (ms[i].status != "ok" || ms[0].status != "ok") continue;
        const Paired p = compare_paired(ms[i], ms[0]);
        if (p.median_ratio < best_ratio && p.wins >= 2.0 / 3.0) {
            best_ratio = p.median_ratio;
            winner = i;
        }
    }
    for (const auto &[lib, fn] : built) std::remove(lib.c_str());
    if (ms.empty() || ms[winner].status != "ok") return json::object();
    json record = make_record(key, task.describe(), built_schedules[winner], "final", outcome, ms[winner], -1, opt.seed,
                              halide_version());
    record["hand_ms"] = ms[0].median_ms;
    json field = json::array();
    for (size_t i = 0; i < ms.size(); ++i) {
        const Paired p = compare_paired(ms[i], ms[0]);
        field.push_back({{"schedule", built_schedules[i]},
                         {"median_ms", ms[i].median_ms},
                         {"paired_ratio_vs_hand", p.median_ratio},
                         {"faster_than_hand", p.wins}});
    }
    record["paired_ratio_vs_hand"] = compare_paired(ms[winner], ms[0]).median_ratio;
    record["finalists"] = field;
    db.append(record);
    log << "verified: " << (winner == 0 ? std::string("the hand schedule stays") : "a tuned schedule wins") << ", "
        << ms[winner].median_ms << " ms against hand " << ms[0].median_ms << " ms (median paired ratio "
        << record["paired_ratio_vs_hand"].get<double>() << ")\n";
    return record;
}

}  // namespace vashista::tune
