#!/usr/bin/env bash
# Installs what weft needs on a Debian machine, idempotently: only packages
# that are missing are installed, and apt's lists are refreshed only then.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "weft creates network namespaces, bridges and nftables rules: run this as root." >&2
  exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install the Rust toolchain (https://rustup.rs) first." >&2
  exit 1
fi

# iproute2: the tests' independent view of the kernel (ip -j); nftables: nft,
# which weft-cni drives; iputils-ping: the demo and tests; containernetworking-
# plugins: the reference bridge + host-local plugins the benchmark compares to;
# iperf3: the lab throughput benchmark; containerd, runc and busybox-static:
# the test that drives weft-cni through a real containerd's CRI (busybox is
# the whole of its local image: there is no registry).
packages=(iproute2 nftables iputils-ping containernetworking-plugins iperf3 containerd runc busybox-static)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# crictl, the CRI client that drives containerd in the weft-cni runtime test,
# built from its Go module into a cache outside the repository (kept across
# runs, skipped when present).
CRICTL_VERSION=v1.37.0
PEERS_BIN=/var/cache/weft/peers/bin
if [ ! -x "$PEERS_BIN/crictl" ]; then
  go=$(command -v go || echo /usr/local/go/bin/go)
  if [ -x "$go" ]; then
    echo "building crictl $CRICTL_VERSION into $PEERS_BIN"
    mkdir -p "$PEERS_BIN"
    GOBIN="$PEERS_BIN" "$go" install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  else
    echo "go not found: crictl is not built, so the containerd runtime test will fail and say so" >&2
  fi
fi
