#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (the
# integration tests create their own network namespaces, so run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
# --peers: Kubernetes' own components, which crates/weft/tests/peers.rs starts.
./scripts/setup.sh --peers
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
