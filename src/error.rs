//! One error type per operation, named as `std::sync::mpsc` names them.
//!
//! An error's `Display` says what failed, and only that; a cause (an `io::Error`) is
//! its [`source`](std::error::Error::source), never repeated in the text, as the Rust
//! API guidelines ask (C-GOOD-ERR). A reporter that walks the chain (anyhow's and
//! eyre's `{:#}` or `{:?}`) then prints each cause once. A variant that only wraps
//! another error ([`Error::Io`], [`PostError::DataClone`]) is transparent: the
//! wrapped error's text and source are its own.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Errors of setup calls: creating channels and buffers, bootstrap, rendezvous.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused. Transparent: its text and source are the
    /// `io::Error`'s.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Shared memory or a handshake received from a peer failed validation.
    #[error("invalid data from peer: {0}")]
    Invalid(&'static str),
    /// The options given are out of range.
    #[error("invalid options: {0}")]
    InvalidOptions(&'static str),
    /// The port was transferred or closed, so it cannot be used for this.
    #[error("port is detached")]
    Detached,
    /// `MessagePort::from_parent`: no port was handed down to this process
    /// (`SHMPORT_PARENT` is not set).
    #[error("no port was passed to this process (SHMPORT_PARENT is not set)")]
    NoParentPort,
    /// `MessagePort::from_parent`: `SHMPORT_PARENT` is set, but names no port this
    /// process can take: it is malformed, it was inherited from an ancestor (it names
    /// another parent), its descriptor is closed or is not the socket a parent hands
    /// down (such a descriptor is left open), no port is waiting in it (the command
    /// was spawned twice), or an earlier call already took the port or found the
    /// descriptor unusable (the reason then says what that call found).
    #[error("the port named by SHMPORT_PARENT cannot be taken: {reason}")]
    ParentPortUnavailable {
        /// What is wrong, with the values found.
        reason: String,
    },
    /// `Listener::bind`, `Listener::accept` or `MessagePort::connect` failed at `path`:
    /// every error of theirs but [`WrongUser`](Error::WrongUser) is this one.
    #[error("cannot {action} {}", .path.display())]
    Rendezvous {
        /// `"listen at"`, `"accept at"` or `"connect to"`.
        action: &'static str,
        /// The path as given by the caller (to `bind`, for `accept`).
        path: PathBuf,
        /// Why: what the operating system said; or, of kind `InvalidData`, what was
        /// wrong with the port the peer handed over; or, of kind `InvalidInput`, that
        /// the path is too long or (for `accept`) the channel options are invalid. A
        /// cause that is one of this crate's errors is the `io::Error`'s inner error
        /// ([`io::Error::get_ref`]).
        #[source]
        source: io::Error,
    },
    /// A rendezvous peer at `path` runs as another user.
    #[error("cannot {action} {}: the peer runs as uid {peer}, not {ours}", .path.display())]
    WrongUser {
        /// `"accept at"` or `"connect to"`.
        action: &'static str,
        /// The path as given by the caller (to `bind`, for `accept`).
        path: PathBuf,
        /// The peer's uid, as the kernel reports it.
        peer: u32,
        /// This process's uid.
        ours: u32,
    },
}

/// What made a `post_message` fail the structured-clone checks (SEMANTICS 5 and 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DataCloneErrorKind {
    /// 5a: the transfer list contains the port being posted on.
    SourcePortInTransfer,
    /// 5b: the transfer list names the same buffer or port twice.
    DuplicateInTransfer,
    /// 5c: the message references a port that is not in the transfer list.
    PortNotInTransfer,
    /// 5d: the message or the transfer list contains a detached buffer.
    DetachedBuffer,
    /// 5e: the transfer list contains a detached (transferred or closed) port.
    DetachedPort,
    /// 11: the value nests deeper than the codec allows.
    TooDeep,
    /// 11: a typed-array view does not fit inside its buffer.
    InvalidView,
    /// 11: a typed message's serializer refused the value.
    Uncloneable,
    /// 21: a broadcast (`PortCollection::post_message`) was given a transfer list: one
    /// item cannot move to many places.
    TransferInBroadcast,
    /// 26: the transfer list contains a `SharedArrayBuffer`, which is shared, never moved.
    SharedInTransfer,
}

/// The web's `DataCloneError`: the message or its transfer list cannot be cloned.
/// Nothing was sent and nothing was detached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("data clone error: {}", .kind.describe())]
pub struct DataCloneError {
    kind: DataCloneErrorKind,
}

