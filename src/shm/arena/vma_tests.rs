//! Unit tests of this process's views of a segment's chunks and the kernel mappings
//! (VMAs) they cost (`vmas`): separation, the budget, what past it and on failures.
//! Each test gives its segments a budget of its own, so tests running beside it (which
//! map arenas from the process's budget) neither disturb it nor are disturbed.

use std::io::Write;
use std::sync::Arc;

use super::segment::*;
use super::state::Separation;
use super::vmas::{Closing, Marks, VmaBudget, knobs};
use crate::diagnostics;

/// A budget of `limit` mappings for one test.
fn budget(limit: usize) -> &'static VmaBudget {
    Box::leak(Box::new(VmaBudget::new(limit)))
}

/// Says on stderr, past libtest's capture, that `test` checked nothing, and why.
fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {why}");
}

/// The kernel mappings (VMAs) inside `segment`, from /proc/self/smaps: their bounds and
/// their `VmFlags`.
fn mappings(segment: &ArenaSegment) -> Vec<(usize, usize, String)> {
    let start = segment.base() as usize;
    let end = start + ArenaSegment::layout(segment.chunk_shift).2;
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut all: Vec<(usize, usize, String)> = Vec::new();
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = all.last_mut() {
                last.2 = flags.trim().to_string();
            }
            continue;
        }
        let Some((a, b)) = line.split_once(' ').and_then(|(range, _)| range.split_once('-')) else { continue };
        if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
            all.push((a, b, String::new()));
        }
    }
    all.retain(|&(a, b, _)| a >= start && b <= end);
    all
}

fn vmas(segment: &ArenaSegment) -> usize {
    mappings(segment).len()
}

/// A segment of the smallest chunks (4 KiB with 4 KiB pages: 1024 of them, one shared
/// mapping), its views taking from `budget`; `None` (after saying so) where the pages
/// are so large that the smallest class is separated whole when mapped.
fn small_segment(test: &str, budget: &'static VmaBudget) -> Option<Arc<ArenaSegment>> {
    let segment = Arc::new(ArenaSegment::create_with(min_shift(), budget).unwrap());
    if segment.chunk_count <= SEPARATE_VMAS_UP_TO {
        skip(test, "pages of 64 KiB: the smallest chunks are separated when mapped");
        return None;
    }
    assert_eq!(vmas(&segment), 1, "a segment of small chunks starts as one mapping");
    Some(segment)
}

fn close(segment: &ArenaSegment, marks: &mut Marks, index: u32) -> Closing {
    segment.close_view(marks, index)
}

fn open(segment: &ArenaSegment, marks: &mut Marks, index: u32) {
    segment.open_view(marks, index).unwrap();
}

#[test]
fn closing_a_large_chunk_changes_its_own_mapping_and_splits_none() {
    // 1 MiB chunks: four per segment, each a VMA of its own beside the metadata.
    let own = budget(100);
    let segment = ArenaSegment::create_with(20, own).unwrap();
    assert_eq!(vmas(&segment), 5);
    let mut marks = lock(&segment.local);
    for index in [1, 2, 0] {
        assert_eq!(close(&segment, &mut marks, index), Closing::Closed);
        assert_eq!(vmas(&segment), 5, "closing chunk {index} split no mapping");
    }
    for index in [2, 0, 1] {
        open(&segment, &mut marks, index);
        assert_eq!(vmas(&segment), 5, "reopening chunk {index} merged no mapping");
    }
    assert_eq!((marks.charged, own.used()), (4, 4), "its four boundaries, charged when mapped");
    drop(marks);
    drop(segment);
    assert_eq!(own.used(), 0, "unmapping gives the charge back");
    // Mapped while the budget is short, a segment keeps one mapping, and its chunks
    // are separated one by one when closed, as in larger segments.
    let short = budget(3);
    let over = ArenaSegment::create_with(20, short).unwrap();
    let mut marks = lock(&over.local);
    assert_eq!((marks.charged, vmas(&over), marks.late), (0, 1, true));
    assert_eq!(close(&over, &mut marks, 1), Closing::Closed);
    assert_eq!((vmas(&over), marks.charged), (3, 2));
    open(&over, &mut marks, 1);
    assert_eq!(vmas(&over), 3, "chunk 1 stays a mapping of its own");
}

