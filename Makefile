# Quick start: `make run` (build, then the decode demo) and `make test`.
# Each target installs what it needs first (tools/setup.sh).
BUILD ?= build
JOBS ?= $(shell nproc)
VENV := .venv
CMAKE := $(VENV)/bin/cmake
CTEST := $(VENV)/bin/ctest
HALIDE_DIR = $(shell $(VENV)/bin/python -c "import halide; print(halide.install_dir())")/lib64/cmake

.PHONY: all setup configure build run test test-sanitize test-slow bench clean

all: build

setup:
	@tools/setup.sh

$(BUILD)/CMakeCache.txt: | setup
	@echo "configure: $(BUILD)"
	@$(CMAKE) -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release \
	    -DHalide_DIR=$(HALIDE_DIR)/Halide -DHalideHelpers_DIR=$(HALIDE_DIR)/HalideHelpers >/dev/null

configure: setup $(BUILD)/CMakeCache.txt

build: configure
	@echo "build: compiling generators, kernels and tests ($(JOBS) jobs; the first build takes several minutes)"
	@$(CMAKE) --build $(BUILD) -j $(JOBS)

run: build
	@$(BUILD)/bin/vashista_demo --json $(BUILD)/demo.json

test: build
	@$(CTEST) --test-dir $(BUILD) --output-on-failure -LE slow

test-slow: build
	@$(CTEST) --test-dir $(BUILD) --output-on-failure -L slow

# The same suite under AddressSanitizer and UndefinedBehaviorSanitizer, in its own tree.
test-sanitize: setup
	@$(CMAKE) -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVASHISTA_SANITIZE=ON \
	    -DHalide_DIR=$(HALIDE_DIR)/Halide -DHalideHelpers_DIR=$(HALIDE_DIR)/HalideHelpers >/dev/null
	@$(CMAKE) --build build-sanitize -j $(JOBS)
	@# allocator_may_return_null: the library turns a failed allocation into a status, as
	@# test_runtime checks with a request past what ASan's allocator serves.
	@ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 $(CTEST) --test-dir build-sanitize --output-on-failure -LE slow

clean:
	rm -rf $(BUILD) build-sanitize
