//! Push delivery: `set_onmessage`, `start`, `set_onmessageerror`, `set_onclose`.
//!
//! A port with something to deliver gets one dispatch thread. The thread holds the
//! `Port`, never the user's handle, so dropping the last `MessagePort` still closes the
//! port, which the thread notices and exits. Handlers run on that thread, without any
//! of the port's locks held, so a handler may post, receive, or close.
//!
//! - Started, with a message handler: the thread takes messages in order and calls the
//!   handler(s); after the peer is gone and the queue is drained it runs the close
//!   handler once and exits.
//! - Not started (or no message handler), with a close handler: the thread only
//!   watches the socket for the peer's hang-up, leaving messages to `recv`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::channel::{MessageEvent, Port, Readiness};
use crate::error::{MessageError, RecvFail};

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
    thread_running: bool,
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

/// Applies `change` to the port's handlers, then makes sure a thread runs if there is
/// work and that a sleeping one re-reads the handlers.
fn update(port: &Arc<Port>, change: impl FnOnce(&mut Events)) {
    let spawn = {
        let mut events = lock(&port.events);
        change(&mut events);
        let spawn = events.has_work() && !events.thread_running && !port.is_detached();
        if spawn {
            events.thread_running = true;
        }
        spawn
    };
    port.events_changed();
    if spawn {
        let port = port.clone();
        let thread_port = port.clone();
        let spawned = std::thread::Builder::new().name("shmport-dispatch".into()).spawn(move || run(thread_port));
        if spawned.is_err() {
            // No thread (resource limits): keep the handlers; the next change retries.
            lock(&port.events).thread_running = false;
        }
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

/// The dispatch thread.
fn run(port: Arc<Port>) {
    // Whatever way the thread ends, the port may get a new one later, and the
    // handlers (which may hold the port itself) do not outlive delivery.
    struct Exit<'a>(&'a Port);
    impl Drop for Exit<'_> {
        fn drop(&mut self) {
            let dropped = {
                let mut events = lock(&self.0.events);
                events.thread_running = false;
                if self.0.is_detached() || events.finished { events.take_handlers() } else { Default::default() }
            };
            drop(dropped);
        }
    }
    let _exit = Exit(&port);
    loop {
        let epoch = port.events_epoch.load(Ordering::SeqCst);
        let delivering = {
            let events = lock(&port.events);
            if !events.has_work() || port.is_detached() {
                return;
            }
            events.delivering()
        };
        let unchanged = || port.events_epoch.load(Ordering::SeqCst) == epoch;
        if delivering {
            match port.wait_readable(unchanged) {
                Readiness::Message => deliver_one(&port),
                Readiness::PeerGone => return fire_close(&port),
                Readiness::Detached => return,
                Readiness::Interrupted => {}
            }
        } else if port.watch_peer(epoch) {
            return fire_close(&port);
        }
    }
}

/// Runs a handler; a panic in it is reported (by the panic hook) and delivery goes on.
fn call<T>(handler: &Shared<Box<dyn FnMut(T) + Send>>, arg: T) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (lock(handler))(arg)));
}

/// Takes the next message and hands it to the handlers.
fn deliver_one(port: &Port) {
    match port.recv_record(crate::channel::Mode::Try, crate::channel::incoming::decode_event) {
        Ok(Ok(event)) => {
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
        Ok(Err(RecvFail::Message(e))) | Err(RecvFail::Message(e)) => {
            let handler = lock(&port.events).onmessageerror.clone();
            if let Some(h) = handler {
                call(&h, e);
            }
        }
        Ok(Err(_)) | Err(_) => {}
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
