//! A set kept as a sorted `Vec`, for the sets the endpoint table holds per
//! address: the slices that list it and the Service addresses on an IP,
//! which have one member, rarely two. A `BTreeSet` allocates a whole node
//! (eleven slots) for its first member; at 10 000 addresses that was most
//! of the table's memory. Iteration is in order, as a `BTreeSet`'s is, so
//! swapping one for the other changes no result.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmallSet<T>(Vec<T>);

impl<T> Default for SmallSet<T> {
    fn default() -> Self {
        SmallSet(Vec::new())
    }
}

impl<T: Ord> SmallSet<T> {
    /// Adds `value`; false if it was there already.
    pub fn insert(&mut self, value: T) -> bool {
        match self.0.binary_search(&value) {
            Ok(_) => false,
            Err(at) => {
                // Grow by one: these sets stay small, and a doubling Vec
                // would reserve four slots for the first member.
                self.0.reserve_exact(1);
                self.0.insert(at, value);
                true
            }
        }
    }

    /// Removes `value`; false if it was not there.
    pub fn remove<Q>(&mut self, value: &Q) -> bool
    where
        T: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self.0.binary_search_by(|m| m.borrow().cmp(value)) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    pub fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        self.0.retain(keep);
    }
}

impl<T> SmallSet<T> {
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl<'a, T> IntoIterator for &'a SmallSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::SmallSet;

    #[test]
    fn behaves_as_a_btreeset_and_holds_only_its_members() {
        let mut small = SmallSet::default();
        let mut tree = BTreeSet::new();
        let ops: [(bool, &str); 9] = [
            (true, "web-b"),
            (true, "web-a"),
            (true, "web-b"),
            (true, "web-c"),
            (false, "web-x"),
            (false, "web-a"),
            (true, "web-a"),
            (false, "web-c"),
            (false, "web-c"),
        ];
        for (insert, id) in ops {
            let (s, t) = if insert {
                (small.insert(id.to_string()), tree.insert(id.to_string()))
            } else {
                (small.remove(id), tree.remove(id))
            };
            assert_eq!(s, t, "{insert} {id}");
            assert!(
                small.iter().eq(tree.iter()),
                "same members in the same order"
            );
        }
        assert_eq!(small.len(), 2);
        assert!(small.capacity() <= 3, "no slots reserved ahead");
        small.retain(|id| id != "web-a");
        assert_eq!(small.iter().collect::<Vec<_>>(), ["web-b"]);
    }
}
