//! Where a lab's objects are: its own store (the embedded control plane)
//! or its kube-apiserver (Kubernetes mode, as the lab's admin through the
//! host's forwarder). Reads are the same for both, so `get`, `probe`,
//! `exec` and `logs` print and find the same things in either mode;
//! writes differ by mode and live with the operations.

use std::fmt::Debug;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, NamespaceResourceScope, Resource};
use kube::api::ListParams;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use weft_store::Store;

use crate::kube_control_plane;
use crate::layout::{ControlPlane, LabState, Layout};

pub(super) enum Cluster {
    Store(Store),
    Api {
        runtime: tokio::runtime::Runtime,
        client: Client,
    },
}

impl Cluster {
    pub(super) fn open(layout: &Layout, state: &LabState) -> Result<Cluster> {
        match state.control_plane {
            ControlPlane::Embedded => Ok(Cluster::Store(Store::open_existing(&layout.store())?)),
            ControlPlane::Kubernetes { .. } => {
                let runtime = super::runtime()?;
                let client = runtime.block_on(kube_control_plane::admin_client(layout))?;
                Ok(Cluster::Api { runtime, client })
            }
        }
    }

    /// Every object of kind `K`, in every namespace.
    pub(super) fn list<K>(&self) -> Result<Vec<K>>
    where
        K: Resource + Metadata<Ty = ObjectMeta> + Clone + DeserializeOwned + Debug,
    {
        match self {
            Cluster::Store(store) => Ok(store.list_typed::<K>()?.0),
            Cluster::Api { runtime, client } => {
                let api: Api<K> = Api::all(client.clone());
                let list = runtime
                    .block_on(api.list(&ListParams::default()))
                    .with_context(|| format!("listing {}s on the lab's API server", K::KIND))?;
                Ok(list.items)
            }
        }
    }

    /// The object `namespace/name` of kind `K`, if there is one.
    pub(super) fn get<K>(&self, namespace: &str, name: &str) -> Result<Option<K>>
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Metadata<Ty = ObjectMeta>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        match self {
            Cluster::Store(store) => Ok(store.get_typed::<K>(namespace, name)?),
            Cluster::Api { runtime, client } => {
                let api: Api<K> = Api::namespaced(client.clone(), namespace);
                runtime
                    .block_on(api.get_opt(name))
                    .with_context(|| format!("reading {} {namespace}/{name}", K::KIND))
            }
        }
    }

    /// Whether namespace `name` exists.
    pub(super) fn namespace_exists(&self, name: &str) -> Result<bool> {
        match self {
            Cluster::Store(store) => Ok(store.get_typed::<Namespace>("", name)?.is_some()),
            Cluster::Api { runtime, client } => {
                let api: Api<Namespace> = Api::all(client.clone());
                let found = runtime
                    .block_on(api.get_opt(name))
                    .with_context(|| format!("reading namespace {name}"))?;
                Ok(found.is_some())
            }
        }
    }

    /// The store, for operations only the embedded control plane has.
    pub(super) fn store(&self) -> Result<&Store> {
        match self {
            Cluster::Store(store) => Ok(store),
            Cluster::Api { .. } => anyhow::bail!(
                "this lab's control plane is Kubernetes; this operation is for the embedded one"
            ),
        }
    }
}
