#!/usr/bin/env bash
# Installs what weft needs on a Debian machine, idempotently: only packages
# that are missing are installed, and apt's lists are refreshed only then.
set -euo pipefail

# --peers also builds Kubernetes' own components (see below).
build_peers=0
for arg in "$@"; do
  case "$arg" in
    --peers) build_peers=1 ;;
    *) echo "unknown option $arg (the only option is --peers)" >&2; exit 2 ;;
  esac
done

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
# the whole of its local image: there is no registry); openssl: the keys and
# certificate of the test that starts the Kubernetes peers; protobuf-compiler
# and libprotobuf-dev (its well-known .proto files):
# protoc, which the etcd client crate (etcd-client) needs to build; gcc and
# libc6-dev: cgo, for flanneld's udp backend; iptables: the only backend of
# Debian's reference portmap plugin, which the CNI benchmark runs (weft
# itself never uses iptables).
packages=(iproute2 nftables iputils-ping containernetworking-plugins iperf3 containerd runc busybox-static openssl protobuf-compiler libprotobuf-dev gcc libc6-dev iptables)
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

# --peers: Kubernetes' own components, which weft runs beside and tests
# against, built from their Go modules (only modules, by name, through the
# configured Go module proxy) into a cache outside the repository, once per
# machine: one folder per component and version, with stable links in bin/.
# The plain demo does not need them, so only --peers builds them (crictl is
# also built without it: the containerd runtime test needs it).
# WEFT_PEERS: another cache, e.g. to time a build from scratch.
PEERS=${WEFT_PEERS:-/var/cache/weft/peers}
KUBERNETES_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
CRICTL_VERSION=v1.37.0
NETWORK_POLICY_API_VERSION=v0.3.0
FLANNEL_VERSION=v0.28.9
CNI_PLUGINS_VERSION=v1.10.0

go=$(command -v go || echo /usr/local/go/bin/go)
# Static binaries, as Kubernetes' own release builds them.
export CGO_ENABLED=0

# go build in a wrapper module (-mod=mod: it starts without a go.sum and
# resolves its requirements as it builds).
wrapper_go_build() {
  "$go" build -mod=mod -trimpath "$@"
}

# True when every named binary is linked from bin/ to its versioned folder.
peers_present() {
  local version=$1 name
  shift
  for name in "$@"; do
    [ -x "$PEERS/$name-$version/$name" ] && [ -L "$PEERS/bin/$name" ] || return 1
  done
}

# Moves the binaries built into $1 to their versioned folders and links them.
install_peers() {
  local built=$1 version=$2 name
  shift 2
  mkdir -p "$PEERS/bin"
  for name in "$@"; do
    mkdir -p "$PEERS/$name-$version"
    mv -f "$built/$name" "$PEERS/$name-$version/$name"
    ln -sfn "../$name-$version/$name" "$PEERS/bin/$name"
  done
}

# Field $3 (GoMod: the path of its go.mod; Info: of its JSON with the time it
# was published; Dir: its files) of module $1 at version $2, downloaded into
# the module cache.
module_field() {
  "$go" mod download -json "$1@$2" | sed -n "s/^[[:space:]]*\"$3\": \"\\(.*\\)\",\$/\\1/p"
}

# A wrapper module in directory $1 that requires $2 at $3 and replaces each
# of its sibling modules (given after it) by that module at version $4 ($2's
# go.mod replaces them by local paths, which is why $2 cannot be built
# directly). godebug lines are copied: they apply only to a main module.
wrapper_module() {
  local dir=$1 module=$2 version=$3 sibling_version=$4 gomod sibling
  shift 4
  mkdir -p "$dir/out"
  gomod=$(module_field "$module" "$version" GoMod)
  {
    echo "module weft.local/peers"
    grep -m1 '^go ' "$gomod"
    grep '^godebug ' "$gomod" || true
    echo "require $module $version"
    for sibling in "$@"; do
      echo "replace $sibling => $sibling $sibling_version"
    done
  } >"$dir/go.mod"
}

# The sibling modules that module $1's go.mod (at $2) replaces by a local path.
local_siblings() {
  sed -n 's/^[[:space:]]*\(replace[[:space:]]\+\)\?\([^[:space:]]\+\) => \.\.\?\/.*/\2/p' "$(module_field "$1" "$2" GoMod)" |
    grep -v '^go.etcd.io/etcd$\|^go.etcd.io/tests/v3$'
}

build_kubernetes() {
  local binaries=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl)
  peers_present "$KUBERNETES_VERSION" "${binaries[@]}" && return
  echo "building Kubernetes $KUBERNETES_VERSION (${binaries[*]}) into $PEERS"
  local dir=$work/kubernetes minor released staging ldflags=() pkg name
  mapfile -t staging < <(local_siblings k8s.io/kubernetes "$KUBERNETES_VERSION")
  wrapper_module "$dir" k8s.io/kubernetes "$KUBERNETES_VERSION" "v0${KUBERNETES_VERSION#v1}" "${staging[@]}"
  minor=${KUBERNETES_VERSION#v1.}
  minor=${minor%%.*}
  released=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$(module_field k8s.io/kubernetes "$KUBERNETES_VERSION" Info)")
  # What Kubernetes' own build (hack/lib/version.sh) sets, so /version and
  # `kubectl version` report the release (the module proxy knows no commit).
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=("-X $pkg.gitVersion=$KUBERNETES_VERSION" "-X $pkg.gitMajor=1" "-X $pkg.gitMinor=$minor"
      "-X $pkg.gitTreeState=clean" "-X $pkg.buildDate=$released")
  done
  (cd "$dir" && wrapper_go_build -ldflags "-s -w ${ldflags[*]}" -o out/ \
    $(for name in "${binaries[@]}"; do echo "k8s.io/kubernetes/cmd/$name"; done))
  install_peers "$dir/out" "$KUBERNETES_VERSION" "${binaries[@]}"
}

