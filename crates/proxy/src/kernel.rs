//! What the proxier asks of the kernel, behind [`Kernel`]: running nft
//! transactions (`nft -f`, `nft --check`), reading the table's chain and
//! set names, deleting conntrack flows. [`Host`] does it for real; tests
//! use [`Fake`], an in-memory ruleset that refuses what nft refuses and a
//! record of the flows deleted.

use std::sync::Mutex;

use weft_datapath::conntrack::{self, ConntrackError, FlowFilter};
use weft_datapath::nft::{self, Family, NftError};
use weft_datapath::nft_model::NftModel;

use crate::table;

/// The proxier's kernel effects. `Sync`: a full sync runs several nft
/// transactions at once.
pub trait Kernel: Sync {
    /// Applies one nft transaction.
    fn apply(&self, script: &str) -> Result<(), NftError>;
    /// Whether nft would take `script`, changing nothing.
    fn check(&self, script: &str) -> Result<(), NftError>;
    /// The chains of the proxy's table.
    fn chain_names(&self) -> Result<Vec<String>, NftError>;
    /// The sets and maps of the proxy's table.
    fn set_names(&self) -> Result<Vec<String>, NftError>;
    /// Deletes the conntrack flows matching any filter; returns how many.
    fn delete_flows(&self, filters: &[FlowFilter]) -> Result<usize, ConntrackError>;
}

/// The kernel of the namespace the proxier runs in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Host;

impl Kernel for Host {
    fn apply(&self, script: &str) -> Result<(), NftError> {
        nft::apply(script, None)
    }
    fn check(&self, script: &str) -> Result<(), NftError> {
        nft::check(script, None)
    }
    fn chain_names(&self) -> Result<Vec<String>, NftError> {
        nft::chain_names(Family::Ip, table::TABLE)
    }
    fn set_names(&self) -> Result<Vec<String>, NftError> {
        nft::set_names(Family::Ip, table::TABLE)
    }
    fn delete_flows(&self, filters: &[FlowFilter]) -> Result<usize, ConntrackError> {
        conntrack::delete_flows(filters)
    }
}

/// An in-memory kernel: the ruleset as [`NftModel`] keeps it, every
/// transaction applied, the flow filters deleted, and a switch that makes
/// the next transactions fail (as nft does when the table changed under
/// the proxier).
#[derive(Debug, Default)]
pub struct Fake {
    pub nft: Mutex<NftModel>,
    pub transactions: Mutex<Vec<String>>,
    pub flows_deleted: Mutex<Vec<FlowFilter>>,
    pub failing: std::sync::atomic::AtomicBool,
}

impl Fake {
    /// Runs `read` on the ruleset.
    pub fn ruleset<T>(&self, read: impl FnOnce(&NftModel) -> T) -> T {
        read(&self.nft.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Changes the ruleset behind the proxier's back.
    pub fn tamper(&self, script: &str) -> Result<(), NftError> {
        self.nft
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(script)
    }

    fn failing(&self) -> Result<(), NftError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(NftError::Rejected {
                stderr: "Error: Could not process rule: injected failure\n(any)".into(),
            });
        }
        Ok(())
    }
}

impl Kernel for Fake {
    fn apply(&self, script: &str) -> Result<(), NftError> {
        self.failing()?;
        self.nft
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(script)?;
        self.transactions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(script.to_owned());
        Ok(())
    }
    fn check(&self, script: &str) -> Result<(), NftError> {
        let mut copy = self.ruleset(Clone::clone);
        copy.apply(script)
    }
    fn chain_names(&self) -> Result<Vec<String>, NftError> {
        Ok(self.ruleset(|m| m.chain_names(Family::Ip, table::TABLE)))
    }
    fn set_names(&self) -> Result<Vec<String>, NftError> {
        Ok(self.ruleset(|m| m.set_names(Family::Ip, table::TABLE)))
    }
    fn delete_flows(&self, filters: &[FlowFilter]) -> Result<usize, ConntrackError> {
        self.flows_deleted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(filters);
        Ok(filters.len())
    }
}
