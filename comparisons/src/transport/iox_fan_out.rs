//! iceoryx2 0.10 under shmport-bench's fan-out workload: one publisher, one subscriber
//! per reader process, all on one publish-subscribe service whose payload is a byte
//! slice (`[u8]`, the publisher's `initial_max_slice_len` the message size, loaned with
//! `loan_slice_uninit` and filled with `write_from_slice`). The readers acknowledge on
//! one shared service (payload `u64`: the count; user header `u64`: the reader's
//! index), which the writer's one subscriber reads.
//!
//! No sample is lost: the subscribers' buffers do not overflow (`enable_safe_overflow(false)`)
//! and a publisher that finds one full retries (its backpressure handler says
//! `Retry`, for up to [`SEND_LIMIT`], then fails the send).
//!
//! With [`Wait::Poll`] a waiting side spins on `Subscriber::receive`; with
//! [`Wait::Event`] each direction also has an event service: the writer notifies the
//! readers' listeners after every sample, a reader notifies the writer's listener
//! after every acknowledgement, and a side that finds no sample blocks in
//! `Listener::timed_wait`.

use std::hint::spin_loop;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use iceoryx2::node::Node;
use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::{BackpressureAction, BackpressureInfo};
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;
use rustix::process::Pid;

use shmport_bench::link::PeerWatch;
use shmport_bench::workloads::fan_out::{BroadcastReader, Broadcaster};

use super::iox::Wait;

/// Environment variable with the service-name prefix a reader opens.
const KEY_ENV: &str = "SHMPORT_CMP_IOX_FAN_OUT_KEY";
/// Environment variable with a reader's index (0 to readers - 1).
const INDEX_ENV: &str = "SHMPORT_CMP_IOX_FAN_OUT_INDEX";
/// Bytes of samples a subscriber may queue: the size of a shmport ring (at least two
/// samples).
const QUEUE_BYTES: usize = shmport::DEFAULT_CAPACITY;
/// How long a publisher retries a full subscriber before it fails the send.
const SEND_LIMIT: Duration = Duration::from_secs(30);
/// How long the writer waits for the readers' acknowledgements before it fails.
const ACK_LIMIT: Duration = Duration::from_secs(60);
/// How long an event-waiting side sleeps before it checks that its peers live.
const WAKE_CHECK: Duration = Duration::from_millis(100);
/// Misses between two peer checks of a spinning side.
const SPIN_CHECK: u32 = 1 << 16;

type Data = PortFactory<ipc::Service, [u8], ()>;
type Acks = PortFactory<ipc::Service, u64, u64>;

/// Samples each subscriber of the data service may queue at `size` bytes.
fn queue(size: usize) -> usize {
    (QUEUE_BYTES / size).max(2)
}

/// The services of one measurement, from the writer (`create`) or a reader (`open`).
struct Services {
    data: Data,
    acks: Acks,
    /// The event services (readers' wake-up, writer's wake-up) of [`Wait::Event`].
    events: Option<(
        iceoryx2::service::port_factory::event::PortFactory<ipc::Service>,
        iceoryx2::service::port_factory::event::PortFactory<ipc::Service>,
    )>,
}

impl Services {
    fn open(node: &Node<ipc::Service>, key: &str, size: usize, readers: u32, wait: Wait, create: bool) -> Result<Self> {
        let readers = readers as usize;
        let name = |what: &str| {
            ServiceName::new(&format!("{key}/{what}")).map_err(|e| anyhow!("iceoryx2 service name: {e:?}"))
        };
        let what = if create { "creating" } else { "opening" };
        let data = node
            .service_builder(&name("data")?)
            .publish_subscribe::<[u8]>()
            .max_publishers(1)
            .max_subscribers(readers)
            .max_nodes(readers + 1)
            .history_size(0)
            .subscriber_max_buffer_size(queue(size))
            .enable_safe_overflow(false);
        let data =
            if create { data.create().map_err(anyhow::Error::new) } else { data.open().map_err(anyhow::Error::new) }
                .with_context(|| format!("{what} the iceoryx2 fan-out data service"))?;
        let acks = node
            .service_builder(&name("acks")?)
            .publish_subscribe::<u64>()
            .user_header::<u64>()
            .max_publishers(readers)
            .max_subscribers(1)
            .max_nodes(readers + 1)
            .history_size(0)
            // One acknowledgement per reader and round: the writer reads them all
            // before the next round.
            .subscriber_max_buffer_size(readers)
            .enable_safe_overflow(false);
        let acks =
            if create { acks.create().map_err(anyhow::Error::new) } else { acks.open().map_err(anyhow::Error::new) }
                .with_context(|| format!("{what} the iceoryx2 fan-out acknowledgement service"))?;
        let events = match wait {
            Wait::Poll => None,
            Wait::Event => {
                let event = |what_for: &str, notifiers: usize, listeners: usize| -> Result<_> {
                    let builder = node
                        .service_builder(&name(what_for)?)
                        .event()
                        .max_notifiers(notifiers)
                        .max_listeners(listeners)
                        .max_nodes(readers + 1);
                    if create {
                        builder.create().map_err(anyhow::Error::new)
                    } else {
                        builder.open().map_err(anyhow::Error::new)
                    }
                    .with_context(|| format!("{what} the iceoryx2 fan-out {what_for} event service"))
                };
                Some((event("data-wake", 1, readers)?, event("acks-wake", readers, 1)?))
            }
        };
        Ok(Services { data, acks, events })
    }
}

