//! This process's views of a segment's chunks, opened and closed with `mprotect`, and
//! the kernel mappings (VMAs) that costs, kept within a budget.
//!
//! A VMA can only have one protection and one set of flags, so closing a chunk that
//! shares a mapping with its neighbours splits that mapping (into up to three), and
//! reopening it merges them back: 6 µs per `mprotect` pair of a 4 KiB chunk, against
//! 2.4 µs for a chunk that is a VMA of its own. So a chunk is kept apart from its
//! neighbours (*separated*) by a VMA flag that changes nothing else: `MADV_DONTFORK`
//! (`VM_DONTCOPY`) for an even index, `MADV_DONTDUMP` (`VM_DONTDUMP`) for an odd one
//! (`platform::VmaFlag`). A separated chunk then differs from each neighbour whether
//! that one is separated (the other flag) or not (no flag). Segments of at most
//! `SEPARATE_VMAS_UP_TO` chunks are separated whole when mapped (every even chunk
//! advised, which keeps the odd ones apart too); in larger segments (4 to 32 KiB
//! chunks) a chunk is separated the first time this process closes it, and stays so
//! until it is free and the budget is short.
//!
//! The side effects, on every kernel that has the advice (3.4 and up): a forked child
//! does not inherit the even chunks (fork without exec is not supported anyway), and
//! the odd chunks of small classes are left out of core dumps. `MADV_RANDOM` and
//! `MADV_SEQUENTIAL`, used before, are not free: since Linux 6.3 `vma_has_recency()`
//! is false for them, so reclaim ignores the accessed bits of pages mapped through such
//! a VMA and hot buffers become preferred victims. `MADV_NOHUGEPAGE` has no effect on
//! a VMA smaller than a PMD, but nothing clears it again without setting
//! `MADV_HUGEPAGE`, so a separation made with it could not be undone.
//!
//! The budget counts, per segment, the chunk boundaries beside a *marked* chunk (one
//! separated, or closed): only there can the segment's mapping be split, so one more
//! than that bounds its VMAs. Marking a chunk charges the boundaries it adds (2 if
//! neither neighbour is marked, 1 if one is, 0 if both are; chunk 0's boundary with
//! the metadata always counts, the last chunk has none after it); unmarking it (a
//! closed chunk that is not separated being reopened, a separation undone) gives them
//! back. All segments of the process (ours and the peers' we map) share
//! `PROCESS_BUDGET`. A chunk that cannot be closed within it is not closed: it is
//! detached in Rust only, as with `revoke_transferred_pages(false)`, and counted in
//! `diagnostics().revocations_skipped`. Before that, the separations and closed views
//! of the segment's free chunks are undone (the views reopened: no buffer of this
//! process refers to a free chunk, and the owner's next holder gets an open view
//! anyway), and the close is tried again.

use std::io;
use std::ops::{Deref, DerefMut};

use super::segment::{ArenaSegment, SEPARATED_VMA_BUDGET, VMAS_PER_SEPARATED_CHUNK};
use super::state::{self, Local, Separation};
use crate::diagnostics;
use crate::platform::{self, VmaFlag};
use crate::shm::sync::{AtomicUsize, Ordering};

/// A budget of mappings that separated and closed chunks may add.
pub(crate) struct VmaBudget {
    used: AtomicUsize,
    limit: usize,
}

/// The budget every segment of this process shares (a process-local counter, not
/// shared memory).
pub(super) static PROCESS_BUDGET: VmaBudget = VmaBudget::new(SEPARATED_VMA_BUDGET);

impl VmaBudget {
    pub(super) const fn new(limit: usize) -> VmaBudget {
        VmaBudget { used: AtomicUsize::new(0), limit }
    }

