//! What the Kubernetes API server checks before it stores an object, in one
//! place for every part of weft that takes objects from users: the lab
//! (which plays the API server) and the agent (which must not trust what a
//! store hands it). Pure functions over Kubernetes' own types: no I/O, no
//! defaults filled in, no allocation of addresses (that is the lab's
//! Service admission).
//!
//! - [`names`]: DNS-1123/1035 labels and subdomains, port names.
//! - [`labels`]: label keys and values, and label selectors (matching too).
//! - [`objects`]: Namespaces, Pods, Deployments, Services and
//!   NetworkPolicies.
//! - [`protocol`]: the transport protocols those objects name.

pub mod labels;
pub mod names;
pub mod objects;
pub mod protocol;

use std::fmt;

/// One thing wrong with one field, worded as the API server words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `spec.containers[1].name`.
    pub field: String,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    Required(String),
    Invalid { value: String, detail: String },
    Duplicate(String),
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Required(detail) => write!(f, "{}: Required value: {detail}", self.field),
            ErrorKind::Invalid { value, detail } => {
                write!(f, "{}: Invalid value: {value:?}: {detail}", self.field)
            }
            ErrorKind::Duplicate(value) => write!(f, "{}: Duplicate value: {value:?}", self.field),
        }
    }
}

/// Every error found in one object; empty means valid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn required(&mut self, field: impl Into<String>, detail: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            kind: ErrorKind::Required(detail.into()),
        });
    }

    pub fn invalid(
        &mut self,
        field: impl Into<String>,
        value: impl fmt::Display,
        detail: impl Into<String>,
    ) {
        self.0.push(FieldError {
            field: field.into(),
            kind: ErrorKind::Invalid {
                value: value.to_string(),
                detail: detail.into(),
            },
        });
    }

    pub fn duplicate(&mut self, field: impl Into<String>, value: impl fmt::Display) {
        self.0.push(FieldError {
            field: field.into(),
            kind: ErrorKind::Duplicate(value.to_string()),
        });
    }

    /// Records `check(value)`'s complaint, if any, against `field`.
    pub fn check(
        &mut self,
        field: impl Into<String>,
        value: &str,
        check: fn(&str) -> Result<(), String>,
    ) {
        if let Err(detail) = check(value) {
            self.invalid(field, value, detail);
        }
    }

    /// `Ok` when empty, else the errors.
    pub fn into_result(self) -> Result<(), Errors> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let texts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&texts.join(", "))
    }
}

impl std::error::Error for Errors {}
