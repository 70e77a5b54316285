//! iceoryx2 0.10: publish/subscribe of zero-copy samples with a fixed-size payload
//! (`[u8; N]`), one service per direction. The message length travels in the user
//! header (a `u64`), so the 8-byte stream acknowledgement fits the same sample type.
//!
//! Two ways to wait, as two transports:
//! - [`Wait::Poll`]: the receiver spins on `Subscriber::receive` (what iceoryx2's own
//!   publish-subscribe benchmark does). Never sleeps; needs a CPU per side.
//! - [`Wait::Event`]: each direction also has an event service; the sender calls
//!   `Notifier::notify` after every sample, and a receiver that finds no sample blocks
//!   in `Listener::timed_wait` (iceoryx2's blocking primitive: a Unix datagram socket
//!   on Linux) until notified.

use std::hint::spin_loop;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use iceoryx2::node::Node;
use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;

use shmport_bench::link::{Link, PeerWatch};

/// Environment variable with the service-name prefix the child opens.
const KEY_ENV: &str = "SHMPORT_CMP_IOX_KEY";
/// Bytes of samples a subscriber may queue: the size of a shmport ring.
const QUEUE_BYTES: usize = shmport::DEFAULT_CAPACITY;
/// How long an event-waiting receiver sleeps before it checks that its peer lives.
const WAKE_CHECK: Duration = Duration::from_millis(100);
/// Misses between two peer checks of a spinning receiver.
const SPIN_CHECK: u32 = 1 << 16;

/// How a receiver waits for a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Poll,
    Event,
}

/// The event ports of [`Wait::Event`].
struct Wake {
    notifier: Notifier<ipc::Service>,
    listener: Listener<ipc::Service>,
}

/// One side: publishes on one service, subscribes to the other.
pub struct IoxLink<const N: usize> {
    publisher: Publisher<ipc::Service, [u8; N], u64>,
    subscriber: Subscriber<ipc::Service, [u8; N], u64>,
    wake: Option<Wake>,
    peer: PeerWatch,
    // Last: the ports above go before their node.
    _node: Node<ipc::Service>,
}

/// Which end of the link this process is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Parent,
    Child,
}

