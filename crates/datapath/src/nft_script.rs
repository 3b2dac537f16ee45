//! The one way weft writes nftables transactions: statements for one table,
//! built through typed calls and rendered as `nft -f` text (the standard
//! interface, applied atomically by [`crate::nft::apply`]). Callers give
//! names and rule bodies; the statement syntax, the table reference and the
//! checks on names live here and nowhere else.
//!
//! Names weft generates are nft identifiers ([`is_identifier`]); anything
//! else is a bug in the caller, caught by a debug assertion — names from
//! users never reach a script unchecked.

use std::fmt::Write as _;

use crate::nft::Family;

/// Set or map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    Set,
    Map,
}

impl SetKind {
    fn word(self) -> &'static str {
        match self {
            SetKind::Set => "set",
            SetKind::Map => "map",
        }
    }
}

/// How a base chain hooks into the kernel's packet path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `filter`, `nat`, `route`.
    pub chain_type: &'static str,
    /// `prerouting`, `postrouting`, `forward`, …
    pub hook: &'static str,
    /// A number or a standard name (`dstnat`, `srcnat`, `filter`, …),
    /// possibly with an offset (`dstnat - 5`).
    pub priority: String,
    /// `accept` or `drop`; `None` leaves nft's default (accept).
    pub policy: Option<&'static str>,
}

/// The statements of one transaction on one table, in order.
#[derive(Debug, Clone)]
pub struct Script {
    /// `<family> <table>`, as every statement names the table.
    table: String,
    out: String,
}

impl Script {
    pub fn new(family: Family, table: &str) -> Script {
        debug_assert!(is_identifier(table), "nft table name {table:?}");
        Script {
            table: format!("{} {table}", family.word()),
            out: String::new(),
        }
    }

    /// The text for `nft -f`.
    pub fn as_str(&self) -> &str {
        &self.out
    }

