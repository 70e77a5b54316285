//! The encoder's map of buffer identities to numbers.

use std::collections::HashMap;

use smallvec::SmallVec;

/// Identities (a buffer's address) to numbers, for the encoder: the few a message
/// usually names in place and scanned, a hash map past `IdMap::FEW`.
pub(super) enum IdMap {
    Few(SmallVec<[(usize, u64); IdMap::FEW]>),
    Many(HashMap<usize, u64>),
}

impl Default for IdMap {
    fn default() -> Self {
        IdMap::Few(SmallVec::new())
    }
}

impl IdMap {
    pub(super) const FEW: usize = 8;

    pub(super) fn get(&self, identity: usize) -> Option<u64> {
        match self {
            IdMap::Few(few) => few.iter().find(|(i, _)| *i == identity).map(|&(_, n)| n),
            IdMap::Many(many) => many.get(&identity).copied(),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            IdMap::Few(few) => few.len(),
            IdMap::Many(many) => many.len(),
        }
    }

    /// Maps `identity`, which `get` just found unmapped, to `n`.
    pub(super) fn insert_new(&mut self, identity: usize, n: u64) {
        match self {
            IdMap::Few(few) if few.len() < IdMap::FEW => few.push((identity, n)),
            IdMap::Few(_) => self.insert_first(identity, n),
            IdMap::Many(many) => {
                many.insert(identity, n);
            }
        }
    }

    /// Maps `identity` to `n` unless it is mapped already (the first mapping stays).
    pub(super) fn insert_first(&mut self, identity: usize, n: u64) {
        match self {
            IdMap::Few(few) if few.iter().any(|(i, _)| *i == identity) => {}
            IdMap::Few(few) if few.len() < IdMap::FEW => few.push((identity, n)),
            IdMap::Few(few) => {
                let mut many: HashMap<usize, u64> = few.drain(..).collect();
                many.insert(identity, n);
                *self = IdMap::Many(many);
            }
            IdMap::Many(many) => {
                many.entry(identity).or_insert(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IdMap;

    #[test]
    fn the_first_mapping_stays_past_the_switch_to_a_hash_map() {
        let mut map = IdMap::default();
        for i in 0..3 * IdMap::FEW {
            map.insert_first(i * 8, i as u64);
            map.insert_first(i * 8, 999);
        }
        assert!(matches!(map, IdMap::Many(_)));
        assert_eq!(map.len(), 3 * IdMap::FEW);
        for i in 0..3 * IdMap::FEW {
            assert_eq!(map.get(i * 8), Some(i as u64));
        }
        assert_eq!(map.get(1), None);
    }
}
