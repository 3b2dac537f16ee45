//! The seam on a real kube-apiserver, through kube-rs: typed watches are
//! kube-runtime's watchers (which list again by themselves after 410
//! Gone), retried with back-off while the API server is away; the last
//! failure is the source's [`Cluster::problem`] until a watch succeeds
//! again.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Config};

use crate::{Cluster, ClusterError, EventStream, Watched};

/// A cluster behind a kube-apiserver.
#[derive(Clone)]
pub struct Kubernetes {
    client: Client,
    /// The last watch failure, cleared by the next event.
    problem: Arc<Mutex<Option<String>>>,
}

impl Kubernetes {
    /// Connects with the kubeconfig at `path`.
    pub async fn from_kubeconfig(path: &Path) -> Result<Self, ClusterError> {
        let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| {
            ClusterError::Kubernetes(format!("reading the kubeconfig {}: {e}", path.display()))
        })?;
        let options = kube::config::KubeConfigOptions::default();
        let config = Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| {
                ClusterError::Kubernetes(format!("the kubeconfig {}: {e}", path.display()))
            })?;
        Self::with_config(config)
    }

    fn with_config(config: Config) -> Result<Self, ClusterError> {
        let client = Client::try_from(config)
            .map_err(|e| ClusterError::Kubernetes(format!("creating the API client: {e}")))?;
        Ok(Kubernetes {
            client,
            problem: Arc::default(),
        })
    }

    /// The API client, for writes the seam does not cover yet.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl Cluster for Kubernetes {
    fn watch<K: Watched>(&self) -> EventStream<K> {
        let api: Api<K> = Api::all(self.client.clone());
        let problem = self.problem.clone();
        let kind = K::KIND;
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |item| {
                let mut held = problem.lock().unwrap_or_else(PoisonError::into_inner);
                match item {
                    Ok(event) => {
                        *held = None;
                        Ok(event)
                    }
                    Err(e) => {
                        let why = format!("watching {kind}s on the API server: {e}");
                        *held = Some(why.clone());
                        Err(ClusterError::Kubernetes(why))
                    }
                }
            })
            .boxed()
    }

    fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
