//! Push delivery: `set_onmessage`, `start`, `set_onmessageerror`, `set_onclose`.
//!
//! Every port of the process with something to deliver is served by one dispatch
//! thread, started by the first handler set (and then kept, idle in `epoll_wait`, for
//! the life of the process). The thread waits on all its ports at once with the
//! machinery of `PortSet` (`poller`): a control eventfd tells it that some port's
//! handlers changed (the ports are queued in `pending`). It holds the `Port`, never
//! the user's handle, so dropping the last `MessagePort` still closes the port, which
//! the thread notices and forgets. Handlers run on that thread, without any of the
//! port's locks held, so a handler may post, receive, or close; ports are served in
//! turn, one message each, so a slow handler delays the other ports' handlers (as on
//! the web, where one event loop runs every port's handlers).
//!
//! - Started, with a message handler: the thread watches the port's readiness
//!   descriptor, takes messages in order and calls the handler(s); after the peer is
//!   gone and the queue is drained it runs the close handler once and forgets the port.
//! - Not started (or no message handler), with a close handler: the thread watches
//!   only the port's socket for the peer's hang-up, leaving messages to `recv`. The
//!   socket is unwatched (`detached`) before the port lets go of it, so the epoll set
//!   never keeps a registration of a socket that moved on to another process.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use super::link::Link;
use super::poller::{Next, OTHER, Poller, Took, take_one};
use crate::channel::{MessageEvent, Port};
use crate::error::MessageError;
use crate::platform::{self, Watch as Epoll};

pub(crate) type MessageHandler = Box<dyn FnMut(MessageEvent) + Send>;
pub(crate) type ErrorHandler = Box<dyn FnMut(MessageError) + Send>;
pub(crate) type CloseHandler = Box<dyn FnOnce() + Send>;

type Shared<T> = Arc<Mutex<T>>;

/// A port's handlers and delivery state.
#[derive(Default)]
pub(crate) struct Events {
    onmessage: Option<Shared<MessageHandler>>,
    listeners: Vec<Shared<MessageHandler>>,
    onmessageerror: Option<Shared<ErrorHandler>>,
    onclose: Option<CloseHandler>,
    started: bool,
    /// The dispatch thread serves the port (or was told to).
    registered: bool,
    /// The dispatch thread's epoll set watches the port's socket (for its hang-up).
    socket_watched: bool,
    /// The peer is gone and the close handler ran: nothing more will be delivered.
    finished: bool,
}

/// Handlers taken out of `Events`, dropped after its lock is released (a handler may
/// own the last handle of its own port).
type Taken =
    (Option<Shared<MessageHandler>>, Vec<Shared<MessageHandler>>, Option<Shared<ErrorHandler>>, Option<CloseHandler>);

impl Events {
    fn delivering(&self) -> bool {
        self.started && (self.onmessage.is_some() || !self.listeners.is_empty())
    }

    fn has_work(&self) -> bool {
        !self.finished && (self.delivering() || self.onclose.is_some())
    }