build_etcd() {
  peers_present "$ETCD_VERSION" etcd && return
  echo "building etcd $ETCD_VERSION into $PEERS"
  local dir=$work/etcd siblings
  mapfile -t siblings < <(local_siblings go.etcd.io/etcd/server/v3 "$ETCD_VERSION")
  wrapper_module "$dir" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION" "${siblings[@]}"
  (cd "$dir" && wrapper_go_build -ldflags "-s -w" -o out/etcd go.etcd.io/etcd/server/v3)
  install_peers "$dir/out" "$ETCD_VERSION" etcd
}

build_crictl() {
  peers_present "$CRICTL_VERSION" crictl && return
  # An earlier setup.sh installed crictl $CRICTL_VERSION straight into bin/.
  if [ -f "$PEERS/bin/crictl" ] && [ ! -L "$PEERS/bin/crictl" ]; then
    install_peers "$PEERS/bin" "$CRICTL_VERSION" crictl
    return
  fi
  echo "building crictl $CRICTL_VERSION into $PEERS"
  GOBIN="$work/crictl" "$go" install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION#v}" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  install_peers "$work/crictl" "$CRICTL_VERSION" crictl
}

# flanneld (its binary is named flannel), which weft is tested beside and
# must interoperate with. Built from a copy of its module without the
# tencentvpc backend: that backend's SDK module (tencentcloud-sdk-go's vpc)
# is not served by the Go module proxy. Its udp backend needs cgo.
build_flannel() {
  peers_present "$FLANNEL_VERSION" flannel && return
  echo "building flanneld $FLANNEL_VERSION into $PEERS"
  local dir=$work/flannel module
  module=$(module_field github.com/flannel-io/flannel "$FLANNEL_VERSION" Dir)
  cp -r "$module" "$dir"
  chmod -R u+w "$dir"
  sed -i '/pkg\/backend\/tencentvpc"/d' "$dir/main.go"
  (cd "$dir" && CGO_ENABLED=1 "$go" build -trimpath \
    -ldflags "-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$FLANNEL_VERSION" \
    -o out/flannel .)
  install_peers "$dir/out" "$FLANNEL_VERSION" flannel
}

# The reference CNI plugins weft-cni is measured and tested beside (Debian
# ships 1.1.1): bridge, host-local, portmap and loopback of
# github.com/containernetworking/plugins, into one folder of their version
# with a stable link $PEERS/cni (a CNI_PATH).
build_cni_plugins() {
  local dir=$PEERS/cni-plugins-$CNI_PLUGINS_VERSION name
  local plugins=(main/bridge ipam/host-local meta/portmap main/loopback)
  if [ -x "$dir/bridge" ] && [ -x "$dir/loopback" ] && [ -L "$PEERS/cni" ]; then
    return
  fi
  echo "building the reference CNI plugins $CNI_PLUGINS_VERSION into $PEERS"
  for name in "${plugins[@]}"; do
    GOBIN="$work/cni" "$go" install -trimpath \
      -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
      "github.com/containernetworking/plugins/plugins/$name@$CNI_PLUGINS_VERSION"
  done
  mkdir -p "$dir"
  mv -f "$work"/cni/* "$dir/"
  ln -sfn "cni-plugins-$CNI_PLUGINS_VERSION" "$PEERS/cni"
}

# ClusterNetworkPolicy's CRD (policy.networking.k8s.io/v1beta1, standard
# channel), which the lab installs in its Kubernetes control plane: copied
# from the sigs.k8s.io/network-policy-api module (downloaded, not built) to
# a folder of its version, with a stable link in crds/.
fetch_network_policy_crd() {
  local crd=policy.networking.k8s.io_clusternetworkpolicies.yaml
  local dir=$PEERS/network-policy-api-$NETWORK_POLICY_API_VERSION module
  [ -f "$dir/$crd" ] && [ -L "$PEERS/crds/$crd" ] && return
  echo "fetching sigs.k8s.io/network-policy-api $NETWORK_POLICY_API_VERSION (the ClusterNetworkPolicy CRD) into $PEERS"
  module=$(module_field sigs.k8s.io/network-policy-api "$NETWORK_POLICY_API_VERSION" Dir)
  mkdir -p "$dir" "$PEERS/crds"
  # The module cache is read-only: a writable copy, moved in whole.
  install -m 0644 "$module/config/crd/standard/$crd" "$dir/$crd.tmp"
  mv -f "$dir/$crd.tmp" "$dir/$crd"
  ln -sfn "../network-policy-api-$NETWORK_POLICY_API_VERSION/$crd" "$PEERS/crds/$crd"
}

if [ ! -x "$go" ]; then
  echo "go not found: crictl and the Kubernetes peers are not built, so the tests that need them will fail and say so" >&2
  [ "$build_peers" -eq 0 ] || exit 1
  exit 0
fi
mkdir -p "$PEERS"
# One build at a time per machine: a second run waits, then finds the peers.
exec 9>"$PEERS/.lock"
flock 9
# The wrapper modules and what is built, before it is moved into $PEERS.
work=$(mktemp -d /tmp/weft-peers.XXXXXX)
trap 'rm -rf "$work"' EXIT
# crictl drives containerd in the weft-cni runtime test.
build_crictl
if [ "$build_peers" -eq 1 ]; then
  build_etcd
  build_kubernetes
  fetch_network_policy_crd
  build_flannel
  build_cni_plugins
fi
