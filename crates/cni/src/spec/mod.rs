//! The CNI specification (1.1.0) as types: versions, the error object, the
//! runtime's environment, the network configuration (read with Go's key
//! matching) and the result. Pure:
//! nothing here touches the kernel or the filesystem.

pub mod config;
pub mod env;
pub mod error;
pub mod fold;
pub mod result;
pub mod version;

pub use config::{NetConf, PortMapping};
pub use env::{CniArgs, Command, Env};
pub use error::{CniError, ErrorCode};
pub use result::{CniResult, Interface, IpConfig, RouteEntry};
pub use version::Version;
