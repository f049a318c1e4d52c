//! A short list of values by key, most recently used last: the plans and packed weights a
//! [`crate::Layer`] keeps between calls.

use std::sync::Mutex;

/// At most `keep` values by key (`Vec<usize>`: a shape, or what a packing depends on),
/// together at most `budget` bytes (but always the most recent one); the least recently
/// used goes first.
pub(crate) struct Recent<V> {
    /// `(key, value, bytes)`.
    entries: Mutex<Vec<(Vec<usize>, V, usize)>>,
    keep: usize,
    budget: usize,
}

impl<V: Clone> Recent<V> {
    pub(crate) fn new(keep: usize) -> Recent<V> {
        Recent::with_budget(keep, usize::MAX)
    }

    pub(crate) fn with_budget(keep: usize, budget: usize) -> Recent<V> {
        Recent {
            entries: Mutex::new(Vec::new()),
            keep: keep.max(1),
            budget,
        }
    }

    /// The value under `key`, now the most recently used.
    pub(crate) fn get(&self, key: &[usize]) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let i = entries.iter().position(|(k, ..)| k == key)?;
        let entry = entries.remove(i);
        let value = entry.1.clone();
        entries.push(entry);
        Some(value)
    }

    /// Keep `value` under `key` (replacing any value there), dropping the least recently
    /// used beyond `keep`.
    pub(crate) fn insert(&self, key: Vec<usize>, value: V) {
        self.insert_sized(key, value, 0);
    }

    /// Keep `value` of `bytes` under `key` (replacing any value there), dropping the least
    /// recently used beyond `keep` values or `budget` bytes.
    pub(crate) fn insert_sized(&self, key: Vec<usize>, value: V, bytes: usize) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(k, ..)| *k != key);
        let mut held: usize = entries.iter().map(|e| e.2).sum();
        while !entries.is_empty()
            && (entries.len() >= self.keep || held.saturating_add(bytes) > self.budget)
        {
            held -= entries.remove(0).2;
        }
        entries.push((key, value, bytes));
    }

    /// Whether a value is held under `key` (its use order unchanged).
    pub(crate) fn contains(&self, key: &[usize]) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().any(|(k, ..)| k == key)
    }

    /// Whether a value held satisfies `f`.
    pub(crate) fn any(&self, f: impl Fn(&V) -> bool) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().any(|e| f(&e.1))
    }

    /// Drop the values that fail `f`.
    pub(crate) fn retain(&self, f: impl Fn(&V) -> bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| f(&e.1));
    }

    /// Values held.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Bytes held (as given to [`Recent::insert_sized`]).
    pub(crate) fn bytes(&self) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().map(|e| e.2).sum()
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

    #[test]
    fn keeps_within_the_budget_but_always_the_last() {
        let r = Recent::with_budget(4, 100);
        r.insert_sized(vec![1], 'a', 40);
        r.insert_sized(vec![2], 'b', 50);
        assert_eq!((r.len(), r.bytes()), (2, 90));
        r.insert_sized(vec![3], 'c', 30); // 120 > 100: 'a' goes
        assert_eq!((r.get(&[1]), r.len(), r.bytes()), (None, 2, 80));
        r.insert_sized(vec![4], 'd', 500); // over the budget alone: kept alone
        assert_eq!((r.len(), r.bytes(), r.get(&[4])), (1, 500, Some('d')));
        r.insert_sized(vec![5], 'e', 10);
        assert_eq!((r.len(), r.bytes(), r.get(&[4])), (1, 10, None));
    }
}
