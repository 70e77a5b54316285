//! Collecting the few items of one message (its buffers, ports, arenas, descriptors)
//! into a `SmallVec`, inline.

use smallvec::{Array, SmallVec};

/// The list of a message's few items: two inline, then on the heap (a message moves
/// one or two things far more often than more).
pub(crate) type Few<T> = SmallVec<[T; 2]>;

/// `items` collected by pushes. `SmallVec`'s own `collect` (its `extend`) reserves
/// from the size hint and runs two loops, some hundred instructions for the one or
/// two items a message usually has; a push of an item that fits is a compare and a
/// store.
pub(crate) fn collect<A: Array>(items: impl IntoIterator<Item = A::Item>) -> SmallVec<A> {
    let mut out = SmallVec::new();
    for item in items {
        out.push(item);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn past_the_inline_capacity_the_items_spill_in_order() {
        let few: smallvec::SmallVec<[u32; 2]> = super::collect(0..5);
        assert!(few.spilled());
        assert_eq!(few.as_slice(), &[0, 1, 2, 3, 4]);
    }
}
