//! A leak check around a test that starts processes: what the process has open and
//! mapped when the test starts, compared with what it has once the test's children are
//! reaped and its ports dropped.
//!
//! Descriptors and mappings are counted for the whole process, and the tests of one
//! binary run in parallel threads of it, so a count taken around one test would see
//! the others' channels come and go. [`LeakCheck::start`] therefore runs the test
//! alone in a child process of its own ([`super::isolated`]): there, every descriptor
//! and mapping that appears is the test's.
//!
//! What is compared, and what is left out because it is the process's, not the test's:
//!
//! - every open descriptor, by what it is (`/proc/self/fd`'s link, and the inode for a
//!   memfd, whose link names only its kind), as a multiset;
//! - every shmport memfd mapped (`/proc/self/maps`, by name and inode), and how many
//!   bytes of it are mapped in all: a second mapping of a memfd that was mapped already
//!   adds its length, while `mprotect` splitting one mapping into several does not;
//! - the chunks of our arena in flight, held by other processes and held here (0 once
//!   the test dropped its buffers; after `reclaim_arena` for those a killed child held).
//!
//! Left out: this process's own arena segments that the test made it grow by (a segment
//! of each size class stays for the process's life, with its memfd and mapping; their
//! number is `arena_stats().segments`, so exactly that many new arena memfds are
//! excused, and one more is a leak); the first segment is made before the first
//! snapshot. Not excused: the dispatch thread's epoll set and eventfd, made at the
//! first `set_onmessage` and kept for the process's life (no leak-checked test sets a
//! handler; one that does must start the thread before its snapshot). The number of
//! all mappings is shown, not compared: the stacks and allocator arenas of threads a
//! test ran stay mapped after the threads end (glibc keeps them for the next thread).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// What this process has open and mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// Open descriptors by what each is, with how many of each.
    pub fds: BTreeMap<String, usize>,
    /// The shmport memfds mapped: (name, inode).
    pub memfds: BTreeSet<(String, u64)>,
    /// The bytes mapped of each of them, over all its mappings.
    pub mapped_bytes: BTreeMap<(String, u64), u64>,
    /// All mappings (shown, not compared).
    pub mappings: usize,
    /// This process's own arena segments.
    pub arena_segments: usize,
    /// Chunks of our arena (in flight, held elsewhere, held here).
    pub chunks: (usize, usize, usize),
}

/// Whether a descriptor or mapping is an arena segment's memfd.
fn is_arena(name: &str) -> bool {
    name.contains("memfd:shmport-arena")
}

