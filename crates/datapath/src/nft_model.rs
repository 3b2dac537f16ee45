//! An nftables ruleset in memory, for tests of code that writes `nft -f`
//! scripts (as kube-proxy's tests use knftables' fake): scripts are applied
//! to it line by line, atomically, and it refuses what the kernel refuses
//! that such code relies on — a missing table, chain, set or element, an
//! element already there with other data, a chain or set still referenced
//! by a rule or a map element. What it does not understand it refuses too,
//! so a test notices a statement it cannot check.
//!
//! It models names and references, not packet matching: rules are kept as
//! text.

use std::collections::BTreeMap;

use crate::nft::{Family, NftError};

/// The tables, by family and name.
#[derive(Debug, Clone, Default)]
pub struct NftModel {
    tables: BTreeMap<(String, String), Table>,
}

#[derive(Debug, Clone, Default)]
struct Table {
    /// Each chain's rules, as text.
    chains: BTreeMap<String, Vec<String>>,
    sets: BTreeMap<String, Set>,
}

#[derive(Debug, Clone, Default)]
struct Set {
    /// Element key → data (maps) or `None` (sets).
    elements: BTreeMap<String, Option<String>>,
}

/// Why a statement fails, as the kernel's errno names it.
enum Refusal {
    Missing,
    Exists,
    Busy,
    Unsupported,
}

