# Quick start: `make run` (build, then the decode demo) and `make test`.
# Each target installs what it needs first (tools/setup.sh).
BUILD ?= build
JOBS ?= $(shell nproc)
# ON in CI (.ci/run): warnings are errors.
WERROR ?= OFF
VENV := .venv
CMAKE := $(VENV)/bin/cmake
CTEST := $(VENV)/bin/ctest
HALIDE_DIR = $(shell $(VENV)/bin/python -c "import halide; print(halide.install_dir())")/lib64/cmake

.PHONY: all setup configure build run test test-gpu format-check format test-sanitize test-slow quality bench-engine bench bench-quick bench-run fuzz clean

all: build

setup:
	@tools/setup.sh

$(BUILD)/CMakeCache.txt: | setup
	@echo "configure: $(BUILD)"
	@$(CMAKE) -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DVASHISTA_WERROR=$(WERROR) \
	    -DHalide_DIR=$(HALIDE_DIR)/Halide -DHalideHelpers_DIR=$(HALIDE_DIR)/HalideHelpers >/dev/null

configure: setup $(BUILD)/CMakeCache.txt

build: configure
	@echo "build: compiling generators, kernels and tests ($(JOBS) jobs; the first build takes several minutes)"
	@$(CMAKE) --build $(BUILD) -j $(JOBS)

run: build
	@$(BUILD)/bin/vashista_demo --json $(BUILD)/demo.json

# What an engine pays per step: vashista_run against the one-call API (time, allocations), a
# 16K sequence through a narrow and a wide block table, summary upkeep per token.
bench-engine: build
	@$(BUILD)/bin/vashista_engine_bench --json $(BUILD)/engine-bench.json

# The sweep (bench/sweep): T = 4K..256K on the CPU default shape and B=8 up to 32K, every
# routing mode, summary dtype and group routing, our dense, llama.cpp's CPU flash attention and
# mul_mat path on the same data (its ggml built from the pinned llama-cpp-python source), and
# the 32-layer decode loop at 128K. JSON and plots in $(BUILD)/bench-report. About 10 minutes, plus a
# few to build the bench's kernels and ggml once. bench-quick: 8K and 128K, 3 repeats, no batch, no loop (about 1.5 minutes).
LLAMA_CPP_DIR := $(abspath .venv/src/llama_cpp_python-0.3.36/vendor/llama.cpp)
BENCH_ARGS ?=
bench: build
	@$(MAKE) --no-print-directory bench-run BENCH_RUN_ARGS="$(BENCH_ARGS)"

bench-quick: build
	@$(MAKE) --no-print-directory bench-run STAGES_ARGS="--lengths 131072 --reps 10" \
	    BENCH_RUN_ARGS="--lengths 8192,131072 --batch-lengths none --reps 3 --loop-layers 0 $(BENCH_ARGS)"

bench-run:
	@tools/setup.sh bench
	@dir=$(LLAMA_CPP_DIR); [ -f $$dir/ggml/CMakeLists.txt ] || dir=""; \
	    $(CMAKE) -S . -B $(BUILD) -DVASHISTA_LLAMA_CPP_DIR="$$dir" >/dev/null
	@echo "bench: building the bench's kernel library and llama.cpp's ggml (once: a few minutes)"
	@$(CMAKE) --build $(BUILD) -j $(JOBS) --target vashista_bench vashista_bench_stages
	@$(BUILD)/bin/vashista_bench --json $(BUILD)/bench-report/bench.json $(BENCH_RUN_ARGS)
	@$(BUILD)/bin/vashista_bench_stages --json $(BUILD)/bench-report/stages.json $(STAGES_ARGS)
	@$(VENV)/bin/python bench/sweep/plot.py $(BUILD)/bench-report/bench.json $(BUILD)/bench-report

test: build format-check
	@$(CTEST) --test-dir $(BUILD) --output-on-failure -LE slow

