#include "measure.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <thread>

namespace vashista::bench {

Stats summarize(std::vector<double> samples) {
    Stats s;
    s.samples = samples;
    std::sort(samples.begin(), samples.end());
    const size_t n = samples.size();
    s.min = samples.front();
    s.max = samples.back();
    s.median = n % 2 ? samples[n / 2] : 0.5 * (samples[n / 2 - 1] + samples[n / 2]);
    return s;
}

size_t flush_bytes() {
    size_t l3 = 0;
    std::ifstream in("/sys/devices/system/cpu/cpu0/cache/index3/size");
    std::string text;
    if (in >> text && !text.empty()) {
        size_t mult = 1;
        if (text.back() == 'K') mult = 1024;
        if (text.back() == 'M') mult = 1024 * 1024;
        l3 = std::strtoull(text.c_str(), nullptr, 10) * mult;
    }
    return std::max<size_t>(4 * l3, size_t(256) << 20);
}

Flusher::Flusher() : buffer_(flush_bytes(), 1) {}

// Reads, not writes: the measured kernel then finds its data evicted but pays no
// write-back of dirty lines (which made timings drift by +-10%).
void Flusher::flush() {
    const unsigned char *p = buffer_.data();
    unsigned sum = 0;
    for (size_t i = 0; i < buffer_.size(); i += 64) sum += p[i];
    sink_ += sum;
}

double measure_read_bandwidth_gbps() {
    const size_t n = (size_t(1) << 30) / sizeof(uint64_t);
    std::vector<uint64_t> data(n, 1);
    const unsigned threads = std::max(1u, std::min(2u, std::thread::hardware_concurrency()));
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
        std::vector<uint64_t> sums(threads, 0);
        Timer t;
        std::vector<std::thread> pool;
        for (unsigned w = 0; w < threads; ++w)
            pool.emplace_back([&, w] {
                const size_t lo = n * w / threads, hi = n * (w + 1) / threads;
                uint64_t a = 0, b = 0, c = 0, d = 0;
                for (size_t i = lo; i + 4 <= hi; i += 4)
                    a += data[i], b += data[i + 1], c += data[i + 2], d += data[i + 3];
                sums[w] = a + b + c + d;
            });
        for (auto &th : pool) th.join();
        const double s = t.seconds();
        if (std::accumulate(sums.begin(), sums.end(), uint64_t(0)) == 0) std::abort();  // keep the reads
        best = std::max(best, double(n * sizeof(uint64_t)) / s * 1e-9);
    }
    return best;
}

std::vector<int> parse_int_list(const std::string &s) {
    std::vector<int> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        try {
            size_t used = 0;
            int v = std::stoi(item, &used);
            if (used != item.size() || v <= 0) throw std::invalid_argument(item);
            out.push_back(v);
        } catch (const std::exception &) {
            usage_error("'" + item + "' in '" + s + "' is not a positive integer");
        }
    }
    if (out.empty()) usage_error("empty list '" + s + "'");
    return out;
}

void usage_error(const std::string &message) {
    std::fprintf(stderr, "error: %s (see --help)\n", message.c_str());
    std::exit(2);
}

void write_json(const std::string &path, const nlohmann::json &j) {
    const std::filesystem::path p(path);
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
    std::ofstream out(path);
    if (!out) {
        std::fprintf(stderr, "error: cannot write %s\n", path.c_str());
        std::exit(2);
    }
    out << j.dump(2) << "\n";
}

}  // namespace vashista::bench