impl DataCloneError {
    pub(crate) fn new(kind: DataCloneErrorKind) -> Self {
        DataCloneError { kind }
    }

    /// Which check failed.
    pub fn kind(&self) -> DataCloneErrorKind {
        self.kind
    }
}

impl DataCloneErrorKind {
    fn describe(self) -> &'static str {
        match self {
            Self::SourcePortInTransfer => "the transfer list contains the source port",
            Self::DuplicateInTransfer => "the transfer list contains an item twice",
            Self::PortNotInTransfer => "the message contains a port that is not in the transfer list",
            Self::DetachedBuffer => "an ArrayBuffer is detached",
            Self::DetachedPort => "the transfer list contains a detached port",
            Self::TooDeep => "the value nests too deeply",
            Self::InvalidView => "a typed-array view lies outside its buffer",
            Self::Uncloneable => "the value cannot be serialized",
            Self::TransferInBroadcast => "a broadcast cannot transfer anything",
            Self::SharedInTransfer => "the transfer list contains a SharedArrayBuffer",
        }
    }
}

/// Why `post_message` / `post_bytes` (and their `try_` / timeout variants) failed.
/// Posting to a port whose peer is gone is *not* an error (SEMANTICS 10).
///
/// A message larger than the ring is not an error: it travels out of line, in shared
/// pages (SEMANTICS 19).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PostError {
    /// The message or transfer list failed the structured-clone checks.
    DataClone(DataCloneError),
    /// The message needs more than one message may take of a limited resource:
    /// `kind` says which, and so in what unit `len` and `max` count. The body itself
    /// never causes this: a body too large for the ring travels out of line.
    TooLarge {
        /// What was too large.
        kind: TooLargeKind,
        /// How much the message needs, in the unit of `kind`.
        len: usize,
        /// The most allowed, in the unit of `kind`.
        max: usize,
    },
    /// `try_post_*`: the ring is full right now.
    Full,
    /// `post_*_timeout`: the ring stayed full until the deadline.
    Timeout,
    /// The peer broke the ring's invariants; the channel is unusable.
    Broken(&'static str),
    /// The operating system refused what a transfer needs: passing descriptors to the
    /// peer, or shared pages for a message sent out of line. The `io::Error` is the
    /// [`source`](std::error::Error::source). Two such errors compare equal when their
    /// [`io::ErrorKind`]s and messages are equal.
    Transfer(Arc<io::Error>),
}

/// What a [`PostError::TooLarge`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TooLargeKind {
    /// Bytes of the message's record in the ring, against the most one record of this
    /// channel holds ([`MessagePort::max_inline_size`](crate::MessagePort::max_inline_size)).
    /// A body that does not fit goes out of line, but the record's table of the
    /// buffers and ports the message transfers (24 bytes a buffer, 8 a port) does not.
    RecordBytes,
    /// File descriptors the message passes on the socket (one per shared-memory
    /// segment holding its buffers or its out-of-line body, two per port), against
    /// the most one message may pass.
    Descriptors,
}

impl PostError {
    pub(crate) fn transfer(e: io::Error) -> PostError {
        PostError::Transfer(Arc::new(e))
    }
}

impl PartialEq for PostError {
    fn eq(&self, other: &Self) -> bool {
        use PostError::*;
        match (self, other) {
            (DataClone(a), DataClone(b)) => a == b,
            (TooLarge { kind: k, len: a, max: m }, TooLarge { kind: l, len: b, max: n }) => (k, a, m) == (l, b, n),
            (Full, Full) | (Timeout, Timeout) => true,
            (Broken(a), Broken(b)) => a == b,
            (Transfer(a), Transfer(b)) => a.kind() == b.kind() && a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Eq for PostError {}

impl fmt::Display for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostError::DataClone(e) => fmt::Display::fmt(e, f),
            PostError::TooLarge { kind: TooLargeKind::RecordBytes, len, max } => write!(
                f,
                "message needs a record of {len} bytes in the ring, and this channel's records hold at most {max} \
                 bytes (the table of the buffers and ports it transfers cannot go out of line)"
            ),
            PostError::TooLarge { kind: TooLargeKind::Descriptors, len, max } => {
                write!(f, "message passes {len} file descriptors, and at most {max} may go with one message")
            }
            PostError::Full => f.write_str("ring is full"),
            PostError::Timeout => f.write_str("timed out waiting for ring space"),
            PostError::Broken(why) => write!(f, "channel broken: {why}"),
            PostError::Transfer(_) => f.write_str("transfer failed"),
        }
    }
}

