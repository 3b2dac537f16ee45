//! weft lab: a whole cluster network on one machine, built from the real
//! agent and the real CNI plugin — an underlay namespace with a bridge,
//! one namespace per node running `weft agent`, one per pod wired by
//! `weft-cni`, one for a client outside the cluster — with the real kernel
//! datapath in between. The `weft lab` process itself plays the API server,
//! the controllers and the kubelets, synchronously, in each command.
//!
//! - [`layout`]: names, paths and the lab's state file.
//! - [`underlay`]: the lab's L2 network, and the guard against overlapping ranges.
//! - [`procs`]: detached processes, signalled only after checking they are ours.
//! - [`agents`]: one `weft agent` per node.
//! - [`flannel`]: or the real flanneld on a node, with flannel's CNI
//!   configuration (mixed clusters, comparisons).
//! - [`control_plane`]: Kubernetes' own etcd and kube-apiserver in a
//!   namespace (the Kubernetes tests and `weft-bench services --kube`).
//! - [`kube_control_plane`]: a lab's own Kubernetes control plane
//!   (`--control-plane kubernetes`), its credentials and the host's door.
//! - [`node_kubelet`]: the kubelet process of a node in that mode.
//! - [`manifest`]: Kubernetes manifests → Kubernetes types.
//! - [`objects`]: keys, UIDs and timestamps of stored objects.
//! - [`kubelet`]: runs pods (CNI + containers) and writes their status.
//! - [`supervisor`]: watches one container, restarts it as its pod's
//!   restartPolicy says and records its status.
//! - [`kube_proxies`]: kube-proxy instead of weft's proxy on the nodes (to
//!   compare the two).
//! - [`forward`]: TCP from a host loopback address into a lab namespace.
//! - [`install`]: `deploy/weft.yaml` but its DaemonSet, for a lab whose
//!   control plane is Kubernetes.
//! - [`node_registration`]: a node's Node and Lease on a kube-apiserver,
//!   as its kubelet keeps them.
//! - [`pod_status`]: where supervisors keep pod status (the lab's store
//!   or a kube-apiserver).
//! - [`container_probes`]: the kubelet's startup, liveness and readiness
//!   probes, for the supervisor.
//! - [`services`]: the API server's Service defaults and allocators
//!   (clusterIPs, nodePorts, LoadBalancer addresses).
//! - [`endpointslices`]: the EndpointSlice controller.
//! - [`targets`]: what `probe --from/--to` and `exec` name, resolved.
//! - [`netexec`], [`probe`]: the built-in test server and client.
//! - [`ops`]: the `weft lab` operations, which report what they did as
//!   [`report`]'s typed results (rendered there, printed by the CLI).

pub mod agents;
pub mod container_probes;
pub mod control_plane;
pub mod endpointslices;
pub mod flannel;
pub mod forward;
pub mod install;
pub mod kube_control_plane;
pub mod kube_proxies;
pub mod kubelet;
pub mod layout;
pub mod manifest;
pub mod netexec;
pub mod node_kubelet;
pub mod node_registration;
pub mod objects;
pub mod ops;
pub mod pod_status;
pub mod probe;
pub mod procs;
pub mod report;
pub mod services;
pub mod supervisor;
pub mod targets;
pub mod underlay;