/// The writer: the data publisher and the acknowledgements' subscriber.
pub struct IoxBroadcaster {
    key: String,
    readers: u32,
    publisher: Publisher<ipc::Service, [u8], ()>,
    acks: Subscriber<ipc::Service, u64, u64>,
    /// Wakes the readers, and is woken by them ([`Wait::Event`]).
    wake: Option<(Notifier<ipc::Service>, Listener<ipc::Service>)>,
    peers: Vec<PeerWatch>,
    seen: Vec<bool>,
    _services: Services,
    // Last: the ports above go before their node.
    _node: Node<ipc::Service>,
}

impl IoxBroadcaster {
    /// Creates the services of a measurement of `readers` readers and `size`-byte messages.
    pub fn new(size: usize, readers: u32, wait: Wait) -> Result<IoxBroadcaster> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("shmport-cmp-fan-{}-{n}", std::process::id());
        let node = NodeBuilder::new().create::<ipc::Service>().context("creating the iceoryx2 node")?;
        let services = Services::open(&node, &key, size, readers, wait, true)?;
        let publisher = services
            .data
            .publisher_builder()
            .initial_max_slice_len(size)
            .set_backpressure_handler(|info: &BackpressureInfo| {
                if info.elapsed_time < SEND_LIMIT {
                    BackpressureAction::Retry
                } else {
                    BackpressureAction::DiscardDataAndFail
                }
            })
            .create()
            .context("creating the iceoryx2 fan-out publisher")?;
        let acks = services
            .acks
            .subscriber_builder()
            .buffer_size(readers as usize)
            .create()
            .context("creating the iceoryx2 acknowledgement subscriber")?;
        let wake = match &services.events {
            None => None,
            Some((data_wake, acks_wake)) => Some((
                data_wake.notifier_builder().create().context("creating the iceoryx2 notifier")?,
                acks_wake.listener_builder().create().context("creating the iceoryx2 listener")?,
            )),
        };
        let seen = vec![false; readers as usize];
        Ok(IoxBroadcaster {
            key,
            readers,
            publisher,
            acks,
            wake,
            peers: Vec::new(),
            seen,
            _services: services,
            _node: node,
        })
    }

    /// Whether a reader that has not acknowledged yet has exited.
    fn unacked_reader_exited(&self) -> bool {
        self.peers.iter().zip(&self.seen).any(|(peer, &seen)| !seen && peer.check().is_err())
    }
}

impl Broadcaster for IoxBroadcaster {
    fn add_reader(&mut self, index: u32, cmd: &mut Command) -> Result<()> {
        ensure!(index < self.readers, "reader {index} of {}", self.readers);
        cmd.env(KEY_ENV, &self.key).env(INDEX_ENV, index.to_string());
        Ok(())
    }

    fn reader_spawned(&mut self, child: &Child) -> Result<()> {
        self.peers.push(PeerWatch::Child(Pid::from_child(child)));
        Ok(())
    }

    #[inline]
    fn broadcast(&mut self, msg: &[u8]) -> Result<()> {
        let sample = self.publisher.loan_slice_uninit(msg.len()).context("iceoryx2 loan")?;
        let delivered = sample.write_from_slice(msg).send().context("iceoryx2 send")?;
        ensure!(
            delivered == self.readers as usize,
            "an iceoryx2 sample reached {delivered} of {} readers",
            self.readers
        );
        if let Some((notifier, _)) = &self.wake {
            notifier.notify().context("iceoryx2 notify")?;
        }
        Ok(())
    }

