/// Why the cluster could not answer; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The embedded store failed (its own message says how).
    #[error(transparent)]
    Store(#[from] weft_store::StoreError),
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: String,
        source: serde_json::Error,
    },
}
