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

use crate::error::{MessageError, RecvFail};
use crate::port::{MessageEvent, Port, Readiness};
use crate::wait::SLICE;

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
}

impl Events {
    fn delivering(&self) -> bool {
        self.started && (self.onmessage.is_some() || !self.listeners.is_empty())
    }

    fn has_work(&self) -> bool {
        self.delivering() || self.onclose.is_some()
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
    port.events_epoch.fetch_add(1, Ordering::SeqCst);
    port.wake_local_waiters();
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

pub(crate) fn add_message_listener(port: &Arc<Port>, handler: MessageHandler) {
    update(port, |e| e.listeners.push(Arc::new(Mutex::new(handler))));
}

pub(crate) fn set_onmessageerror(port: &Arc<Port>, handler: Option<ErrorHandler>) {
    update(port, |e| e.onmessageerror = handler.map(|h| Arc::new(Mutex::new(h))));
}

pub(crate) fn set_onclose(port: &Arc<Port>, handler: Option<CloseHandler>) {
    update(port, |e| e.onclose = handler);
}

pub(crate) fn start(port: &Arc<Port>) {
    update(port, |e| e.started = true);
}

/// The dispatch thread.
fn run(port: Arc<Port>) {
    loop {
        let epoch = port.events_epoch.load(Ordering::SeqCst);
        let delivering = {
            let mut events = lock(&port.events);
            if !events.has_work() || port.is_detached() {
                events.thread_running = false;
                return;
            }
            events.delivering()
        };
        let unchanged = || port.events_epoch.load(Ordering::SeqCst) == epoch;
        if delivering {
            match port.wait_readable(unchanged) {
                Readiness::Message => deliver_one(&port),
                Readiness::PeerGone => return fire_close(&port),
                Readiness::Detached => return stop(&port),
                Readiness::Interrupted => {}
            }
        } else if port.wait_peer_gone(SLICE) {
            return fire_close(&port);
        } else if port.is_detached() {
            return stop(&port);
        }
    }
}

/// Takes the next message and hands it to the handlers.
fn deliver_one(port: &Port) {
    match port.recv_record(crate::port::Mode::Try, crate::wire::decode_event) {
        Ok(Ok(event)) => {
            let (onmessage, listeners) = {
                let events = lock(&port.events);
                (events.onmessage.clone(), events.listeners.clone())
            };
            let mut targets: Vec<Shared<MessageHandler>> = onmessage.into_iter().chain(listeners).collect();
            let last = targets.pop();
            for target in targets {
                let copy = MessageEvent { data: event.data.clone(), ports: event.ports.clone() };
                (lock(&target))(copy);
            }
            if let Some(target) = last {
                (lock(&target))(event);
            }
        }
        Ok(Err(RecvFail::Message(e))) | Err(RecvFail::Message(e)) => {
            let handler = lock(&port.events).onmessageerror.clone();
            if let Some(h) = handler {
                (lock(&h))(e);
            }
        }
        Ok(Err(_)) | Err(_) => {}
    }
}

fn fire_close(port: &Port) {
    let handler = {
        let mut events = lock(&port.events);
        events.thread_running = false;
        events.onclose.take()
    };
    if let Some(h) = handler {
        h();
    }
}

fn stop(port: &Port) {
    lock(&port.events).thread_running = false;
}
