//! Fault injection, for this crate's own tests (feature `fault-injection`; not API).
//!
//! A *fault point* is a named place on the post, transfer or receive path
//! (`fault_point!(POST_WRITTEN)`). A process started with `SHMPORT_FAULT_POINT` set to
//! one of `POINTS` stops itself with `SIGSTOP` the first time it passes that point
//! after `SHMPORT_FAULT_AFTER` passes (0 if unset), so that a test can kill it exactly
//! there (`tests/fault_matrix.rs`) and look at what its peer sees. The variables are
//! read once per process. Without the feature, `fault_point!` expands to nothing: the
//! points cost nothing in a build that users get.

#[cfg(all(feature = "fault-injection", not(loom)))]
pub(crate) mod points {
    /// Room for the record found in the ring, nothing written yet.
    pub(crate) const POST_RESERVED: &str = "post.reserved";
    /// Half the record's payload written, its header not.
    pub(crate) const POST_HALF_WRITTEN: &str = "post.half_written";
    /// The whole record written, its header held back: not published.
    pub(crate) const POST_WRITTEN: &str = "post.written";
    /// The record published (its header stored), the consumer not yet notified.
    pub(crate) const POST_PUBLISHED: &str = "post.published";
    /// A write chunk (`PortWriter::write_chunk`) that would have wrapped: the padding
    /// record from the ring's offset to the end of its data area written (not
    /// published), the chunk's record at offset 0 not yet reserved.
    pub(crate) const CHUNK_PADDED: &str = "chunk.padded";
    /// A write chunk (`PortWriter::write_chunk`) reserved in the ring, not yet filled
    /// (behind the padding record written for it, if it would have wrapped).
    pub(crate) const CHUNK_RESERVED: &str = "chunk.reserved";
    /// A filled write chunk committed as a record, not yet published.
    pub(crate) const CHUNK_COMMITTED: &str = "chunk.committed";
    /// A record that moves ports or buffers: its descriptors sent on the socket, nothing
    /// detached, the record not published.
    pub(crate) const TRANSFER_FDS_SENT: &str = "transfer.fds_sent";
    /// The moved ports and buffers detached here (in flight), the record not published.
    pub(crate) const TRANSFER_DETACHED: &str = "transfer.detached";
    /// A received record copied out of the ring, not yet consumed (its space not given back).
    pub(crate) const RECV_COPIED: &str = "recv.copied";
    /// A received record's attachment table read and its descriptors (if any) taken
    /// off the socket, its ports and buffers not yet made (the ports it carries are in
    /// flight to this process).
    pub(crate) const RECV_FDS_TAKEN: &str = "recv.fds_taken";
    /// A waiter (for a record, or for room) announced in its wait word and re-checked,
    /// about to sleep on the futex.
    pub(crate) const WAIT_BEFORE_PARK: &str = "wait.before_park";

    /// Every fault point, in the order a message meets them.
    pub const POINTS: &[&str] = &[
        POST_RESERVED,
        POST_HALF_WRITTEN,
        POST_WRITTEN,
        POST_PUBLISHED,
        CHUNK_PADDED,
        CHUNK_RESERVED,
        CHUNK_COMMITTED,
        TRANSFER_FDS_SENT,
        TRANSFER_DETACHED,
        RECV_COPIED,
        RECV_FDS_TAKEN,
        WAIT_BEFORE_PARK,
    ];

    /// The variable naming the point to stop at.
    pub const POINT_ENV: &str = "SHMPORT_FAULT_POINT";
    /// The variable giving how many passes of that point to let through first.
    pub const AFTER_ENV: &str = "SHMPORT_FAULT_AFTER";
}

#[cfg(all(feature = "fault-injection", not(loom)))]
pub(crate) use points::*;

/// A fault point (see the module docs): `fault_point!(NAME)`, or
/// `fault_point!(NAME, || ...)` to run the closure just before stopping (to leave
/// the state the point names, such as a half-written payload). Nothing without the
/// feature.
#[cfg(all(feature = "fault-injection", not(loom)))]
macro_rules! fault_point {
    ($point:ident) => {
        $crate::fault::reach($crate::fault::$point, || {})
    };
    ($point:ident, $before_stop:expr) => {
        $crate::fault::reach($crate::fault::$point, $before_stop)
    };
}

/// A fault point: nothing without the `fault-injection` feature.
#[cfg(any(not(feature = "fault-injection"), loom))]
macro_rules! fault_point {
    ($point:ident $(, $before_stop:expr)?) => {};
}

pub(crate) use fault_point;

#[cfg(all(feature = "fault-injection", not(loom)))]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::{AFTER_ENV, POINT_ENV, POINTS};

    /// The point this process stops at, and the passes it lets through first.
    struct Armed {
        point: &'static str,
        after: u64,
    }

    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    /// Passes of the armed point so far.
    static PASSES: AtomicU64 = AtomicU64::new(0);

    /// Reads the variables; a value that names no point (or a count that is not a
    /// number) ends the process with a message: a test that set it would otherwise
    /// run to its end without ever stopping, and check nothing.
    fn read() -> Option<Armed> {
        let name = std::env::var_os(POINT_ENV)?;
        let Some(point) = POINTS.iter().find(|p| name.to_str() == Some(**p)) else {
            eprintln!("{POINT_ENV}={name:?} names no fault point; the points are {POINTS:?}");
            std::process::abort();
        };
        let after = match std::env::var_os(AFTER_ENV) {
            None => 0,
            Some(n) => n.to_str().and_then(|n| n.parse().ok()).unwrap_or_else(|| {
                eprintln!("{AFTER_ENV}={n:?} is not a count of passes");
                std::process::abort();
            }),
        };
        Some(Armed { point, after })
    }

    /// Passes `point`: if it is the armed one and its turn has come, runs
    /// `before_stop` and stops the process (`SIGSTOP`) until it is killed or continued.
    pub(crate) fn reach(point: &'static str, before_stop: impl FnOnce()) {
        let Some(armed) = ARMED.get_or_init(read) else { return };
        if armed.point != point || PASSES.fetch_add(1, Ordering::Relaxed) != armed.after {
            return;
        }
        before_stop();
        crate::platform::stop_self();
    }
}

#[cfg(all(feature = "fault-injection", not(loom)))]
pub(crate) use armed::reach;
