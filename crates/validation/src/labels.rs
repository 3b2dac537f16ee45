//! Labels and label selectors: which keys and values the API server
//! accepts, and whether a selector matches a set of labels (the same
//! semantics the ReplicaSet controller, Services and NetworkPolicy use).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::{names, Errors};

const NAME_MAX: usize = 63;

/// The name part of a label key, and a label value (which may also be
/// empty): alphanumerics, '-', '_' and '.', starting and ending with an
/// alphanumeric.
fn is_qualified_part(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric();
    s.len() <= NAME_MAX
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.chars().next().is_some_and(ok)
        && s.chars().last().is_some_and(ok)
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain.
pub fn key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    if let Some(prefix) = prefix {
        names::dns1123_subdomain(prefix).map_err(|e| format!("prefix part {e}"))?;
    }
    if !is_qualified_part(name) {
        return Err(
            "name part must consist of alphanumeric characters, '-', '_' or '.', \
                    and must start and end with an alphanumeric character (e.g. 'MyName', \
                    or 'my.name', or '123-abc'), at most 63 characters"
                .into(),
        );
    }
    Ok(())
}

/// A label value: empty, or like a key's name part.
pub fn value(s: &str) -> Result<(), String> {
    if s.is_empty() || is_qualified_part(s) {
        return Ok(());
    }
    Err(
        "a valid label must be an empty string or consist of alphanumeric characters, \
         '-', '_' or '.', and must start and end with an alphanumeric character, at most \
         63 characters"
            .into(),
    )
}

pub fn validate_map(labels: Option<&BTreeMap<String, String>>, field: &str, errors: &mut Errors) {
    for (k, v) in labels.into_iter().flatten() {
        errors.check(field, k, key);
        errors.check(format!("{field}[{k}]"), v, value);
    }
}

const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

/// A selector's keys, values and operators.
pub fn validate_selector(selector: &LabelSelector, field: &str, errors: &mut Errors) {
    validate_map(
        selector.match_labels.as_ref(),
        &format!("{field}.matchLabels"),
        errors,
    );
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        errors.check(format!("{at}.key"), &req.key, key);
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => errors.required(
                format!("{at}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            ),
            "Exists" | "DoesNotExist" if !values.is_empty() => errors.invalid(
                format!("{at}.values"),
                values.join(","),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ),
            op if !OPERATORS.contains(&op) => errors.invalid(
                format!("{at}.operator"),
                op,
                "not a valid selector operator (In, NotIn, Exists, DoesNotExist)",
            ),
            _ => {}
        }
        for v in values {
            errors.check(format!("{at}.values"), v, value);
        }
    }
}

/// Whether `selector` selects an object with `labels`. An empty selector
/// selects everything; an unknown operator selects nothing.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_labels
        && selector.match_expressions.iter().flatten().all(|req| {
            let values = req.values.as_deref().unwrap_or_default();
            let current = labels.get(&req.key);
            match req.operator.as_str() {
                "In" => current.is_some_and(|v| values.contains(v)),
                "NotIn" => current.is_none_or(|v| !values.contains(v)),
                "Exists" => current.is_some(),
                "DoesNotExist" => current.is_none(),
                _ => false,
            }
        })
}

/// Whether a selector has no requirement at all (selects everything).
pub fn is_empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn keys_and_values() {
        for ok in ["app", "app.kubernetes.io/name", "a_b.c-d", "X"] {
            assert!(key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "Bad_/x", "a b", "-a", &"a".repeat(64)] {
            assert!(key(bad).is_err(), "{bad}");
        }
        assert!(value("").is_ok());
        assert!(value("v1.2_x").is_ok());
        assert!(value("a;b").is_err());
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let mut s = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            ..Default::default()
        };
        assert!(matches(&s, &web));
        s.match_expressions = Some(vec![expr("tier", "In", &["front", "back"])]);
        assert!(matches(&s, &web));
        s.match_expressions = Some(vec![expr("tier", "NotIn", &["front"])]);
        assert!(!matches(&s, &web));
        s.match_expressions = Some(vec![expr("canary", "DoesNotExist", &[])]);
        assert!(matches(&s, &web));
        s.match_expressions = Some(vec![expr("canary", "Exists", &[])]);
        assert!(!matches(&s, &web));
        s.match_expressions = Some(vec![expr("tier", "Bogus", &["x"])]);
        assert!(!matches(&s, &web));
        assert!(matches(&LabelSelector::default(), &web));
        assert!(is_empty(&LabelSelector::default()));
    }

    #[test]
    fn selector_errors_name_the_field() {
        let s = LabelSelector {
            match_expressions: Some(vec![expr("a", "In", &[]), expr("b", "Bogus", &["x"])]),
            ..Default::default()
        };
        let mut errors = Errors::default();
        validate_selector(&s, "spec.selector", &mut errors);
        let text = errors.to_string();
        assert!(text.contains("spec.selector.matchExpressions[0].values: Required value"));
        assert!(text.contains("spec.selector.matchExpressions[1].operator: Invalid value"));
    }
}
