#!/usr/bin/env bash
# weft's main job, today: wire two pods with weft-cni and show them talking.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --quiet --bin weft --bin weft-cni
exec ./target/release/weft demo "$@"
