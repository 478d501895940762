// Measurement helpers shared by the demo, the tuner's runner and the benchmarks: cold-cache timing
// (a buffer larger than the L3 is read before every run), medians of repeats,
// and the machine's measured read bandwidth as the floor.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <string>
#include <vector>

namespace vashista::bench {

struct Timer {
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); }
};

struct Stats {
    double median = 0, min = 0, max = 0;
    std::vector<double> samples;
};
Stats summarize(std::vector<double> samples);

// Bytes read between runs: 4x the L3 (from sysfs), at least 256 MiB.
size_t flush_bytes();

class Flusher {
public:
    Flusher();
    void flush();

private:
    std::vector<unsigned char> buffer_;
    volatile unsigned sink_ = 0;
};

// One warm-up each, then `reps` rounds running every function once, each after a flush
// (round-robin, so drift between runs hits all alike); milliseconds per function.
template <typename F>
std::vector<Stats> time_cold_round_robin(int reps, Flusher &flusher, const std::vector<F> &runs) {
    std::vector<std::vector<double>> ms(runs.size());
    for (const F &run : runs) run();
    for (int i = 0; i < reps; ++i)
        for (size_t k = 0; k < runs.size(); ++k) {
            flusher.flush();
            Timer t;
            runs[k]();
            ms[k].push_back(t.seconds() * 1e3);
        }
    std::vector<Stats> out;
    for (auto &m : ms) out.push_back(summarize(m));
    return out;
}

double measure_read_bandwidth_gbps();
std::vector<int> parse_int_list(const std::string &s);
[[noreturn]] void usage_error(const std::string &message);
// Writes JSON, creating the parent folder; exits with a message if it cannot.
void write_json(const std::string &path, const nlohmann::json &j);

}  // namespace vashista::bench
