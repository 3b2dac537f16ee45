//! The CNI versions weft-cni speaks and what each allows.

use std::fmt;

use super::error::CniError;

/// A CNI specification version weft-cni accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub const ALL: [Version; 5] = [
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];
    pub const LATEST: Version = Version::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    pub fn parse(text: &str) -> Result<Self, CniError> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == text)
            .ok_or_else(|| {
                CniError::incompatible_version(format!(
                    "cniVersion {text:?} is not supported; weft-cni supports {}",
                    Self::supported_list()
                ))
            })
    }

    pub fn supported_list() -> String {
        Self::ALL.map(Version::as_str).join(", ")
    }

    /// Results before 1.0.0 carry a `version` field on each IP.
    pub fn ips_carry_version(self) -> bool {
        self < Version::V1_0_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to the VERSION command.
pub fn version_report(requested: Option<&str>) -> serde_json::Value {
    let version = requested
        .and_then(|v| Version::parse(v).ok())
        .unwrap_or(Version::LATEST);
    serde_json::json!({
        "cniVersion": version.as_str(),
        "supportedVersions": Version::ALL.map(Version::as_str),
    })
}