impl Resources {
    pub fn now() -> Resources {
        let mut fds = BTreeMap::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            // The read_dir's own descriptor is gone by the time its link is read.
            let Ok(target) = std::fs::read_link(entry.path()) else { continue };
            let mut what = target.to_string_lossy().into_owned();
            if what.starts_with("/memfd:") {
                // Every memfd of one kind has the same name: tell them apart by inode.
                let Ok(meta) = std::fs::metadata(entry.path()) else { continue };
                what = format!("{what} inode {}", std::os::unix::fs::MetadataExt::ino(&meta));
            }
            *fds.entry(what).or_insert(0) += 1;
        }
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mut memfds = BTreeSet::new();
        let mut mapped_bytes = BTreeMap::new();
        for line in maps.lines().filter(|l| l.contains("memfd:shmport")) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode = fields.get(4).and_then(|i| i.parse().ok()).unwrap_or(0);
            let key = (fields[5..].join(" "), inode);
            let (start, end) = fields[0].split_once('-').unwrap();
            let len = u64::from_str_radix(end, 16).unwrap() - u64::from_str_radix(start, 16).unwrap();
            *mapped_bytes.entry(key.clone()).or_insert(0) += len;
            memfds.insert(key);
        }
        let arena = shmport::arena_stats();
        Resources {
            fds,
            memfds,
            mapped_bytes,
            mappings: maps.lines().count(),
            arena_segments: arena.segments,
            chunks: (arena.in_flight, arena.held_elsewhere, arena.held_here),
        }
    }

    /// What `self` (taken later) has that `before` had not, less our own arena's growth
    /// since: empty if nothing leaked.
    pub fn leaked_since(&self, before: &Resources) -> Vec<String> {
        let mut leaks = Vec::new();
        let grown = self.arena_segments.saturating_sub(before.arena_segments);
        // New memfd mappings; exactly `grown` new arena segments are ours.
        let new_maps: Vec<_> = self.memfds.difference(&before.memfds).collect();
        let new_arena: BTreeSet<u64> = new_maps.iter().filter(|(n, _)| is_arena(n)).map(|(_, i)| *i).collect();
        let ours: BTreeSet<u64> = if new_arena.len() == grown { new_arena } else { BTreeSet::new() };
        for (name, inode) in new_maps {
            if !ours.contains(inode) {
                leaks.push(format!("mapped: {name} (inode {inode})"));
            }
        }
        // A memfd mapped before and still: no more of it mapped than then.
        for (key, &now) in &self.mapped_bytes {
            if let Some(&was) = before.mapped_bytes.get(key)
                && now > was
            {
                leaks.push(format!("mapped again: {} (inode {}): {was} bytes before, {now} now", key.0, key.1));
            }
        }
        for (what, &n) in &self.fds {
            let was = before.fds.get(what).copied().unwrap_or(0);
            let excused = is_arena(what) && ours.iter().any(|i| what.ends_with(&format!(" inode {i}")));
            if n > was && !excused {
                leaks.push(format!("open: {what} ({was} before, {n} now)"));
            }
        }
        if self.chunks != (0, 0, 0) {
            leaks.push(format!("chunks of our arena (in flight, held elsewhere, held here): {:?}", self.chunks));
        }
        leaks
    }
}

/// How long [`LeakCheck::finish`] waits for what is still closing (a port another
/// thread held, a runtime's threads) before it calls what is left a leak.
pub const SETTLE: Duration = Duration::from_secs(1);

/// A test's snapshot of [`Resources`], checked by [`LeakCheck::finish`].
pub struct LeakCheck {
    before: Resources,
}

impl LeakCheck {
    /// Runs the calling test (`name`, as for [`super::isolated`]) alone in a child process
    /// and returns its snapshot there, taken after this process's first arena segment is
    /// made; returns `None` in the harness's process, where the test then returns (the
    /// child's result is asserted), and in a role child ([`super::spawn_role`]), where
    /// the test has nothing to do.
    pub fn start(name: &str) -> Option<LeakCheck> {
        if super::role().is_some() || !super::isolated(name) {
            return None;
        }
        // Our arena's first segment stays for the process's life: made before the count.
        drop(shmport::ArrayBuffer::from_slice(&[1; 64]).unwrap());
        Some(LeakCheck { before: Resources::now() })
    }

    /// The snapshot in a role child ([`super::spawn_role`]): a process that runs one
    /// test alone already, so its counts are its own.
    pub fn in_role() -> LeakCheck {
        assert!(super::role().is_some(), "LeakCheck::in_role is for a role child; a test takes LeakCheck::start");
        drop(shmport::ArrayBuffer::from_slice(&[1; 64]).unwrap());
        LeakCheck { before: Resources::now() }
    }

    /// The snapshot taken at the start.
    pub fn before(&self) -> &Resources {
        &self.before
    }

    /// Call once the test's children are reaped and its ports, buffers and `Child`
    /// handles (their pipes) dropped: fails if a descriptor, memfd mapping or chunk is
    /// still there that was not at the start, after waiting up to [`SETTLE`] for it to
    /// go. Runs `reclaim_arena` first (chunks a killed child held).
    pub fn finish(self) {
        let deadline = Instant::now() + SETTLE;
        loop {
            shmport::reclaim_arena();
            let now = Resources::now();
            let leaks = now.leaked_since(&self.before);
            if leaks.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "leaked, {SETTLE:?} after the test: {leaks:#?}\n(mappings: {} before, {} after)",
                    self.before.mappings, now.mappings
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
