#!/usr/bin/env bash
# weft's main job: a 3-node cluster network on this machine, pods on every
# node, and the proof that every pod reaches every other one.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --quiet --bin weft --bin weft-cni
weft=./target/release/weft
$weft lab down --name weft >/dev/null 2>&1 || true
$weft lab up --name weft --nodes 3 --backend "${BACKEND:-vxlan}"
$weft lab apply --name weft -f examples/pods.yaml
echo
$weft lab get pods --name weft -A -o wide
echo
$weft lab probe --name weft
cat <<MSG

Every pod reaches every other pod across nodes, without NAT. Go on with:
  export PATH=\$PWD/target/release:\$PATH
  weft lab get nodes -o wide                  # nodes, their subnets and addresses
  weft lab exec -n demo web-0 -- ip route     # run anything inside a pod's network
  weft lab exec --node node-1 -- ip route     # ... or a node's
  weft lab logs -n demo web-1                 # what a container printed
  weft lab probe --protocol udp               # the UDP matrix
  weft lab node stop node-2                   # kill an agent: traffic keeps flowing
Tear it all down with:
  weft lab down
MSG
