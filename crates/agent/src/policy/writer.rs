//! Writing table `ip weft-policy`: whole, with one `nft -f`, when its
//! structure (chains, rules, sets) changed or nothing was written yet;
//! otherwise only the set elements that changed, over NETLINK_NETFILTER
//! in one transaction. No `nft` process is
//! started then, which is what keeps a new pod's ADD short. It works in
//! the calling thread's network namespace and decides nothing: the table
//! is `weft_policy::rules`'.

use std::collections::BTreeSet;

use weft_datapath::nft::{self, Family, NftError};
use weft_datapath::nft_sets::{key, KeyPart, SetElements, Sets};
use weft_policy::rules::{Element, Table, TABLE};

/// What [`write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Whole,
    Elements { added: usize, removed: usize },
    Nothing,
}

/// Makes the kernel's table `table`, `previous` being what was last
/// written (`None`: unknown). Element writes that fail fall back to a
/// whole write.
pub fn write(previous: Option<&Table>, table: &Table) -> Result<Written, NftError> {
    let Some(previous) = previous.filter(|p| p.structure == table.structure) else {
        nft::apply(&table.script(), None)?;
        return Ok(Written::Whole);
    };
    let (added, removed) = changes(previous, table);
    if added.is_empty() && removed.is_empty() {
        return Ok(Written::Nothing);
    }
    let count = |c: &[SetElements]| c.iter().map(|s| s.keys.len()).sum();
    let written = Written::Elements {
        added: count(&added),
        removed: count(&removed),
    };
    let elementwise =
        Sets::open(Family::Ip, TABLE).and_then(|mut sets| sets.change(&added, &removed));
    match elementwise {
        Ok(()) => Ok(written),
        Err(e) => {
            tracing::warn!(error = %e, "writing NetworkPolicy set elements failed; writing the table whole");
            nft::apply(&table.script(), None)?;
            Ok(Written::Whole)
        }
    }
}

/// The elements to add and to remove, per set (the structures are equal,
/// so both tables name the same sets).
fn changes(previous: &Table, table: &Table) -> (Vec<SetElements>, Vec<SetElements>) {
    let empty = BTreeSet::new();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for (set, now) in &table.elements {
        let before = previous.elements.get(set).unwrap_or(&empty);
        let keys = |a: &BTreeSet<Element>, b: &BTreeSet<Element>| -> Vec<Vec<u8>> {
            a.difference(b).filter_map(element_key).collect()
        };
        for (list, keys) in [
            (&mut added, keys(now, before)),
            (&mut removed, keys(before, now)),
        ] {
            if !keys.is_empty() {
                list.push(SetElements {
                    set: set.clone(),
                    keys,
                });
            }
        }
    }
    (added, removed)
}

fn element_key(element: &Element) -> Option<Vec<u8>> {
    match element {
        Element::Addr(ip) => key(&[KeyPart::Ip((*ip).into())]),
        Element::AddrPort(ip, port) => key(&[KeyPart::Ip((*ip).into()), KeyPart::Port(*port)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn table(structure: &str, elements: &[(&str, &[Element])]) -> Table {
        Table {
            structure: structure.into(),
            elements: elements
                .iter()
                .map(|(set, e)| (set.to_string(), e.iter().copied().collect()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn only_the_difference_is_written() {
        let a = Element::Addr("10.244.1.2".parse().unwrap());
        let b = Element::Addr("10.244.1.3".parse().unwrap());
        let pair = Element::AddrPort("10.244.1.3".parse().unwrap(), 81);
        let before = table("s", &[("peer-0", &[a]), ("named-0", &[])]);
        let after = table("s", &[("peer-0", &[b]), ("named-0", &[pair])]);
        let (added, removed) = changes(&before, &after);
        assert_eq!(
            added,
            [
                SetElements {
                    set: "named-0".into(),
                    keys: vec![vec![10, 244, 1, 3, 0, 81, 0, 0]],
                },
                SetElements {
                    set: "peer-0".into(),
                    keys: vec![vec![10, 244, 1, 3]],
                },
            ]
        );
        assert_eq!(
            removed,
            [SetElements {
                set: "peer-0".into(),
                keys: vec![vec![10, 244, 1, 2]],
            }]
        );
        assert_eq!(changes(&after, &after), (vec![], vec![]));
    }
}