# On a machine with an NVIDIA GPU: the GPU schedules' tests through CUDA (JIT), the kernel
# matrix and the page kernels against the reference, and a CUDA kernel library through the
# C API. Elsewhere those entries report themselves skipped.
test-gpu: build
	@$(CTEST) --test-dir $(BUILD) --output-on-failure -L gpu_device

# The C++ sources as .clang-format lays them out (make test checks; make format rewrites).
SOURCES = $(shell find generators schedules runtime reference autotune bench tests quality \
                       -name '*.cpp' -o -name '*.h' | sort)
format-check: setup
	@echo "format-check: clang-format on $(words $(SOURCES)) C++ files"
	@clang-format --dry-run -Werror $(SOURCES)

format: setup
	@clang-format -i $(SOURCES)

# What make test leaves out: the models against llama.cpp (installs Gemma and llama.cpp first).
test-slow: build
	@tools/setup.sh quality
	@$(CTEST) --test-dir $(BUILD) --output-on-failure --no-tests=error -L slow

# The same suite under AddressSanitizer and UndefinedBehaviorSanitizer, in its own tree.
test-sanitize: setup
	@$(CMAKE) -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVASHISTA_SANITIZE=ON \
	    -DHalide_DIR=$(HALIDE_DIR)/Halide -DHalideHelpers_DIR=$(HALIDE_DIR)/HalideHelpers >/dev/null
	@$(CMAKE) --build build-sanitize -j $(JOBS)
	@# allocator_may_return_null: a failed allocation comes back to the library, which turns
	@# it into a status, as without ASan.
	@ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 $(CTEST) --test-dir build-sanitize --output-on-failure -LE slow

# libFuzzer over the C ABI's validation and run path (tests/fuzz): a clang build of its own
# in $(BUILD)/fuzz (runtime and harness under ASan and UBSan, a small kernel library from the
# host build's generator), then FUZZ_RUNS executions from the seeds (tests/fuzz/seeds) and
# the corpus it keeps in $(BUILD)/fuzz/corpus; a crash's input lands in $(BUILD)/fuzz/crashes.
FUZZ_RUNS ?= 1000000
fuzz: build
	@tools/setup.sh fuzz
	@echo "fuzz: building tests/fuzz with clang in $(BUILD)/fuzz"
	@$(CMAKE) -S tests/fuzz -B $(BUILD)/fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
	    -DVASHISTA_GENERATOR=$(abspath $(BUILD))/generators/vashista_generators \
	    -DHalide_DIR=$(HALIDE_DIR)/Halide -DHalideHelpers_DIR=$(HALIDE_DIR)/HalideHelpers >/dev/null
	@$(CMAKE) --build $(BUILD)/fuzz -j $(JOBS)
	@tests/fuzz/run.sh $(BUILD)/fuzz/fuzz_abi $(BUILD)/fuzz $(FUZZ_RUNS)

# Real models in the loop (quality/README.md): SmolLM2-135M and Gemma-3-270M decoding a long
# real text with the library's attention, swept over settings against dense; JSON, plots,
# tables and layer dumps in $(BUILD)/quality-report. Installs Gemma and llama.cpp (the outside
# reference of the dense path) first. About 35 minutes on 2 cores, plus ~10 to build llama.cpp once.
QUALITY_ARGS ?=
quality: build
	@tools/setup.sh quality
	@echo "quality: building the sweep's kernel library"
	@$(CMAKE) --build $(BUILD) -j $(JOBS) --target vashista_models_shared
	@echo "quality: the numpy models against llama.cpp"
	@$(VENV)/bin/python quality/check_model.py
	@PYTHONPATH=quality $(VENV)/bin/python -m vashista_quality.quality --lib $(BUILD)/lib/libvashista_models.so \
	    --out $(BUILD)/quality-report $(QUALITY_ARGS)

clean:
	rm -rf $(BUILD) build-sanitize