#[test]
fn a_small_chunk_becomes_a_mapping_of_its_own_when_first_closed() {
    let own = budget(100);
    let Some(small) = small_segment("a_small_chunk_becomes_a_mapping_of_its_own_when_first_closed", own) else {
        return;
    };
    let mut marks = lock(&small.local);
    // The first close separates chunk 5 (splitting the rest in two); it stays apart:
    // reopening and closing it again merge and split nothing.
    close(&small, &mut marks, 5);
    assert_eq!(vmas(&small), 3);
    open(&small, &mut marks, 5);
    assert_eq!(vmas(&small), 3, "chunk 5 stays a mapping of its own");
    close(&small, &mut marks, 5);
    assert_eq!(vmas(&small), 3);
    // Its neighbours, advised the other way, stay apart from it and from each other,
    // and each is charged only the boundaries it adds: 1 beside a marked chunk.
    for (index, after, charged) in [(6, 4, 3), (4, 5, 4), (7, 6, 5)] {
        assert_eq!(close(&small, &mut marks, index), Closing::Closed);
        assert_eq!(vmas(&small), after, "closing chunk {index} separates it");
        assert_eq!(marks.charged, charged, "after closing chunk {index}");
    }
    for index in [4, 5, 6, 7] {
        open(&small, &mut marks, index);
        assert_eq!(vmas(&small), 6, "reopening chunk {index} merged no mapping");
    }
    assert_eq!((marks.charged, own.used()), (5, 5), "exactly the five mappings added");
    // No flag that changes reclaim (`rr`, `sr`: MADV_RANDOM, MADV_SEQUENTIAL); even
    // chunks are not copied on fork (`dc`), odd ones not dumped (`dd`).
    let chunk = |i: u32| small.chunk_ptr(i).as_ptr() as usize;
    for (a, _, flags) in mappings(&small) {
        let flags: Vec<&str> = flags.split(' ').collect();
        assert!(!flags.contains(&"rr") && !flags.contains(&"sr"), "{flags:?}");
        let expect = match (4..=7).find(|&i| chunk(i) == a) {
            Some(i) if i % 2 == 0 => Some("dc"),
            Some(_) => Some("dd"),
            None => None,
        };
        for flag in ["dc", "dd"] {
            assert_eq!(flags.contains(&flag), expect == Some(flag), "the mapping at {a:#x}: {flags:?}");
        }
    }
    drop(marks);
    drop(small);
    assert_eq!(own.used(), 0, "unmapping gives the charge back");
}

/// A small xorshift generator, so a failure repeats.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn what_the_views_add_to_the_mappings_never_passes_their_charge_nor_the_budget() {
    let own = budget(24);
    let test = "what_the_views_add_to_the_mappings_never_passes_their_charge_nor_the_budget";
    let Some(small) = small_segment(test, own) else { return };
    let last = small.chunk_count - 1;
    let mut marks = lock(&small.local);
    let mut seed = 0x2545_f491_4f6c_dd1d;
    let mut skipped = 0;
    for step in 0..600 {
        let r = next(&mut seed);
        // Chunks 0..24 and the last two, so both ends of the mapping are covered.
        let index = match r % 28 {
            k @ 0..=25 => k as u32,
            k => last - (k as u32 - 26),
        };
        let i = index as usize;
        match (r >> 8) % 8 {
            // Held (busy) or not: only chunks that are not are given back when short.
            0 => marks[i].busy = !marks[i].busy,
            1..=3 => open(&small, &mut marks, index),
            _ => {
                // Mostly held elsewhere once sent (busy here stands for it).
                marks[i].busy = !(r >> 16).is_multiple_of(4);
                match close(&small, &mut marks, index) {
                    Closing::Closed => assert!(!marks[i].open),
                    Closing::Skipped => {
                        assert!(marks[i].open, "a skipped close leaves the view open");
                        skipped += 1;
                    }
                    Closing::Failed => panic!("step {step}: mprotect failed"),
                }
            }
        }
        let added = vmas(&small) - 1;
        assert!(added <= marks.charged, "step {step}: {added} mappings added, {} charged", marks.charged);
        assert_eq!(own.used(), marks.charged, "step {step}");
        assert!(marks.charged <= 24, "step {step}: the budget is 24");
    }
    assert!(skipped > 0, "the sequence reached the budget");
}