    pub fn into_string(self) -> String {
        self.out
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Appends `other`'s statements (a later phase of the same table).
    pub fn append(&mut self, other: &Script) {
        debug_assert_eq!(self.table, other.table, "scripts of two tables");
        self.out.push_str(&other.out);
    }

    pub fn add_table(&mut self) -> &mut Self {
        self.line(format_args!("add table {}", self.table.clone()))
    }

    pub fn delete_table(&mut self) -> &mut Self {
        self.line(format_args!("delete table {}", self.table.clone()))
    }

    /// A regular chain (reached by jumps), or a base chain with `hook`.
    pub fn add_chain(&mut self, name: &str, hook: Option<&Hook>) -> &mut Self {
        let t = self.named(name);
        match hook {
            None => self.line(format_args!("add chain {t}")),
            Some(h) => {
                let policy = h
                    .policy
                    .map(|p| format!(" policy {p} ;"))
                    .unwrap_or_default();
                self.line(format_args!(
                    "add chain {t} {{ type {} hook {} priority {} ;{policy} }}",
                    h.chain_type, h.hook, h.priority
                ))
            }
        }
    }

    pub fn flush_chain(&mut self, name: &str) -> &mut Self {
        let t = self.named(name);
        self.line(format_args!("flush chain {t}"))
    }

    pub fn delete_chain(&mut self, name: &str) -> &mut Self {
        let t = self.named(name);
        self.line(format_args!("delete chain {t}"))
    }

    /// A rule at the end of `chain`; `rule` is its nft expression text.
    pub fn add_rule(&mut self, chain: &str, rule: &str) -> &mut Self {
        debug_assert!(!rule.contains('\n'), "nft rule with a newline: {rule:?}");
        let t = self.named(chain);
        self.line(format_args!("add rule {t} {rule}"))
    }

    /// A set or map; `declaration` is what goes between its braces
    /// (`type ipv4_addr ; flags timeout ;`).
    pub fn add_set(&mut self, kind: SetKind, name: &str, declaration: &str) -> &mut Self {
        let t = self.named(name);
        self.line(format_args!("add {} {t} {{ {declaration} }}", kind.word()))
    }

    /// A named limit (a token bucket rules share with `limit name`);
    /// `declaration` goes between its braces (`rate 10/second ;`).
    pub fn add_limit(&mut self, name: &str, declaration: &str) -> &mut Self {
        let t = self.named(name);
        self.line(format_args!("add limit {t} {{ {declaration} }}"))
    }

    pub fn flush_set(&mut self, kind: SetKind, name: &str) -> &mut Self {
        let t = self.named(name);
        self.line(format_args!("flush {} {t}", kind.word()))
    }

    pub fn delete_set(&mut self, kind: SetKind, name: &str) -> &mut Self {
        let t = self.named(name);
        self.line(format_args!("delete {} {t}", kind.word()))
    }

    /// Elements of a set or map: `elements` is their list, comma-separated
    /// (`key`, or `key : value` for maps) — callers that write thousands
    /// join them into a few large strings rather than many small ones.
    pub fn add_elements(&mut self, set: &str, elements: &str) -> &mut Self {
        let t = self.named(set);
        self.line(format_args!("add element {t} {{ {elements} }}"))
    }

    pub fn delete_elements(&mut self, set: &str, elements: &str) -> &mut Self {
        let t = self.named(set);
        self.line(format_args!("delete element {t} {{ {elements} }}"))
    }

    /// `<family> <table> <name>`.
    fn named(&self, name: &str) -> String {
        debug_assert!(is_identifier(name), "nft name {name:?}");
        format!("{} {name}", self.table)
    }

    fn line(&mut self, statement: std::fmt::Arguments<'_>) -> &mut Self {
        let _ = self.out.write_fmt(statement);
        self.out.push('\n');
        self
    }
}

/// What nft's scanner reads as one unquoted name: a letter, `_` or `.`,
/// then letters, digits and `/ - _ .`.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '_' | '.'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'))
        && name.len() <= 256
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_render_as_nft_reads_them() {
        let mut s = Script::new(Family::Inet, "weft");
        let hook = Hook {
            chain_type: "nat",
            hook: "postrouting",
            priority: "srcnat".into(),
            policy: Some("accept"),
        };
        s.add_table()
            .add_chain("postrouting", Some(&hook))
            .flush_chain("postrouting")
            .add_rule("postrouting", "ip saddr 10.0.0.0/8 masquerade")
            .add_set(SetKind::Map, "ports", "type inet_service : verdict ;")
            .add_elements("ports", "80 : accept, 443 : drop")
            .delete_elements("ports", "80")
            .flush_set(SetKind::Map, "ports")
            .delete_set(SetKind::Map, "ports")
            .add_chain("helper", None)
            .delete_chain("helper");
        assert_eq!(
            s.as_str(),
            "add table inet weft\n\
             add chain inet weft postrouting { type nat hook postrouting priority srcnat ; policy accept ; }\n\
             flush chain inet weft postrouting\n\
             add rule inet weft postrouting ip saddr 10.0.0.0/8 masquerade\n\
             add map inet weft ports { type inet_service : verdict ; }\n\
             add element inet weft ports { 80 : accept, 443 : drop }\n\
             delete element inet weft ports { 80 }\n\
             flush map inet weft ports\n\
             delete map inet weft ports\n\
             add chain inet weft helper\n\
             delete chain inet weft helper\n"
        );
    }

    #[test]
    fn identifiers_are_what_nft_takes_unquoted() {
        for good in [
            "weft",
            "svc-0a1b",
            "pick_tcp.2",
            "a",
            "aff-1f-demo/web/tcp/p__10.0.0.1/80",
        ] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "-a",
            "bad name",
            "x;y",
            "a\"b",
            "a{b",
            "é",
            &"a".repeat(257),
        ] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn phases_append_in_order() {
        let mut first = Script::new(Family::Ip, "t");
        first.add_chain("a", None);
        let mut second = Script::new(Family::Ip, "t");
        second.flush_chain("a");
        first.append(&second);
        assert_eq!(first.as_str(), "add chain ip t a\nflush chain ip t a\n");
        assert!(!first.is_empty() && Script::new(Family::Ip, "t").is_empty());
    }
}