impl NftModel {
    /// Applies `script` as one transaction: every statement or none. A
    /// refusal reads like nft's (`Error: …` and the statement).
    pub fn apply(&mut self, script: &str) -> Result<(), NftError> {
        let mut next = self.clone();
        for line in script.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Err(refusal) = next.statement(line) {
                let why = match refusal {
                    Refusal::Missing => "Could not process rule: No such file or directory",
                    Refusal::Exists => "Could not process rule: File exists",
                    Refusal::Busy => "Could not process rule: Device or resource busy",
                    Refusal::Unsupported => "syntax error, the model does not know this statement",
                };
                return Err(NftError::Rejected {
                    stderr: format!("Error: {why}\n{line}"),
                });
            }
        }
        *self = next;
        Ok(())
    }

    /// The chain names of a table (none when it does not exist).
    pub fn chain_names(&self, family: Family, table: &str) -> Vec<String> {
        self.table(family, table)
            .map(|t| t.chains.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The set and map names of a table.
    pub fn set_names(&self, family: Family, table: &str) -> Vec<String> {
        self.table(family, table)
            .map(|t| t.sets.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// A chain's rules.
    pub fn rules(&self, family: Family, table: &str, chain: &str) -> Option<&[String]> {
        Some(self.table(family, table)?.chains.get(chain)?.as_slice())
    }

    /// A set's or map's elements: key → data.
    pub fn elements(
        &self,
        family: Family,
        table: &str,
        set: &str,
    ) -> Option<&BTreeMap<String, Option<String>>> {
        Some(&self.table(family, table)?.sets.get(set)?.elements)
    }

    fn table(&self, family: Family, table: &str) -> Option<&Table> {
        self.tables
            .get(&(family.word().to_owned(), table.to_owned()))
    }

    fn statement(&mut self, line: &str) -> Result<(), Refusal> {
        let mut words = line.splitn(5, ' ');
        let (verb, object) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let key = (
            words.next().unwrap_or("").to_owned(),
            words.next().unwrap_or("").to_owned(),
        );
        let rest = words.next().unwrap_or("");
        let (name, body) = rest.split_once(' ').unwrap_or((rest, ""));
        if object == "table" {
            return match verb {
                "add" => {
                    self.tables.entry(key).or_default();
                    Ok(())
                }
                "delete" => self.tables.remove(&key).map(drop).ok_or(Refusal::Missing),
                _ => Err(Refusal::Unsupported),
            };
        }
        let table = self.tables.get_mut(&key).ok_or(Refusal::Missing)?;
        match (verb, object) {
            ("add", "chain") => {
                table.chains.entry(name.to_owned()).or_default();
                Ok(())
            }
            ("add", "set" | "map") => {
                table.sets.entry(name.to_owned()).or_default();
                Ok(())
            }
            ("add", "rule") => table.add_rule(name, body),
            ("flush", "chain") => {
                table.chains.get_mut(name).ok_or(Refusal::Missing)?.clear();
                Ok(())
            }
            ("flush", "set" | "map") => {
                let set = table.sets.get_mut(name).ok_or(Refusal::Missing)?;
                set.elements.clear();
                Ok(())
            }
            ("delete", "chain") => table.delete_chain(name),
            ("delete", "set" | "map") => table.delete_set(name),
            ("add", "element") => table.add_elements(name, body),
            ("delete", "element") => table.delete_elements(name, body),
            _ => Err(Refusal::Unsupported),
        }
    }
}

impl Table {
    fn add_rule(&mut self, chain: &str, rule: &str) -> Result<(), Refusal> {
        if !self.chains.contains_key(chain) || !self.resolves(rule) {
            return Err(Refusal::Missing);
        }
        self.chains
            .entry(chain.to_owned())
            .or_default()
            .push(rule.to_owned());
        Ok(())
    }

    /// Whether every chain and set `text` names exists.
    fn resolves(&self, text: &str) -> bool {
        chains_named(text).all(|c| self.chains.contains_key(c))
            && sets_named(text).all(|s| self.sets.contains_key(s))
    }

    fn delete_chain(&mut self, name: &str) -> Result<(), Refusal> {
        if !self.chains.contains_key(name) {
            return Err(Refusal::Missing);
        }
        let from_rules = self
            .chains
            .iter()
            .filter(|(other, _)| other.as_str() != name)
            .flat_map(|(_, rules)| rules)
            .any(|rule| chains_named(rule).any(|c| c == name));
        let from_maps = self
            .sets
            .values()
            .flat_map(|s| s.elements.values().flatten())
            .any(|data| chains_named(data).any(|c| c == name));
        if from_rules || from_maps {
            return Err(Refusal::Busy);
        }
        self.chains.remove(name);
        Ok(())
    }

    fn delete_set(&mut self, name: &str) -> Result<(), Refusal> {
        if !self.sets.contains_key(name) {
            return Err(Refusal::Missing);
        }
        let used = self
            .chains
            .values()
            .flatten()
            .any(|rule| sets_named(rule).any(|s| s == name));
        if used {
            return Err(Refusal::Busy);
        }
        self.sets.remove(name);
        Ok(())
    }

    fn add_elements(&mut self, set: &str, body: &str) -> Result<(), Refusal> {
        let elements = elements_of(body)?;
        if !elements
            .iter()
            .all(|(_, data)| data.is_none_or(|d| self.resolves(d)))
        {
            return Err(Refusal::Missing);
        }
        let set = self.sets.get_mut(set).ok_or(Refusal::Missing)?;
        for (key, data) in elements {
            let data = data.map(str::to_owned);
            match set.elements.get(key) {
                Some(held) if *held != data => return Err(Refusal::Exists),
                _ => {
                    set.elements.insert(key.to_owned(), data);
                }
            }
        }
        Ok(())
    }

    fn delete_elements(&mut self, set: &str, body: &str) -> Result<(), Refusal> {
        let elements = elements_of(body)?;
        let set = self.sets.get_mut(set).ok_or(Refusal::Missing)?;
        for (key, _) in elements {
            set.elements.remove(key).ok_or(Refusal::Missing)?;
        }
        Ok(())
    }
}

/// `{ k1, k2 : v2, … }` → (key, data) pairs.
fn elements_of(body: &str) -> Result<Vec<(&str, Option<&str>)>, Refusal> {
    let inner = body
        .trim()
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or(Refusal::Unsupported)?;
    Ok(inner
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| match e.split_once(" : ") {
            Some((key, data)) => (key.trim(), Some(data.trim())),
            None => (e, None),
        })
        .collect())
}

/// The chains `text` jumps or goes to.
fn chains_named(text: &str) -> impl Iterator<Item = &str> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let targets: Vec<&str> = words
        .windows(2)
        .filter(|w| matches!(w[0], "jump" | "goto"))
        .map(|w| w[1].trim_end_matches([',', ';', '}']))
        .collect();
    targets.into_iter()
}

/// The sets and maps `text` looks up (`@name`).
fn sets_named(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix('@'))
        .map(|w| w.trim_end_matches([',', ';', '}']))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "add table ip t
add map ip t svc { type ipv4_addr : verdict; }
add set ip t ips { type ipv4_addr; }
add chain ip t pre { type nat hook prerouting priority dstnat; }
add chain ip t svc-a
flush chain ip t pre
add rule ip t pre ip daddr @ips ip daddr vmap @svc
add rule ip t svc-a dnat to 10.244.1.2";

    fn model() -> NftModel {
        let mut m = NftModel::default();
        m.apply(BASE).unwrap();
        m
    }

    fn refused(m: &mut NftModel, script: &str) -> String {
        match m.apply(script) {
            Err(NftError::Rejected { stderr }) => stderr,
            other => panic!("{script:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn statements_build_the_table() {
        let mut m = model();
        m.apply(
            "add element ip t svc { 10.96.0.1 : goto svc-a }\nadd element ip t ips { 10.96.0.1 }",
        )
        .unwrap();
        assert_eq!(m.chain_names(Family::Ip, "t"), ["pre", "svc-a"]);
        assert_eq!(m.set_names(Family::Ip, "t"), ["ips", "svc"]);
        let svc = m.elements(Family::Ip, "t", "svc").unwrap();
        assert_eq!(svc["10.96.0.1"].as_deref(), Some("goto svc-a"));
        assert_eq!(m.rules(Family::Ip, "t", "pre").unwrap().len(), 1);
        assert!(m.chain_names(Family::Inet, "t").is_empty());
    }

    #[test]
    fn a_refused_statement_leaves_the_whole_script_undone() {
        let mut m = model();
        let err = refused(
            &mut m,
            "add chain ip t new\nadd element ip t nope { 1.2.3.4 }",
        );
        assert!(
            err.contains("No such file or directory\nadd element ip t nope"),
            "{err}"
        );
        assert!(!m.chain_names(Family::Ip, "t").contains(&"new".to_string()));
    }

    #[test]
    fn what_the_kernel_refuses_is_refused() {
        let mut m = model();
        m.apply("add element ip t svc { 10.96.0.1 : goto svc-a }")
            .unwrap();
        // Same key, other data; an element that is not there.
        assert!(
            refused(&mut m, "add element ip t svc { 10.96.0.1 : goto pre }")
                .contains("File exists")
        );
        assert!(refused(&mut m, "delete element ip t svc { 10.96.0.9 }").contains("No such file"));
        // A chain a map element goes to, a set a rule looks up.
        assert!(refused(&mut m, "delete chain ip t svc-a").contains("busy"));
        assert!(refused(&mut m, "delete set ip t ips").contains("busy"));
        // References to what does not exist.
        assert!(refused(&mut m, "add rule ip t pre jump nowhere").contains("No such file"));
        assert!(refused(&mut m, "add rule ip t pre ip daddr @none").contains("No such file"));
        assert!(refused(&mut m, "add rule ip t none accept").contains("No such file"));
        assert!(refused(&mut m, "insert rule ip t pre accept").contains("does not know"));
        // Removed in the right order, all goes.
        m.apply("delete element ip t svc { 10.96.0.1 }\nflush chain ip t svc-a\ndelete chain ip t svc-a\nflush chain ip t pre\ndelete set ip t ips")
            .unwrap();
        assert_eq!(m.chain_names(Family::Ip, "t"), ["pre"]);
        m.apply("add element ip t svc { 10.96.0.1 : accept }")
            .unwrap();
        m.apply("add element ip t svc { 10.96.0.1 : accept }")
            .unwrap();
    }
}