#[test]
fn past_the_budget_a_chunk_is_not_revoked_and_that_is_counted() {
    let own = budget(4);
    let Some(small) = small_segment("past_the_budget_a_chunk_is_not_revoked_and_that_is_counted", own) else {
        return;
    };
    let mut marks = lock(&small.local);
    // Chunks 0 and 2 held elsewhere (busy here stands for it): 2 boundaries each.
    for index in [0, 2] {
        marks[index as usize].busy = true;
        assert_eq!(close(&small, &mut marks, index), Closing::Closed);
    }
    assert_eq!((marks.charged, vmas(&small)), (4, 5));
    let before = diagnostics::diagnostics().revocations_skipped;
    marks[4].busy = true;
    assert_eq!(close(&small, &mut marks, 4), Closing::Skipped);
    assert!(marks[4].open && marks[4].separation == Separation::No);
    assert!(diagnostics::diagnostics().revocations_skipped > before, "counted");
    assert_eq!((marks.charged, vmas(&small)), (4, 5), "nothing split");
    // SAFETY: chunk 4 of our mapping, left open; nothing else accesses it.
    unsafe { small.chunk_ptr(4).as_ptr().write_volatile(7) };
    // Chunk 0 is let go (FREE in shared memory, not busy): when the budget is short,
    // its view is reopened and its separation undone, and chunk 4 fits.
    marks[0].busy = false;
    assert_eq!(close(&small, &mut marks, 4), Closing::Closed);
    assert!(marks[0].open && marks[0].separation == Separation::No, "chunk 0 given back");
    assert_eq!((marks.charged, vmas(&small)), (4, 5));
    drop(marks);
    // Through a buffer: a chunk sent with revocation past the budget stays open.
    let none = budget(0);
    let Some(segment) = small_segment("past_the_budget_a_chunk_is_not_revoked_and_that_is_counted", none) else {
        return;
    };
    let (chunk, _) = super::chunk::take_free(&segment).unwrap().unwrap();
    let index = chunk.index as usize;
    let before = diagnostics::diagnostics().revocations_skipped;
    let _sent = chunk.send(true);
    assert!(lock(&segment.local)[index].open);
    assert!(diagnostics::diagnostics().revocations_skipped > before);
}

#[test]
fn a_chunk_whose_advice_failed_is_not_advised_again() {
    let own = budget(100);
    let Some(small) = small_segment("a_chunk_whose_advice_failed_is_not_advised_again", own) else { return };
    let mut marks = lock(&small.local);
    knobs::FAIL_ADVICE.with(|f| f.set(true));
    assert_eq!(close(&small, &mut marks, 5), Closing::Closed, "closed all the same");
    knobs::FAIL_ADVICE.with(|f| f.set(false));
    assert_eq!(marks[5].separation, Separation::GaveUp);
    assert_eq!((vmas(&small), marks.charged), (3, 2), "closed unseparated: split, and charged");
    open(&small, &mut marks, 5);
    assert_eq!((vmas(&small), marks.charged), (1, 0), "reopened: merged, and given back");
    // The advice would work now, but is not tried again: the chunk splits and merges.
    close(&small, &mut marks, 5);
    open(&small, &mut marks, 5);
    assert_eq!((vmas(&small), marks.charged, marks[5].separation), (1, 0, Separation::GaveUp));
}

#[test]
fn a_failed_mprotect_is_counted_and_leaves_the_view_open() {
    let own = budget(100);
    let Some(small) = small_segment("a_failed_mprotect_is_counted_and_leaves_the_view_open", own) else { return };
    let mut marks = lock(&small.local);
    let before = diagnostics::diagnostics().revocations_failed;
    knobs::FAIL_MPROTECT.with(|f| f.set(true));
    let closing = close(&small, &mut marks, 9);
    knobs::FAIL_MPROTECT.with(|f| f.set(false));
    assert_eq!(closing, Closing::Failed);
    assert!(marks[9].open);
    assert!(diagnostics::diagnostics().revocations_failed > before, "counted");
    // The advice was given: the chunk is separated, and charged for it.
    assert_eq!((marks[9].separation, marks.charged, vmas(&small)), (Separation::Yes, 2, 3));
    // Unseparated (the advice failing too), nothing stays charged.
    knobs::FAIL_ADVICE.with(|f| f.set(true));
    knobs::FAIL_MPROTECT.with(|f| f.set(true));
    let closing = close(&small, &mut marks, 20);
    knobs::FAIL_ADVICE.with(|f| f.set(false));
    knobs::FAIL_MPROTECT.with(|f| f.set(false));
    assert_eq!((closing, marks[20].open, marks.charged), (Closing::Failed, true, 2));
}
