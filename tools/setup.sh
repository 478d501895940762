#!/usr/bin/env bash
# Installs what the build needs, idempotently: Debian packages with apt-get, Python
# wheels (Halide, CMake) into the project-local .venv. Quiet when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

HALIDE_VERSION=21.0.0   # newest release with a wheel for this Python (halide-bin 22 has none)
CMAKE_VERSION=3.31.10   # Halide's CMake package needs >= 3.28
APT_PACKAGES=(catch2 nlohmann-json3-dev python3-venv)

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
want="halide==${HALIDE_VERSION} cmake==${CMAKE_VERSION} matplotlib==3.9.2"
have=$(.venv/bin/python -m pip list --format=freeze 2>/dev/null | tr 'A-Z' 'a-z' || true)
need=()
for w in $want; do
    grep -qx "$w" <<<"$have" || need+=("$w")
done
if ((${#need[@]})); then
    echo "setup: installing into .venv: ${need[*]}"
    .venv/bin/python -m pip install -q --disable-pip-version-check "${need[@]}"
fi
