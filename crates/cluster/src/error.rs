/// Why the cluster could not answer; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The embedded store failed (its own message says how).
    #[error(transparent)]
    Store(#[from] weft_store::StoreError),
    /// The API server or the way to it; the text says which and what failed.
    #[error("{0}")]
    Kubernetes(String),
    /// etcd or the way to it; the text says which and what failed.
    #[error("{0}")]
    Etcd(String),
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: String,
        source: serde_json::Error,
    },
}
