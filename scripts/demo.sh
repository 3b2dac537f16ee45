#!/usr/bin/env bash
# weft's main job: a 3-node cluster network on this machine, pods on every
# node, and the proof that every pod reaches every other one.
# CONTROL_PLANE=kubernetes runs Kubernetes' own control plane in the lab
# (built once by `./scripts/setup.sh --peers`) instead of weft's embedded one.
set -euo pipefail
cd "$(dirname "$0")/.."
control_plane=${CONTROL_PLANE:-embedded}
if [ "$control_plane" = kubernetes ]; then ./scripts/setup.sh --peers; else ./scripts/setup.sh; fi
cargo build --release --quiet --bin weft --bin weft-cni
weft=./target/release/weft
$weft lab down --name weft >/dev/null 2>&1 || true
$weft lab up --name weft --nodes 3 --backend "${BACKEND:-vxlan}" --control-plane "$control_plane"
$weft lab apply --name weft -f examples/pods.yaml
echo
$weft lab get pods --name weft -A -o wide
echo
$weft lab probe --name weft
echo
$weft lab apply --name weft -f examples/services.yaml
$weft lab get services --name weft -n demo
# The agents program a Service tens of milliseconds after its EndpointSlice
# is written (and a LoadBalancer address once a node announces it): wait for
# that, at most 5 s, before showing the Services at work.
for _ in $(seq 100); do
  $weft lab probe --name weft --from demo/sidecar --to svc/demo/web >/dev/null 2>&1 &&
    $weft lab probe --name weft --from external --to node/node-1:30080 >/dev/null 2>&1 &&
    $weft lab probe --name weft --from external --to svc/demo/web-lb >/dev/null 2>&1 &&
    break
  sleep 0.05
done
echo
echo "A pod's new connections to the web ClusterIP, spread over the Deployment's pods:"
$weft lab probe --name weft --from demo/sidecar --to svc/demo/web --count 6
echo
echo "The external client (outside the cluster) through the NodePort of node-1:"
$weft lab probe --name weft --from external --to node/node-1:30080 --count 3
echo
echo "... and through the LoadBalancer address, which sees the client's own address:"
$weft lab probe --name weft --from external --to svc/demo/web-lb --http-path /clientip --count 3
# The Deployment's first pod (web-0 in the embedded mode, web-<hash>-<id>
# with Kubernetes' controllers).
web=$($weft lab get pods --name weft -n demo | awk '$2 ~ /^web-/ {print $2; exit}')
if [ "$control_plane" = kubernetes ]; then
  cat <<MSG

The control plane is Kubernetes' own: drive it with kubectl.
  export KUBECONFIG=\$($weft lab kubeconfig)
  /var/cache/weft/peers/bin/kubectl get nodes,pods -A -o wide
MSG
fi
cat <<MSG

Every pod reaches every other pod across nodes, without NAT, and Services
balance over them. Go on with:
  export PATH=\$PWD/target/release:\$PATH
  weft lab get nodes -o wide                  # nodes, their subnets and addresses
  weft lab exec -n demo $web -- ip route     # run anything inside a pod's network
  weft lab exec --node node-1 -- ip route     # ... or a node's
  weft lab logs -n demo $web                 # what a container printed
  weft lab probe --protocol udp               # the UDP matrix
  weft lab get endpointslices -n demo         # what the proxy reads
  weft lab exec --node node-1 -- nft list table ip weft-proxy   # what it programmed
  weft lab node stop node-2                   # kill an agent: traffic keeps flowing
Tear it all down with:
  weft lab down
MSG