    fn take_handlers(&mut self) -> Taken {
        (self.onmessage.take(), std::mem::take(&mut self.listeners), self.onmessageerror.take(), self.onclose.take())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The token of the control eventfd.
const CONTROL: u64 = u64::MAX;

/// What the process's dispatch thread shares with the threads that change handlers.
struct Dispatcher {
    /// The thread's epoll set (to unwatch a socket from another thread).
    epoll: Arc<OwnedFd>,
    /// Raised when `pending` has ports.
    control: OwnedFd,
    /// Ports whose handlers changed, for the thread to look at.
    pending: Mutex<Vec<Pending>>,
}

/// A port for the dispatch thread to look at.
enum Pending {
    /// Its handlers changed.
    Changed(Arc<Port>),
    /// It was detached (the address of its `Port`, which the thread holds if it serves
    /// it, so the address names no other port meanwhile).
    Detached(usize),
}

static DISPATCHER: Mutex<Option<Arc<Dispatcher>>> = Mutex::new(None);

/// The dispatch thread, started on first use. `None` if it cannot be started (out of
/// descriptors or threads): the next change of handlers tries again.
fn dispatcher() -> Option<Arc<Dispatcher>> {
    let mut global = lock(&DISPATCHER);
    if let Some(d) = global.as_ref() {
        return Some(d.clone());
    }
    let poller = Poller::new().ok()?;
    let control = platform::eventfd_new().ok()?;
    poller.watch_other(control.as_fd(), CONTROL, Epoll::Input).ok()?;
    let d = Arc::new(Dispatcher { epoll: poller.epoll().clone(), control, pending: Mutex::new(Vec::new()) });
    let thread_d = d.clone();
    std::thread::Builder::new().name("shmport-dispatch".into()).spawn(move || run(poller, thread_d)).ok()?;
    *global = Some(d.clone());
    Some(d)
}

/// Applies `change` to the port's handlers, then tells the dispatch thread to look at
/// the port if it has work or is served.
fn update(port: &Arc<Port>, change: impl FnOnce(&mut Events)) {
    let tell = {
        let mut events = lock(&port.events);
        change(&mut events);
        let tell = events.registered || (events.has_work() && !port.is_detached());
        events.registered |= tell;
        tell
    };
    if !tell {
        return;
    }
    match dispatcher() {
        Some(d) => d.tell(Pending::Changed(port.clone())),
        // No thread: keep the handlers; the next change tries again.
        None => lock(&port.events).registered = false,
    }
}

impl Dispatcher {
    fn tell(&self, port: Pending) {
        lock(&self.pending).push(port);
        platform::eventfd_raise(self.control.as_fd());
    }
}

/// The port is being detached (called with its link lock held, before the link goes):
/// the thread's epoll set stops watching its socket, and the thread forgets the port.
pub(crate) fn detached(port: &Port, link: &Link) {
    let (watched, registered) = {
        let mut events = lock(&port.events);
        (std::mem::take(&mut events.socket_watched), events.registered)
    };
    if !(watched || registered) {
        return;
    }
    if let Some(d) = lock(&DISPATCHER).clone() {
        if watched {
            platform::epoll_unwatch(d.epoll.as_fd(), link.socket.as_fd());
        }
        d.tell(Pending::Detached(port as *const Port as usize));
    }
}

pub(crate) fn set_onmessage(port: &Arc<Port>, handler: Option<MessageHandler>) {
    update(port, |e| {
        if handler.is_some() {
            e.started = true;
        }
        e.onmessage = handler.map(|h| Arc::new(Mutex::new(h)));
    });
}

pub(super) fn add_message_listener(port: &Arc<Port>, handler: MessageHandler) {
    update(port, |e| e.listeners.push(Arc::new(Mutex::new(handler))));
}

pub(super) fn set_onmessageerror(port: &Arc<Port>, handler: Option<ErrorHandler>) {
    update(port, |e| e.onmessageerror = handler.map(|h| Arc::new(Mutex::new(h))));
}

pub(super) fn set_onclose(port: &Arc<Port>, handler: Option<CloseHandler>) {
    update(port, |e| e.onclose = handler);
}

pub(crate) fn start(port: &Arc<Port>) {
    update(port, |e| e.started = true);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// The readiness descriptor, in the poller under the key.
    Messages,
    /// The socket's hang-up, under `OTHER | key`.
    HangUp,
}

struct Entry {
    port: Arc<Port>,
    watch: Watch,
}

/// The dispatch thread's table of ports.
struct Table {
    poller: Poller,
    entries: HashMap<u64, Entry>,
    /// By the address of the `Port`.
    keys: HashMap<usize, u64>,
    next_key: u64,
}

/// The dispatch thread.
fn run(poller: Poller, d: Arc<Dispatcher>) {
    let mut table = Table { poller, entries: HashMap::new(), keys: HashMap::new(), next_key: 0 };
    let mut looks = 0;
    loop {
        match table.poller.next(None, &mut looks) {
            Next::Other(CONTROL) => {
                platform::eventfd_clear(d.control.as_fd());
                let ports = std::mem::take(&mut *lock(&d.pending));
                for pending in ports {
                    match pending {
                        Pending::Changed(port) => table.evaluate(&port),
                        Pending::Detached(address) => {
                            let port = table.keys.get(&address).and_then(|k| table.entries.get(k));
                            if let Some(port) = port.map(|e| e.port.clone()) {
                                table.evaluate(&port);
                            }
                        }
                    }
                }
            }
            Next::Other(token) => table.hung_up(token & !OTHER),
            Next::Candidate(key) => table.serve(key),
            Next::Timeout => {}
        }
    }
}

impl Table {
    /// Serves the port as its handlers now say: messages, hang-up only, or not at all.
    fn evaluate(&mut self, port: &Arc<Port>) {
        let key = self.keys.get(&(Arc::as_ptr(port) as usize)).copied();
        let want = {
            let events = lock(&port.events);
            if port.is_detached() || !events.has_work() {
                None
            } else if events.delivering() {
                Some(Watch::Messages)
            } else {
                Some(Watch::HangUp)
            }
        };
        let current = key.and_then(|k| self.entries.get(&k)).map(|e| e.watch);
        match (current, want) {
            (Some(now), Some(want)) if now == want => {
                if let Some(key) = key.filter(|_| want == Watch::Messages) {
                    // Started again, say: look for messages waiting.
                    self.poller.served(key);
                }
            }
            (_, Some(want)) => {
                if let Some(key) = key {
                    self.forget(key);
                }
                lock(&port.events).registered = true;
                if !self.watch(port, want) {
                    self.finish(port);
                }
            }
            (_, None) => {
                if let Some(key) = key {
                    self.forget(key);
                }
                self.finish(port);
            }
        }
    }

    /// Starts watching `port`; false if it cannot be (it is detached, or out of
    /// descriptors: then it is not served until its handlers change again).
    fn watch(&mut self, port: &Arc<Port>, watch: Watch) -> bool {
        let key = self.next_key;
        let watched = match watch {
            Watch::Messages => port.readiness_fd().and_then(|fd| self.poller.insert(key, fd)).is_ok(),
            Watch::HangUp => {
                // Under the link lock, so `detached` (which unwatches under it) cannot
                // come between the look at the link and the watch.
                let link = super::port::lock(&port.link);
                match link.as_ref() {
                    Some(l) => {
                        let ok = self.poller.watch_other(l.socket.as_fd(), OTHER | key, Epoll::HangUp).is_ok();
                        lock(&port.events).socket_watched = ok;
                        ok
                    }
                    None => false,
                }
            }
        };
        if watched {
            self.next_key += 1;
            self.entries.insert(key, Entry { port: port.clone(), watch });
            self.keys.insert(Arc::as_ptr(port) as usize, key);
        }
        watched
    }

    /// Stops watching the port of `key`.
    fn forget(&mut self, key: u64) {
        let Some(entry) = self.entries.remove(&key) else { return };
        self.keys.remove(&(Arc::as_ptr(&entry.port) as usize));
        match entry.watch {
            Watch::Messages => self.poller.remove(key, entry.port.readiness_fd_made()),
            Watch::HangUp => {
                let link = super::port::lock(&entry.port.link);
                if std::mem::take(&mut lock(&entry.port.events).socket_watched)
                    && let Some(l) = link.as_ref()
                {
                    platform::epoll_unwatch(self.poller.epoll().as_fd(), l.socket.as_fd());
                }
            }
        }
    }

    /// The port is no longer served: its handlers are dropped if nothing more will be
    /// delivered (detached, or the close handler ran), else kept for a later change.
    fn finish(&mut self, port: &Port) {
        let dropped = {
            let mut events = lock(&port.events);
            events.registered = false;
            if port.is_detached() || events.finished { events.take_handlers() } else { Default::default() }
        };
        drop(dropped);
    }

    /// The socket of a port watched for hang-up reported something.
    fn hung_up(&mut self, key: u64) {
        let Some(port) = self.entries.get(&key).map(|e| e.port.clone()) else { return };
        let gone = port.link().is_none_or(|l| l.peer_gone());
        if port.is_detached() || gone {
            self.forget(key);
            if !port.is_detached() {
                fire_close(&port);
            }
            self.finish(&port);
        }
    }

    /// Takes the port's next message and hands it to its handlers.
    fn serve(&mut self, key: u64) {
        let Some(port) = self.entries.get(&key).map(|e| e.port.clone()) else { return };
        if !lock(&port.events).delivering() {
            // A handler was cleared meanwhile: messages are left to `recv`.
            return self.evaluate(&port);
        }
        match take_one(&port) {
            Took::Event(event) => {
                self.poller.served(key);
                deliver(&port, event);
            }
            Took::Error(e) => {
                self.poller.served(key);
                let handler = lock(&port.events).onmessageerror.clone();
                if let Some(h) = handler {
                    call(&h, e);
                }
            }
            Took::Empty => self.poller.dry(key, port.readiness_fd_made()),
            Took::Busy => self.poller.busy(key, port.readiness_fd_made()),
            Took::Closed => {
                self.forget(key);
                if !port.is_detached() {
                    fire_close(&port);
                }
                self.finish(&port);
            }
        }
    }
}

/// Runs a handler; a panic in it is reported (by the panic hook) and delivery goes on.
fn call<T>(handler: &Shared<Box<dyn FnMut(T) + Send>>, arg: T) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (lock(handler))(arg)));
}

/// Hands a message to the port's handlers: `onmessage` first, then the listeners.
fn deliver(port: &Port, event: MessageEvent) {
    let (onmessage, listeners) = {
        let events = lock(&port.events);
        (events.onmessage.clone(), events.listeners.clone())
    };
    let mut targets: Vec<Shared<MessageHandler>> = onmessage.into_iter().chain(listeners).collect();
    let last = targets.pop();
    for target in targets {
        call(&target, MessageEvent { data: event.data.clone(), ports: event.ports.clone() });
    }
    if let Some(target) = last {
        call(&target, event);
    }
}

fn fire_close(port: &Port) {
    let handler = {
        let mut events = lock(&port.events);
        events.finished = true;
        events.onclose.take()
    };
    if let Some(h) = handler {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(h));
    }
}