impl std::error::Error for PostError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PostError::DataClone(e) => e.source(),
            PostError::Transfer(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<DataCloneError> for PostError {
    fn from(e: DataCloneError) -> Self {
        PostError::DataClone(e)
    }
}

impl PostError {
    /// Whether this is [`PostError::Full`].
    pub fn is_full(&self) -> bool {
        matches!(self, PostError::Full)
    }
    /// Whether this is [`PostError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, PostError::Timeout)
    }
}

/// The web's `messageerror`: a message arrived but could not be decoded (SEMANTICS 17).
/// Usually the message is consumed and the port stays usable where framing allows.
/// `recv_typed` and `recv_pod` leave a message that is not of their type queued
/// instead ([`MessageError::is_kept`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageError {
    reason: &'static str,
    /// What the decoder said, where it says more than `reason` (serde's messages).
    detail: Option<std::sync::Arc<str>>,
    kept: bool,
    /// The message's length, when it did not fit the caller's buffer.
    needed: Option<usize>,
}

impl MessageError {
    pub(crate) fn new(reason: &'static str) -> Self {
        MessageError { reason, detail: None, kept: false, needed: None }
    }

    pub(crate) fn with_detail(reason: &'static str, detail: String) -> Self {
        MessageError { reason, detail: Some(detail.into()), kept: false, needed: None }
    }

    /// A receive into a buffer too small for the next message, of `needed` bytes,
    /// which stays queued.
    pub(crate) fn too_small(needed: usize) -> Self {
        MessageError { needed: Some(needed), ..MessageError::new("the message is longer than the buffer").kept() }
    }

    /// The same error, for a message that is still queued.
    pub(crate) fn kept(mut self) -> Self {
        self.kept = true;
        self
    }

    /// What was wrong with the message.
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// More about it, where the decoder said more (for a typed message, serde's
    /// message, such as "invalid value: integer `7`, expected variant index 0 <= i < 2").
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// For a receive into a buffer too small for the next message (`recv_bytes_into`):
    /// the message's length. The message stays queued ([`is_kept`](Self::is_kept)):
    /// receive it again into a buffer of at least this many bytes.
    pub fn needed_len(&self) -> Option<usize> {
        self.needed
    }

    /// Whether the message is still the next one in the queue: `recv_typed` and
    /// `recv_pod` leave a message they cannot read as their type where it was, so
    /// nothing it carries is lost (read it with `recv`, `recv_bytes_with`, or as
    /// another type). `false`: the message was consumed.
    pub fn is_kept(&self) -> bool {
        self.kept
    }
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(needed) = self.needed {
            // Not a message that could not be decoded: one that was not received.
            return write!(f, "message not received: {}, of {needed} bytes (it stays queued)", self.reason);
        }
        write!(f, "message could not be decoded: {}", self.reason)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        if self.kept {
            f.write_str(" (it stays queued)")?;
        }
        Ok(())
    }
}

impl std::error::Error for MessageError {}

/// Error of a blocking `recv`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The port is closed or detached, or its peer is gone and everything it sent has
    /// been received.
    #[error("port closed")]
    Closed,
    /// The next message could not be decoded (see [`MessageError::is_kept`]).
    #[error(transparent)]
    MessageError(MessageError),
}

/// Error of `try_recv`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// No message is waiting.
    #[error("no message waiting")]
    Empty,
    /// See [`RecvError::Closed`].
    #[error("port closed")]
    Closed,
    /// See [`RecvError::MessageError`].
    #[error(transparent)]
    MessageError(MessageError),
}

/// Error of `recv_timeout`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecvTimeoutError {
    /// No message arrived before the deadline.
    #[error("timed out waiting for a message")]
    Timeout,
    /// See [`RecvError::Closed`].
    #[error("port closed")]
    Closed,
    /// See [`RecvError::MessageError`].
    #[error(transparent)]
    MessageError(MessageError),
}

macro_rules! recv_helpers {
    ($t:ident) => {
        impl $t {
            /// Whether the port is closed (and drained).
            pub fn is_closed(&self) -> bool {
                matches!(self, $t::Closed)
            }
            /// Whether a message could not be decoded (see [`MessageError::is_kept`]).
            pub fn is_message_error(&self) -> bool {
                matches!(self, $t::MessageError(_))
            }
        }
    };
}
recv_helpers!(RecvError);
recv_helpers!(TryRecvError);
recv_helpers!(RecvTimeoutError);

