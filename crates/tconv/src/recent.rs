//! A short list of values by key, most recently used last: the plans and packed weights a
//! [`crate::Layer`] keeps between calls.

use std::sync::Mutex;

/// At most `keep` values by key (`Vec<usize>`: a shape, or what a packing depends on);
/// the least recently used goes first.
pub(crate) struct Recent<V> {
    entries: Mutex<Vec<(Vec<usize>, V)>>,
    keep: usize,
}

impl<V: Clone> Recent<V> {
    pub(crate) fn new(keep: usize) -> Recent<V> {
        Recent {
            entries: Mutex::new(Vec::new()),
            keep: keep.max(1),
        }
    }

    /// The value under `key`, now the most recently used.
    pub(crate) fn get(&self, key: &[usize]) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let i = entries.iter().position(|(k, _)| k == key)?;
        let entry = entries.remove(i);
        let value = entry.1.clone();
        entries.push(entry);
        Some(value)
    }

    /// Keep `value` under `key` (replacing any value there), dropping the least recently
    /// used beyond `keep`.
    pub(crate) fn insert(&self, key: Vec<usize>, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(k, _)| *k != key);
        if entries.len() >= self.keep {
            entries.remove(0);
        }
        entries.push((key, value));
    }

    /// Values held.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn keeps_the_most_recently_used() {
        let r = Recent::new(2);
        r.insert(vec![1], 'a');
        r.insert(vec![2], 'b');
        assert_eq!(r.get(&[1]), Some('a')); // now 2 is the least recently used
        r.insert(vec![3], 'c');
        assert_eq!(
            (r.get(&[2]), r.get(&[1]), r.get(&[3])),
            (None, Some('a'), Some('c'))
        );
        r.insert(vec![3], 'd');
        assert_eq!(
            (r.len(), r.get(&[3]), r.get(&[1])),
            (2, Some('d'), Some('a'))
        );
    }
}
