//! The CNI error object: `{cniVersion, code, msg, details}`, printed on
//! stdout with a non-zero exit. Codes 1–99 are the specification's; 100 and
//! up are weft-cni's own.

use serde::Serialize;

/// The error codes weft-cni uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot serve ADD now.
    NotAvailable = 50,
    /// STATUS: not available, and existing pods may have limited connectivity.
    LimitedConnectivity = 51,
    /// weft: no free address in a range set.
    PoolExhausted = 100,
    /// weft: a requested address (IP=, ips capability) cannot be given.
    AddressUnavailable = 101,
    /// weft: the kernel refused a netlink request.
    Netlink = 102,
    /// weft: nftables refused a rule set.
    Firewall = 103,
    /// weft: CHECK found the attachment differs from prevResult.
    CheckFailed = 104,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

macro_rules! constructor {
    ($name:ident, $code:ident) => {
        pub fn $name(msg: impl Into<String>) -> Self {
            Self::new(ErrorCode::$code, msg)
        }
    };
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl std::fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }

    constructor!(incompatible_version, IncompatibleVersion);
    constructor!(unsupported_field, UnsupportedField);
    constructor!(unknown_container, UnknownContainer);
    constructor!(invalid_env, InvalidEnvironment);
    constructor!(io, Io);
    constructor!(decode, Decode);
    constructor!(invalid_config, InvalidConfig);
    constructor!(try_again, TryAgainLater);
    constructor!(not_available, NotAvailable);
    constructor!(netlink, Netlink);
    constructor!(firewall, Firewall);
    constructor!(check_failed, CheckFailed);

    /// The JSON object the specification prescribes.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_value(Wire {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_default()
    }
}

impl From<weft_ipam::StoreError> for CniError {
    fn from(e: weft_ipam::StoreError) -> Self {
        CniError::io("IPAM state is not usable; check that the data directory is writable")
            .with_details(e)
    }
}

impl From<weft_ipam::AllocError> for CniError {
    fn from(e: weft_ipam::AllocError) -> Self {
        let code = match e {
            weft_ipam::AllocError::Exhausted(_) => ErrorCode::PoolExhausted,
            _ => ErrorCode::AddressUnavailable,
        };
        CniError::new(code, e.to_string())
    }
}

impl From<weft_datapath::NetlinkError> for CniError {
    fn from(e: weft_datapath::NetlinkError) -> Self {
        CniError::netlink("the kernel refused a network change").with_details(e)
    }
}

impl From<weft_datapath::nft::NftError> for CniError {
    fn from(e: weft_datapath::nft::NftError) -> Self {
        CniError::firewall("nftables could not apply weft-cni's rules").with_details(e)
    }
}

impl From<weft_datapath::netns::NetNsError> for CniError {
    fn from(e: weft_datapath::netns::NetNsError) -> Self {
        use weft_datapath::netns::NetNsError::*;
        match e {
            NotFound { .. } | NotNetNs { .. } => CniError::unknown_container(
                "the container's network namespace (CNI_NETNS) does not exist",
            )
            .with_details(e),
            _ => CniError::io("cannot use the container's network namespace").with_details(e),
        }
    }
}