impl<const N: usize> IoxLink<N> {
    /// Parent side, before the spawn: creates the services and the parent's ports, and
    /// names them to `cmd`'s child. The link is usable once [`handshake`](Self::handshake)
    /// has seen the child's ports.
    pub fn parent(wait: Wait, cmd: &mut Command) -> Result<IoxLink<N>> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("shmport-cmp-{}-{n}", std::process::id());
        cmd.env(KEY_ENV, &key);
        IoxLink::open(&key, wait, Side::Parent)
    }

    /// Child side: opens the parent's services, then says hello on its publisher so that
    /// the parent knows the child's subscriber exists.
    pub fn child(wait: Wait) -> Result<IoxLink<N>> {
        let key = std::env::var(KEY_ENV).context("the parent named no iceoryx2 services")?;
        let mut link = IoxLink::open(&key, wait, Side::Child)?;
        link.send(&[])?;
        Ok(link)
    }

    fn open(key: &str, wait: Wait, side: Side) -> Result<IoxLink<N>> {
        let node = NodeBuilder::new().create::<ipc::Service>().context("creating the iceoryx2 node")?;
        let (ours, theirs) = match side {
            Side::Parent => ("down", "up"),
            Side::Child => ("up", "down"),
        };
        let queue = (QUEUE_BYTES / N).max(2);
        let pubsub = |direction: &str| -> Result<_> {
            let name = ServiceName::new(&format!("{key}/{direction}")).map_err(|e| anyhow!("service name: {e:?}"))?;
            let builder = node
                .service_builder(&name)
                .publish_subscribe::<[u8; N]>()
                .user_header::<u64>()
                .max_publishers(1)
                .max_subscribers(1)
                .history_size(0)
                .subscriber_max_buffer_size(queue)
                .enable_safe_overflow(false);
            Ok(match side {
                Side::Parent => builder.create().context("creating an iceoryx2 publish-subscribe service")?,
                Side::Child => builder.open().context("opening an iceoryx2 publish-subscribe service")?,
            })
        };
        let publisher = pubsub(ours)?
            .publisher_builder()
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()
            .context("creating the iceoryx2 publisher")?;
        let subscriber = pubsub(theirs)?
            .subscriber_builder()
            .buffer_size(queue)
            .create()
            .context("creating the iceoryx2 subscriber")?;

        let wake = match wait {
            Wait::Poll => None,
            Wait::Event => {
                let event = |direction: &str| -> Result<_> {
                    let name = ServiceName::new(&format!("{key}/{direction}-wake"))
                        .map_err(|e| anyhow!("service name: {e:?}"))?;
                    let builder = node.service_builder(&name).event().max_notifiers(1).max_listeners(1);
                    Ok(match side {
                        Side::Parent => builder.create().context("creating an iceoryx2 event service")?,
                        Side::Child => builder.open().context("opening an iceoryx2 event service")?,
                    })
                };
                let notifier = event(ours)?.notifier_builder().create().context("creating the iceoryx2 notifier")?;
                let listener = event(theirs)?.listener_builder().create().context("creating the iceoryx2 listener")?;
                Some(Wake { notifier, listener })
            }
        };
        Ok(IoxLink { publisher, subscriber, wake, peer: PeerWatch::None, _node: node })
    }

    /// Parent side, once the child runs: waits for its hello (the sample of length 0).
    pub fn handshake(&mut self, peer: PeerWatch, limit: Duration) -> Result<()> {
        self.peer = peer;
        let start = Instant::now();
        loop {
            if let Some(sample) = self.subscriber.receive().context("iceoryx2 receive")? {
                ensure!(*sample.user_header() == 0, "the child's first sample is not its hello");
                return Ok(());
            }
            self.peer.check()?;
            ensure!(start.elapsed() < limit, "the child did not open the iceoryx2 services within {limit:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for the next sample when there was none.
    #[inline]
    fn wait(&self, misses: &mut u32) -> Result<()> {
        match &self.wake {
            None => {
                spin_loop();
                *misses += 1;
                if misses.is_multiple_of(SPIN_CHECK) {
                    self.peer.check()?;
                }
            }
            Some(wake) => {
                let woken = wake.listener.timed_wait(|_| {}, WAKE_CHECK).context("iceoryx2 listener wait")?;
                if woken == 0 {
                    self.peer.check()?;
                }
            }
        }
        Ok(())
    }
}

impl<const N: usize> Link for IoxLink<N> {
    #[inline]
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        let len = msg.len();
        ensure!(len <= N, "a {len}-byte message does not fit a {N}-byte iceoryx2 sample");
        let mut sample = self.publisher.loan_uninit().context("iceoryx2 loan")?;
        *sample.user_header_mut() = len as u64;
        let payload = sample.payload_mut().as_mut_ptr().cast::<u8>();
        // SAFETY: `payload` points to the loaned sample's N payload bytes, which this
        // process alone may write until it sends the sample; `len <= N` (checked above),
        // and `msg` is this process's memory, so the two ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), payload, len);
            std::ptr::write_bytes(payload.add(len), 0, N - len);
        }
        // SAFETY: all N bytes of the `[u8; N]` payload were written just above.
        let sample = unsafe { sample.assume_init() };
        let delivered = sample.send().context("iceoryx2 send")?;
        if delivered == 0 {
            bail!("the iceoryx2 sample reached no subscriber");
        }
        if let Some(wake) = &self.wake {
            wake.notifier.notify().context("iceoryx2 notify")?;
        }
        Ok(())
    }

    #[inline]
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut misses = 0u32;
        loop {
            if let Some(sample) = self.subscriber.receive().context("iceoryx2 receive")? {
                let len = *sample.user_header() as usize;
                ensure!(len <= N && len <= buf.len(), "a {len}-byte sample does not fit the {}-byte buffer", buf.len());
                buf[..len].copy_from_slice(&sample.payload()[..len]);
                return Ok(len);
            }
            self.wait(&mut misses)?;
        }
    }
}