impl TryRecvError {
    /// Whether no message was waiting.
    pub fn is_empty(&self) -> bool {
        matches!(self, TryRecvError::Empty)
    }
}

impl RecvTimeoutError {
    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, RecvTimeoutError::Timeout)
    }
}

/// The outcome of one internal receive attempt, mapped onto the three public types.
#[derive(Debug)]
pub(crate) enum RecvFail {
    Empty,
    Timeout,
    Closed,
    Message(MessageError),
}

impl From<RecvFail> for RecvError {
    fn from(f: RecvFail) -> Self {
        match f {
            RecvFail::Message(m) => RecvError::MessageError(m),
            _ => RecvError::Closed,
        }
    }
}

impl From<RecvFail> for TryRecvError {
    fn from(f: RecvFail) -> Self {
        match f {
            RecvFail::Message(m) => TryRecvError::MessageError(m),
            RecvFail::Closed => TryRecvError::Closed,
            RecvFail::Empty | RecvFail::Timeout => TryRecvError::Empty,
        }
    }
}

impl From<RecvFail> for RecvTimeoutError {
    fn from(f: RecvFail) -> Self {
        match f {
            RecvFail::Message(m) => RecvTimeoutError::MessageError(m),
            RecvFail::Closed => RecvTimeoutError::Closed,
            RecvFail::Empty | RecvFail::Timeout => RecvTimeoutError::Timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error in `e`'s chain whose cause is in its text as well as in `source()`.
    fn printed_twice(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
        let mut twice = Vec::new();
        let mut level = Some(e);
        while let Some(e) = level {
            if let Some(cause) = e.source()
                && e.to_string().contains(&cause.to_string())
            {
                twice.push(format!("{e:?}"));
            }
            level = e.source();
        }
        twice
    }

    #[test]
    fn no_error_prints_its_cause_in_its_text_and_as_its_source() {
        let os = || io::Error::from_raw_os_error(111);
        let errors: Vec<Box<dyn std::error::Error>> = vec![
            Box::new(Error::Io(os())),
            Box::new(Error::Io(io::Error::other(Error::Rendezvous {
                action: "connect to",
                path: "/x".into(),
                source: os(),
            }))),
            Box::new(Error::Rendezvous { action: "connect to", path: "/x".into(), source: os() }),
            Box::new(PostError::transfer(os())),
            Box::new(PostError::DataClone(DataCloneError::new(DataCloneErrorKind::TooDeep))),
            Box::new(crate::shm::segment::OpenError::Io(os())),
        ];
        for e in &errors {
            assert_eq!(printed_twice(&**e), Vec::<String>::new(), "{e}");
            assert!(!e.to_string().is_empty());
        }
        // The causes are still reachable.
        let e = Error::Rendezvous { action: "connect to", path: "/x".into(), source: os() };
        assert_eq!(e.to_string(), "cannot connect to /x");
        let cause = std::error::Error::source(&e).and_then(|c| c.downcast_ref::<io::Error>()).unwrap();
        assert_eq!(cause.raw_os_error(), Some(111));
        let e = PostError::transfer(os());
        assert_eq!(e.to_string(), "transfer failed");
        assert!(std::error::Error::source(&e).is_some_and(|c| c.downcast_ref::<io::Error>().is_some()));
        assert_eq!(Error::Io(os()).to_string(), os().to_string(), "transparent");
    }

    #[test]
    fn a_wrong_user_names_the_path() {
        let e = Error::WrongUser { action: "accept at", path: "/tmp/a.sock".into(), peer: 65534, ours: 0 };
        assert_eq!(e.to_string(), "cannot accept at /tmp/a.sock: the peer runs as uid 65534, not 0");
    }

    #[test]
    fn too_large_says_what_it_counts_in_which_unit() {
        let bytes = PostError::TooLarge { kind: TooLargeKind::RecordBytes, len: 1248, max: 1016 }.to_string();
        assert!(bytes.contains("record of 1248 bytes") && bytes.contains("at most 1016 bytes"), "{bytes}");
        let fds = PostError::TooLarge { kind: TooLargeKind::Descriptors, len: 70_000, max: 65_536 }.to_string();
        assert!(fds.contains("70000 file descriptors") && fds.contains("at most 65536"), "{fds}");
        assert!(!fds.contains("bytes"), "{fds}");
        assert_ne!(
            PostError::TooLarge { kind: TooLargeKind::RecordBytes, len: 9, max: 8 },
            PostError::TooLarge { kind: TooLargeKind::Descriptors, len: 9, max: 8 },
        );
    }
}
