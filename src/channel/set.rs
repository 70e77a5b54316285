//! `PortSet`: many ports waited on by one thread (as crossbeam's `Select`,
//! ipc-channel's `IpcReceiverSet`, iceoryx2's `WaitSet`), on the ports' readiness
//! descriptors (see `poller`).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use super::poller::{Next, Poller, Took, take_one};
use super::{MessageEvent, MessagePort};
use crate::error::MessageError;

/// Which port of a [`PortSet`] an event comes from: given by [`PortSet::add`], never
/// reused by the same set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey(u64);

/// What a [`PortSet`] wait returns with the port's key.
#[derive(Debug)]
pub enum PortEvent {
    /// The port's next message.
    Message(MessageEvent),
    /// A message of the port could not be decoded (SEMANTICS 17); the port stays in
    /// the set.
    MessageError(MessageError),
    /// The port is closed: its peer is gone and everything it sent was received, or
    /// the port itself was closed or transferred away. Reported once; the port is no
    /// longer in the set.
    Closed,
}

/// Several ports waited on at once by one thread: each wait returns the next event
/// of any of them, with its port's [`PortKey`].
///
/// ```
/// use shmport::{MessageChannel, PortEvent, PortSet};
///
/// let (a, b) = (MessageChannel::new()?, MessageChannel::new()?);
/// let mut set = PortSet::new()?;
/// let key_a = set.add(&a.port2())?;
/// let key_b = set.add(&b.port2())?;
/// b.port1().post_message("to b", [])?;
/// drop(a);
/// let mut seen = Vec::new();
/// while let Some((key, event)) = set.wait() {
///     match event {
///         PortEvent::Message(ev) => seen.push((key, ev.data.as_str().map(str::to_owned))),
///         PortEvent::Closed => seen.push((key, None)),
///         PortEvent::MessageError(_) => {}
///     }
///     if key == key_b {
///         set.remove(key_b); // the set is empty once `a` is reported closed
///     }
/// }
/// assert!(seen.contains(&(key_b, Some("to b".to_owned()))));
/// assert!(seen.contains(&(key_a, None)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// - **Fair**: ports with messages waiting are served in turn, one event each, so a
///   busy port cannot starve the others.
/// - **Holds its ports**: the set keeps a handle of each port it holds (a
///   [`MessagePort`] is a handle, as a JS reference is): a port in a set stays open
///   until it is removed or reported closed, even after the caller dropped its own
///   handles. [`get`](Self::get) gives it back, to reply on it.
/// - **Closed ports leave**: [`PortEvent::Closed`] is reported once per port, which is
///   then no longer in the set (its handle dropped). A port transferred away or closed
///   while in the set is reported so too.
/// - **Costs**: waiting is `epoll_wait` on one set of the ports' readiness descriptors
///   ([`AsFd`](std::os::fd::AsFd)); a port with messages waiting is received from with
///   no system call per message (one look at the set per 32 events served while some
///   port is busy). A port that another thread of this process is receiving from
///   (a blocked `recv`, a message handler) is tried every millisecond meanwhile: that
///   thread takes its messages.
pub struct PortSet {
    poller: Poller,
    ports: HashMap<u64, MessagePort>,
    next_key: u64,
}

impl PortSet {
    /// An empty set (`epoll_create1`; fails only when out of descriptors).
    pub fn new() -> io::Result<PortSet> {
        Ok(PortSet { poller: Poller::new()?, ports: HashMap::new(), next_key: 0 })
    }

    /// Adds `port` (a handle of it: the set keeps it open, see above), and returns its
    /// key. A port already in the set keeps its key. Fails only when the port's
    /// readiness descriptor cannot be made or watched (out of descriptors or memory).
    pub fn add(&mut self, port: &MessagePort) -> io::Result<PortKey> {
        if let Some((&key, _)) = self.ports.iter().find(|(_, p)| p.ptr_eq(port)) {
            return Ok(PortKey(key));
        }
        let fd = port.try_as_fd()?;
        let key = self.next_key;
        self.poller.insert(key, fd)?;
        self.next_key += 1;
        self.ports.insert(key, port.clone());
        Ok(PortKey(key))
    }