    /// Takes `n` if they fit; false (and nothing taken) if not. A budget that is
    /// plainly short costs one load, no read-modify-write.
    pub(super) fn take(&self, n: usize) -> bool {
        // Relaxed: a process-local count; the fetch_add itself makes concurrent
        // segments share it without exceeding it.
        if n == 0 {
            return true;
        }
        if self.used.load(Ordering::Relaxed).saturating_add(n) > self.limit {
            return false;
        }
        if self.used.fetch_add(n, Ordering::Relaxed).saturating_add(n) > self.limit {
            self.used.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(super) fn give_back(&self, n: usize) {
        if n > 0 {
            // Relaxed: as in `take`.
            self.used.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Mappings taken now.
    #[cfg(test)]
    pub(super) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// This process's marks of a segment's chunks (indexed like the chunks), and what they
/// charged to the budget; the data of the segment's bookkeeping lock.
#[derive(Clone, Debug)]
pub(crate) struct Marks {
    chunks: Vec<Local>,
    /// Boundaries beside marked chunks, charged to the segment's budget.
    pub(super) charged: usize,
    /// Chunks are separated one by one, when first closed (not all when mapped).
    pub(super) late: bool,
}

impl Deref for Marks {
    type Target = [Local];
    fn deref(&self) -> &[Local] {
        &self.chunks
    }
}

impl DerefMut for Marks {
    fn deref_mut(&mut self) -> &mut [Local] {
        &mut self.chunks
    }
}

impl Marks {
    pub(super) fn new(chunks: Vec<Local>) -> Marks {
        Marks { chunks, charged: 0, late: true }
    }

    /// Whether the mapping may be split beside chunk `i`: it is separated or closed.
    fn marked(&self, i: usize) -> bool {
        let entry = &self.chunks[i];
        entry.separation == Separation::Yes || !entry.open
    }

    /// The boundaries of chunk `i` whose other side is not marked: what marking it
    /// adds, or unmarking it frees.
    fn boundaries(&self, i: usize) -> usize {
        let left = i == 0 || !self.marked(i - 1);
        let right = i + 1 < self.chunks.len() && !self.marked(i + 1);
        let n = usize::from(left) + usize::from(right);
        debug_assert!(n <= VMAS_PER_SEPARATED_CHUNK);
        n
    }
}

/// What closing a chunk's view did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closing {
    /// Closed (or closed already).
    Closed,
    /// Left open: the budget of mappings is spent (counted in `revocations_skipped`).
    Skipped,
    /// Left open: `mprotect` failed (counted in `revocations_failed`).
    Failed,
}

impl ArenaSegment {
    /// Separates every chunk of a segment of at most `SEPARATE_VMAS_UP_TO` chunks when
    /// it is mapped, if the budget allows (all its boundaries are charged, so whatever
    /// is later closed is covered); else its chunks are separated one by one, late.
    pub(super) fn separate_all(&self, marks: &mut Marks) {
        let n = self.chunk_count as usize;
        if !self.budget.take(n) {
            return;
        }
        marks.charged = n;
        marks.late = false;
        for index in (0..self.chunk_count).step_by(2) {
            // Only an optimisation: a failure leaves the chunks sharing mappings,
            // which the charge covers.
            let _ = self.advise(index, true);
        }
        for entry in marks.iter_mut() {
            entry.separation = Separation::Yes;
        }
    }

    /// Sets (`on`) or clears the flag that keeps chunk `index` a VMA of its own.
    fn advise(&self, index: u32, on: bool) -> io::Result<()> {
        #[cfg(test)]
        if knobs::FAIL_ADVICE.with(|f| f.get()) {
            return Err(io::Error::other("advice failed (test)"));
        }
        let flag = match (index.is_multiple_of(2), on) {
            (true, true) => VmaFlag::DontFork,
            (true, false) => VmaFlag::DoFork,
            (false, true) => VmaFlag::DontDump,
            (false, false) => VmaFlag::DoDump,
        };
        // SAFETY: a whole chunk, page-aligned, inside our mapping; the advice changes
        // neither the contents nor the protection.
        unsafe { platform::madvise_vma_flag(self.chunk_ptr(index).as_ptr(), self.chunk_size(), flag) }
    }

    fn protect(&self, index: u32, open: bool) -> io::Result<()> {
        #[cfg(test)]
        if knobs::FAIL_MPROTECT.with(|f| f.get()) {
            return Err(io::Error::from_raw_os_error(12));
        }
        // SAFETY: a whole chunk, page-aligned, inside our mapping; when closing, the
        // caller has taken the chunk from its last buffer, or it is free (no reference
        // of this process to its bytes is alive).
        unsafe { platform::mprotect(self.chunk_ptr(index).as_ptr(), self.chunk_size(), open) }
    }

    /// Gives back what unmarking chunk `i` frees (call after the change; the count
    /// does not depend on the chunk's own mark).
    fn unmarked(&self, marks: &mut Marks, i: usize) -> usize {
        let n = marks.boundaries(i).min(marks.charged);
        marks.charged -= n;
        self.budget.give_back(n);
        n
    }

    /// Opens this process's view of a chunk (no syscall if open). A heap segment's
    /// views only change in the bookkeeping: its pages are never protected.
    pub(super) fn open_view(&self, marks: &mut Marks, index: u32) -> io::Result<()> {
        let i = index as usize;
        if marks[i].open {
            return Ok(());
        }
        if !self.is_heap() {
            self.protect(index, true)?;
        }
        marks[i].open = true;
        if !self.is_heap() && marks[i].separation != Separation::Yes {
            self.unmarked(marks, i);
        }
        Ok(())
    }

    /// Closes this process's view of a chunk whose last buffer has just let it go, if
    /// the budget of mappings allows (see the module's text). Never fails: a view left
    /// open is counted, and the chunk is then detached in Rust only.
    pub(super) fn close_view(&self, marks: &mut Marks, index: u32) -> Closing {
        let i = index as usize;
        if !marks[i].open {
            return Closing::Closed;
        }
        if self.is_heap() {
            marks[i].open = false;
            return Closing::Closed;
        }
        let mut charge = if marks.marked(i) { 0 } else { marks.boundaries(i) };
        if !self.budget.take(charge) {
            // Undoing free chunks' marks may unmark this one's neighbours: recount.
            self.unmark_free_chunks(marks, index);
            charge = if marks.marked(i) { 0 } else { marks.boundaries(i) };
            if !self.budget.take(charge) {
                diagnostics::count_revocation_skipped();
                return Closing::Skipped;
            }
        }
        marks.charged += charge;
        if marks[i].separation == Separation::No {
            marks[i].separation = match self.advise(index, true) {
                Ok(()) => Separation::Yes,
                Err(_) => Separation::GaveUp,
            };
        }
        if self.protect(index, false).is_err() {
            if marks[i].separation != Separation::Yes {
                self.unmarked(marks, i);
            }
            diagnostics::count_revocation_failed();
            return Closing::Failed;
        }
        marks[i].open = false;
        Closing::Closed
    }

    /// Undoes the marks of the chunks of this segment that are free (FREE in shared
    /// memory, no buffer or message of ours on them), but `except`: reopens their
    /// views and clears their separations, giving back what they charged. Only in
    /// segments separated late (those separated whole are charged whole). A scan of
    /// the segment's marks, made only when the budget is short.
    fn unmark_free_chunks(&self, marks: &mut Marks, except: u32) {
        if !marks.late {
            return;
        }
        for index in (0..self.chunk_count).filter(|&j| j != except) {
            let i = index as usize;
            if !marks.marked(i) || marks[i].busy || !state::is_free(self.state(index)) {
                continue;
            }
            if !marks[i].open {
                if self.protect(index, true).is_err() {
                    continue;
                }
                marks[i].open = true;
            }
            if marks[i].separation == Separation::Yes {
                if self.advise(index, false).is_err() {
                    continue;
                }
                marks[i].separation = Separation::No;
            }
            self.unmarked(marks, i);
        }
    }
}

/// Failures the tests inject, per thread.
#[cfg(test)]
pub(super) mod knobs {
    use std::cell::Cell;
    std::thread_local! {
        /// Every `madvise` of a chunk's flag fails.
        pub(crate) static FAIL_ADVICE: Cell<bool> = const { Cell::new(false) };
        /// Every `mprotect` of a chunk fails (as with `ENOMEM`).
        pub(crate) static FAIL_MPROTECT: Cell<bool> = const { Cell::new(false) };
    }
}
