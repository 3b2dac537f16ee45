//! Kubernetes' name rules (apimachinery's `validation.IsDNS1123Label` and
//! friends), with its error messages. Every name that reaches a file path,
//! a namespace name, a process argument or a script passes one of these
//! first: none of them admits `/`, `.`-only names, `;`, `=`, spaces or
//! upper case.

const LABEL_MAX: usize = 63;
const SUBDOMAIN_MAX: usize = 253;
const PORT_NAME_MAX: usize = 15;

fn alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn too_long(max: usize) -> String {
    format!("must be no more than {max} characters")
}

fn is_label_shaped(s: &str) -> bool {
    s.chars().all(|c| alnum(c) || c == '-')
        && s.chars().next().is_some_and(alnum)
        && s.chars().last().is_some_and(alnum)
}

/// A lowercase RFC 1123 label: what namespace, container and most object
/// names must be.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > LABEL_MAX {
        return Err(too_long(LABEL_MAX));
    }
    if !is_label_shaped(s) {
        return Err(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric \
                    characters or '-', and must start and end with an alphanumeric character \
                    (e.g. 'my-name', or '123-abc')"
                .into(),
        );
    }
    Ok(())
}

/// A lowercase RFC 1123 subdomain: labels joined by dots, what Pod,
/// Deployment and Node names must be.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > SUBDOMAIN_MAX {
        return Err(too_long(SUBDOMAIN_MAX));
    }
    if !s.split('.').all(is_label_shaped) {
        return Err(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                    characters, '-' or '.', and must start and end with an alphanumeric \
                    character (e.g. 'example.com')"
                .into(),
        );
    }
    Ok(())
}

/// An RFC 1035 label: a DNS label that starts with a letter, what Service
/// names must be (they become DNS names).
pub fn dns1035_label(s: &str) -> Result<(), String> {
    if s.len() > LABEL_MAX {
        return Err(too_long(LABEL_MAX));
    }
    if !is_label_shaped(s) || !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(
            "a DNS-1035 label must consist of lower case alphanumeric characters or \
                    '-', start with an alphabetic character, and end with an alphanumeric \
                    character (e.g. 'my-name', or 'abc-123')"
                .into(),
        );
    }
    Ok(())
}

/// An IANA service name (RFC 6335), what container and Service port names
/// must be.
pub fn port_name(s: &str) -> Result<(), String> {
    if s.len() > PORT_NAME_MAX {
        return Err(too_long(PORT_NAME_MAX));
    }
    if !is_label_shaped(s) || s.contains("--") || !s.chars().any(|c| c.is_ascii_lowercase()) {
        return Err(
            "a port name must contain only lower case alphanumeric characters and '-', \
                    at least one letter, no '--', and must start and end with an alphanumeric \
                    character (e.g. 'http')"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "0", "my-name", "123-abc", &"a".repeat(63)] {
            assert!(dns1123_label(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a.b",
            "a_b",
            "a b",
            "a/b",
            "..",
            &"a".repeat(64),
        ] {
            assert!(dns1123_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subdomains() {
        for ok in ["a", "a.b", "web-0", "example.com", "1.2.3"] {
            assert!(dns1123_subdomain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            ".a",
            "a.",
            "/../../tmp/x",
            "inj;IP=10.244.2.200",
            "Upper",
            &"a".repeat(254),
        ] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_names_start_with_a_letter() {
        assert!(dns1035_label("web").is_ok());
        assert!(dns1035_label("1web").is_err());
        assert!(dns1035_label("bad name").is_err());
    }

    #[test]
    fn port_names() {
        for ok in ["http", "h2c", "dns-tcp", "a1"] {
            assert!(port_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "80",
            "a--b",
            "-http",
            "http-",
            "averyveryverylongname",
            "HTTP",
        ] {
            assert!(port_name(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// Whatever the input, an accepted name is safe as one path
        /// component, a namespace name and a CNI_ARGS value.
        #[test]
        fn accepted_names_cannot_escape(s in "\\PC{0,300}") {
            for check in [dns1123_label, dns1123_subdomain, dns1035_label, port_name] {
                if check(&s).is_ok() {
                    proptest::prop_assert!(!s.is_empty() && s.len() <= 253);
                    proptest::prop_assert!(s != "." && s != ".." && !s.starts_with('.'));
                    proptest::prop_assert!(s.chars().all(|c| c.is_ascii_lowercase()
                        || c.is_ascii_digit() || c == '-' || c == '.'));
                }
            }
        }

        #[test]
        fn shaped_labels_are_accepted(s in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?") {
            proptest::prop_assert!(dns1123_label(&s).is_ok());
            proptest::prop_assert!(dns1123_subdomain(&s).is_ok());
        }
    }
}