    fn acks(&mut self, check: &mut dyn FnMut(u64) -> Result<()>) -> Result<()> {
        self.seen.fill(false);
        let (mut left, mut misses, mut exited, start) = (self.readers, 0u32, false, Instant::now());
        while left > 0 {
            if let Some(sample) = self.acks.receive().context("iceoryx2 receive")? {
                let index = *sample.user_header() as usize;
                ensure!(index < self.seen.len() && !self.seen[index], "an acknowledgement from reader {index} again");
                self.seen[index] = true;
                left -= 1;
                check(*sample.payload())?;
                continue;
            }
            let idle = match &self.wake {
                None => {
                    spin_loop();
                    misses += 1;
                    misses.is_multiple_of(SPIN_CHECK)
                }
                Some((_, listener)) => listener.timed_wait(|_| {}, WAKE_CHECK).context("iceoryx2 listener wait")? == 0,
            };
            if idle {
                // A reader acknowledges, then exits: one that has exited is missing only
                // if its acknowledgement is still not there after one more look.
                if self.unacked_reader_exited() {
                    if exited {
                        bail!(
                            "a fan-out reader exited without acknowledging ({left} of {} acknowledgements missing)",
                            self.readers
                        );
                    }
                    exited = true;
                }
                if start.elapsed() > ACK_LIMIT {
                    bail!("{left} of {} readers did not acknowledge within {ACK_LIMIT:?}", self.readers);
                }
            }
        }
        Ok(())
    }
}

/// A reader: its subscriber to the data, its publisher of acknowledgements.
pub struct IoxReader {
    index: u64,
    subscriber: Subscriber<ipc::Service, [u8], ()>,
    acks: Publisher<ipc::Service, u64, u64>,
    /// Woken by the writer, and wakes it ([`Wait::Event`]).
    wake: Option<(Listener<ipc::Service>, Notifier<ipc::Service>)>,
    _services: Services,
    _node: Node<ipc::Service>,
}

impl IoxReader {
    /// Opens the services the writer named in this process's environment. (The reader
    /// dies with the writer, `PR_SET_PDEATHSIG`, so it need not watch it.)
    pub fn connect(size: usize, readers: u32, wait: Wait) -> Result<IoxReader> {
        let key = std::env::var(KEY_ENV).context("the writer named no iceoryx2 services")?;
        let index: u64 = std::env::var(INDEX_ENV).context("the writer gave no reader index")?.parse()?;
        let node = NodeBuilder::new().create::<ipc::Service>().context("creating the iceoryx2 node")?;
        let services = Services::open(&node, &key, size, readers, wait, false)?;
        let subscriber = services
            .data
            .subscriber_builder()
            .buffer_size(queue(size))
            .create()
            .context("creating the iceoryx2 fan-out subscriber")?;
        let acks = services
            .acks
            .publisher_builder()
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()
            .context("creating the iceoryx2 acknowledgement publisher")?;
        let wake = match &services.events {
            None => None,
            Some((data_wake, acks_wake)) => Some((
                data_wake.listener_builder().create().context("creating the iceoryx2 listener")?,
                acks_wake.notifier_builder().create().context("creating the iceoryx2 notifier")?,
            )),
        };
        Ok(IoxReader { index, subscriber, acks, wake, _services: services, _node: node })
    }
}

impl BroadcastReader for IoxReader {
    #[inline]
    fn recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> Result<R>) -> Result<R> {
        loop {
            if let Some(sample) = self.subscriber.receive().context("iceoryx2 receive")? {
                return f(sample.payload());
            }
            match &self.wake {
                None => spin_loop(),
                Some((listener, _)) => {
                    listener.timed_wait(|_| {}, WAKE_CHECK).context("iceoryx2 listener wait")?;
                }
            }
        }
    }

    fn ack(&mut self, count: u64) -> Result<()> {
        let mut sample = self.acks.loan_uninit().context("iceoryx2 loan")?;
        *sample.user_header_mut() = self.index;
        sample.write_payload(count).send().context("iceoryx2 send")?;
        if let Some((_, notifier)) = &self.wake {
            notifier.notify().context("iceoryx2 notify")?;
        }
        Ok(())
    }
}