    /// Takes the port of `key` out of the set, and gives back the set's handle of it
    /// (`None` if `key` is not in the set). Its events are never reported after this.
    pub fn remove(&mut self, key: PortKey) -> Option<MessagePort> {
        let port = self.ports.remove(&key.0)?;
        self.poller.remove(key.0, port.port().readiness_fd_made());
        Some(port)
    }

    /// The port of `key`, while it is in the set.
    pub fn get(&self, key: PortKey) -> Option<&MessagePort> {
        self.ports.get(&key.0)
    }

    /// Whether `key`'s port is in the set.
    pub fn contains(&self, key: PortKey) -> bool {
        self.ports.contains_key(&key.0)
    }

    /// How many ports are in the set.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether the set holds no port.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// Waits for the next event of any port in the set. `None` once the set holds no
    /// port (every one was removed or reported closed): it would wait for ever.
    pub fn wait(&mut self) -> Option<(PortKey, PortEvent)> {
        self.next(None).ok()
    }

    /// As [`wait`](Self::wait), at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<(PortKey, PortEvent), WaitTimeoutError> {
        // A timeout too long for the clock waits for ever.
        let deadline = Instant::now().checked_add(timeout);
        self.next(deadline).map_err(|none| if none { WaitTimeoutError::NoPorts } else { WaitTimeoutError::Timeout })
    }

    /// The next event if one is there now.
    pub fn try_wait(&mut self) -> Result<(PortKey, PortEvent), TryWaitError> {
        self.next(Some(Instant::now())).map_err(|none| if none { TryWaitError::NoPorts } else { TryWaitError::Empty })
    }

    /// The next event, until `deadline`. `Err(true)`: no port in the set; `Err(false)`:
    /// the deadline passed.
    fn next(&mut self, deadline: Option<Instant>) -> Result<(PortKey, PortEvent), bool> {
        let mut looks = 0;
        loop {
            if self.ports.is_empty() {
                return Err(true);
            }
            let key = match self.poller.next(deadline, &mut looks) {
                Next::Candidate(key) => key,
                Next::Timeout => return Err(false),
                Next::Other(_) => continue,
            };
            let Some(port) = self.ports.get(&key) else { continue };
            match take_one(port.port()) {
                Took::Event(event) => {
                    self.poller.served(key);
                    return Ok((PortKey(key), PortEvent::Message(event)));
                }
                Took::Error(e) => {
                    self.poller.served(key);
                    return Ok((PortKey(key), PortEvent::MessageError(e)));
                }
                Took::Empty => self.poller.dry(key, port.port().readiness_fd_made()),
                Took::Busy => self.poller.busy(key, port.port().readiness_fd_made()),
                Took::Closed => {
                    drop(self.remove(PortKey(key)));
                    return Ok((PortKey(key), PortEvent::Closed));
                }
            }
        }
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortSet").field("len", &self.len()).finish_non_exhaustive()
    }
}

/// The error of [`PortSet::try_wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryWaitError {
    /// No port of the set has an event now.
    Empty,
    /// The set holds no port.
    NoPorts,
}

impl TryWaitError {
    /// Whether no event was there now.
    pub fn is_empty(&self) -> bool {
        matches!(self, TryWaitError::Empty)
    }

    /// Whether the set holds no port.
    pub fn is_no_ports(&self) -> bool {
        matches!(self, TryWaitError::NoPorts)
    }
}

impl fmt::Display for TryWaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TryWaitError::Empty => "no port of the set has an event",
            TryWaitError::NoPorts => "the port set is empty",
        })
    }
}

impl std::error::Error for TryWaitError {}

/// The error of [`PortSet::wait_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitTimeoutError {
    /// No port of the set had an event in time.
    Timeout,
    /// The set holds no port.
    NoPorts,
}

impl WaitTimeoutError {
    /// Whether the time ran out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, WaitTimeoutError::Timeout)
    }

    /// Whether the set holds no port.
    pub fn is_no_ports(&self) -> bool {
        matches!(self, WaitTimeoutError::NoPorts)
    }
}

impl fmt::Display for WaitTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WaitTimeoutError::Timeout => "timed out waiting on the port set",
            WaitTimeoutError::NoPorts => "the port set is empty",
        })
    }
}

impl std::error::Error for WaitTimeoutError {}
