//! A soak run: many channels between this process and several worker processes, for a
//! given time, with random message sizes, transferred buffers and transferred ports,
//! and workers killed with SIGKILL and restarted at random. Reports every second the
//! messages sent and echoed, the kills survived and this process's descriptors,
//! mappings and resident memory; at the end, what was lost (must be 0: every message
//! to a worker that was not killed comes back, whole and in order), what was corrupt
//! (0), how long the deaths took to be noticed, and the drift of the descriptor,
//! mapping and memory counts between the first and the second half of the run.
//!
//! ```sh
//! cargo run --release --example soak -- --seconds 60 --workers 4 --channels 8 --kill-every-ms 500
//! ```
//!
//! Exits with status 1 if anything was lost or corrupt, or the descriptors grew by
//! more than `--fd-slack` (default 16) between the halves (a leak per kill or per
//! message would grow them by hundreds). Each worker serves all its ports from one
//! thread with a `PortSet`, echoing each message with its buffers and ports moved
//! back; the parent runs one thread per worker, keeping up to `--window` messages in
//! flight on each channel.

use std::collections::VecDeque;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmport::{ArrayBuffer, MessageChannel, MessagePort, PortEvent, PortSet, Transferable, Value};

const WORKER_ARG: &str = "__soak_worker";

/// What a message carries besides its sequence number.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// A copied buffer of 0 to 400 KiB (past the ring's 256 KiB it goes out of line).
    Copied = 0,
    /// A buffer of up to 1 MiB in the transfer list: its pages move, and move back.
    Moved = 1,
    /// A port just made, in the transfer list; it must come back working.
    Port = 2,
}

struct Options {
    seconds: u64,
    workers: usize,
    channels: usize,
    window: usize,
    kill_every: Duration,
    fd_slack: i64,
}

fn parse() -> Options {
    let mut o = Options {
        seconds: 60,
        workers: 4,
        channels: 8,
        window: 4,
        kill_every: Duration::from_millis(500),
        fd_slack: 16,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value =
            || -> u64 { it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{flag} needs a number")) };
        match flag.as_str() {
            "--seconds" => o.seconds = value(),
            "--workers" => o.workers = value() as usize,
            "--channels" => o.channels = value() as usize,
            "--window" => o.window = value().max(1) as usize,
            "--kill-every-ms" => o.kill_every = Duration::from_millis(value()),
            "--fd-slack" => o.fd_slack = value() as i64,
            other => panic!("unknown argument {other} (see the example's docs)"),
        }
    }
    o
}

/// xorshift32: a random stream per thread, seeded by its index.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
}

/// The bytes of message `seq` of channel `chan`, `len` long: checkable on return.
fn pattern(chan: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut x = (chan << 40) ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 1;
    (0..len)
        .map(|_| {
            x ^= x << 7;
            x ^= x >> 9;
            x as u8
        })
        .collect()
}

/// Totals of the whole run, shared by the threads.
#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    echoed: AtomicU64,
    /// In flight to a worker when it was killed: gone with it, not lost.
    in_flight_at_kills: AtomicU64,
    kills: AtomicU64,
    corrupt: AtomicU64,
    lost: AtomicU64,
    /// The longest time from a kill to the last of the worker's ports closing, in µs.
    slowest_close_us: AtomicU64,
    closes_over_100ms: AtomicU64,
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some(WORKER_ARG) {
        worker();
        return;
    }
    let o = parse();
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let kill_flags: Vec<Arc<AtomicBool>> = (0..o.workers).map(|_| Arc::new(AtomicBool::new(false))).collect();
    println!(
        "soak: {} s, {} workers x {} channels, window {}, a kill every {:?}; pid {}",
        o.seconds,
        o.workers,
        o.channels,
        o.window,
        o.kill_every,
        std::process::id()
    );
    let threads: Vec<_> = (0..o.workers)
        .map(|w| {
            let (totals, stop, kill) = (totals.clone(), stop.clone(), kill_flags[w].clone());
            let (channels, window) = (o.channels, o.window);
            std::thread::spawn(move || drive(w, channels, window, &totals, &stop, &kill))
        })
        .collect();
    println!("\n| t (s) | sent | echoed | kills | fds | maps | RSS (KiB) |\n|---:|---:|---:|---:|---:|---:|---:|");
    let start = Instant::now();
    let mut rng = Rng(0x2545_F491);
    let mut samples = Vec::new();
    let mut next_kill = start + o.kill_every;
    let mut next_sample = start + Duration::from_secs(1);
    while start.elapsed() < Duration::from_secs(o.seconds) {
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        if !o.kill_every.is_zero() && now >= next_kill {
            kill_flags[rng.next() as usize % o.workers].store(true, Ordering::Relaxed);
            next_kill = now + o.kill_every;
        }
        if now >= next_sample {
            let s = sample();
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                start.elapsed().as_secs(),
                totals.sent.load(Ordering::Relaxed),
                totals.echoed.load(Ordering::Relaxed),
                totals.kills.load(Ordering::Relaxed),
                s.0,
                s.1,
                s.2
            );
            samples.push(s);
            next_sample += Duration::from_secs(1);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a driving thread panicked");
    }
    report(&o, &totals, &samples)
}

/// Descriptors, mappings and resident KiB of this process now.
fn sample() -> (i64, i64, i64) {
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as i64).unwrap_or(-1);
    let maps = std::fs::read_to_string("/proc/self/maps").map(|m| m.lines().count() as i64).unwrap_or(-1);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok()))
        .unwrap_or(-1);
    (fds, maps, rss)
}

fn report(o: &Options, totals: &Totals, samples: &[(i64, i64, i64)]) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    // The least of each count over each half: a leak raises the floor, a restart in
    // progress (a worker's channels being remade) only lifts single samples.
    let half = samples.len() / 2;
    let floor = |part: &[(i64, i64, i64)], f: fn(&(i64, i64, i64)) -> i64| part.iter().map(f).min().unwrap_or(0);
    let (first, second) = samples.split_at(half);
    let drift = |f: fn(&(i64, i64, i64)) -> i64| floor(second, f) - floor(first, f);
    let (fd_drift, map_drift, rss_drift) = (drift(|s| s.0), drift(|s| s.1), drift(|s| s.2));
    println!("\nsent {}, echoed {}", get(&totals.sent), get(&totals.echoed));
    println!(
        "kills survived: {} (messages in flight to the killed workers: {})",
        get(&totals.kills),
        get(&totals.in_flight_at_kills)
    );
    println!(
        "deaths noticed: slowest {:.1} ms from the kill to the last port closed; {} over 100 ms",
        get(&totals.slowest_close_us) as f64 / 1000.0,
        get(&totals.closes_over_100ms)
    );
    println!("lost (to live workers): {}", get(&totals.lost));
    println!("corrupt or out of order: {}", get(&totals.corrupt));
    println!(
        "drift, second half's floor minus the first's: {fd_drift} descriptors, {map_drift} mappings, {rss_drift} KiB resident"
    );
    let leaked = samples.len() >= 4 && fd_drift > o.fd_slack;
    if get(&totals.lost) > 0 || get(&totals.corrupt) > 0 || leaked || get(&totals.echoed) == 0 {
        println!("FAILED");
        std::process::exit(1);
    }
    println!("ok");
}

/// One message on its way: what must come back.
struct Pending {
    seq: u64,
    kind: Kind,
    len: usize,
    /// The other end of a port sent (kind `Port`).
    kept: Option<MessagePort>,
}

/// A worker process and the parent's ends of its channels.
struct Worker {
    child: Child,
    ports: Vec<MessagePort>,
    set: PortSet,
    keys: Vec<shmport::PortKey>,
    pending: Vec<VecDeque<Pending>>,
    next_seq: Vec<u64>,
}

fn spawn(channels: usize) -> Worker {
    let control = MessageChannel::new().expect("a control channel");
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.arg(WORKER_ARG);
    control.port2().transfer_to_child(&mut cmd).expect("hand the control port down");
    let child = cmd.spawn().expect("spawn a worker");
    let mut set = PortSet::new().expect("a port set");
    let (mut ports, mut keys) = (Vec::new(), Vec::new());
    for _ in 0..channels {
        let ch = MessageChannel::new().expect("a channel");
        let theirs = ch.port2();
        control.port1().post_message(Value::Port(theirs.clone()), [theirs.into()]).expect("send a port");
        keys.push(set.add(&ch.port1()).expect("add to the set"));
        ports.push(ch.port1());
    }
    Worker {
        child,
        ports,
        set,
        keys,
        pending: (0..channels).map(|_| VecDeque::new()).collect(),
        next_seq: vec![0; channels],
    }
}

/// The parent's side of worker slot `w`: keeps its channels busy, checks what comes
/// back, kills and restarts the worker when told to.
fn drive(w: usize, channels: usize, window: usize, totals: &Totals, stop: &AtomicBool, kill: &AtomicBool) {
    let mut rng = Rng(0x9E37_79B9 ^ (w as u32 + 1).wrapping_mul(0x85EB_CA6B));
    let mut worker = spawn(channels);
    let chan_id = |w: usize, c: usize| (w * 1000 + c) as u64;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping {
            for c in 0..channels {
                while worker.pending[c].len() < window {
                    let seq = worker.next_seq[c];
                    // Never a blocking post: the worker may be blocked posting its
                    // echoes into this thread's full ring, which only this thread reads.
                    let Some(p) = post(&worker.ports[c], &mut rng, chan_id(w, c), seq) else { break };
                    worker.next_seq[c] += 1;
                    totals.sent.fetch_add(1, Ordering::Relaxed);
                    worker.pending[c].push_back(p);
                }
            }
        }
        if kill.swap(false, Ordering::Relaxed) && !stopping {
            let killed_at = Instant::now();
            let _ = worker.child.kill();
            let mut open = channels;
            while open > 0 {
                match worker.set.wait_timeout(Duration::from_secs(5)) {
                    Ok((_, PortEvent::Closed)) => open -= 1,
                    Ok((key, PortEvent::Message(ev))) => check(&mut worker, key, ev, w, totals),
                    Ok((key, PortEvent::MessageError(e))) => message_error(&mut worker, key, e, w, totals),
                    Err(_) => break,
                }
            }
            let took = killed_at.elapsed();
            if open > 0 {
                eprintln!("worker {w}: {open} of {channels} ports not closed {took:?} after the kill");
            }
            totals.slowest_close_us.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
            if took > Duration::from_millis(100) || open > 0 {
                totals.closes_over_100ms.fetch_add(1, Ordering::Relaxed);
            }
            let _ = worker.child.wait();
            let gone: usize = worker.pending.iter().map(VecDeque::len).sum();
            totals.in_flight_at_kills.fetch_add(gone as u64, Ordering::Relaxed);
            totals.kills.fetch_add(1, Ordering::Relaxed);
            // The dead worker's buffers come back to this process's arena.
            shmport::reclaim_arena();
            worker = spawn(channels);
            continue;
        }
        let outstanding: usize = worker.pending.iter().map(VecDeque::len).sum();
        if stopping && outstanding == 0 {
            break;
        }
        let wait = if stopping { Duration::from_secs(5) } else { Duration::from_millis(10) };
        match worker.set.wait_timeout(wait) {
            Ok((key, PortEvent::Message(ev))) => check(&mut worker, key, ev, w, totals),
            Ok((key, PortEvent::MessageError(e))) => message_error(&mut worker, key, e, w, totals),
            Ok((_, PortEvent::Closed)) | Err(_) if stopping => {
                // A live worker that does not answer within 5 s: what is pending is lost.
                totals.lost.fetch_add(outstanding as u64, Ordering::Relaxed);
                break;
            }
            Ok((_, PortEvent::Closed)) => {
                eprintln!("worker {w} closed a port without being killed");
                totals.lost.fetch_add(outstanding as u64, Ordering::Relaxed);
                break;
            }
            Err(_) => {}
        }
    }
    for p in &worker.ports {
        p.close();
    }
    let _ = worker.child.wait();
}

/// Posts message `seq` of a random kind on `port`, if its ring has room now.
fn post(port: &MessagePort, rng: &mut Rng, chan: u64, seq: u64) -> Option<Pending> {
    let kind = match rng.next() % 8 {
        0..=4 => Kind::Copied,
        5 | 6 => Kind::Moved,
        _ => Kind::Port,
    };
    let len = match kind {
        // Mostly small, now and then past the ring (out of line).
        Kind::Copied if rng.next().is_multiple_of(16) => 100 * 1024 + rng.next() as usize % (300 * 1024),
        Kind::Copied => rng.next() as usize % 2048,
        Kind::Moved => 1 + rng.next() as usize % (1 << 20),
        Kind::Port => 8,
    };
    let head = Value::Array(vec![(seq as f64).into(), (kind as u32).into()]);
    let mut kept = None;
    let (body, transfer): (Value, Vec<Transferable>) = match kind {
        Kind::Copied => (ArrayBuffer::from_slice(&pattern(chan, seq, len)).expect("a buffer").into(), vec![]),
        Kind::Moved => {
            let buf = ArrayBuffer::from_slice(&pattern(chan, seq, len)).expect("a buffer");
            (buf.clone().into(), vec![buf.into()])
        }
        Kind::Port => {
            let ch = MessageChannel::new().expect("a channel to send");
            kept = Some(ch.port2());
            (Value::Port(ch.port1()), vec![ch.port1().into()])
        }
    };
    match port.try_post_message(Value::Array(vec![head, body]), transfer) {
        Ok(()) => Some(Pending { seq, kind, len, kept }),
        Err(e) if e.is_full() => None,
        Err(e) => panic!("post: {e}"),
    }
}

/// Checks an echo against what channel `key` is waiting for.
fn check(worker: &mut Worker, key: shmport::PortKey, ev: shmport::MessageEvent, w: usize, totals: &Totals) {
    let Some(c) = worker.keys.iter().position(|k| *k == key) else { return };
    let Some(p) = worker.pending[c].pop_front() else {
        totals.corrupt.fetch_add(1, Ordering::Relaxed);
        return;
    };
    totals.echoed.fetch_add(1, Ordering::Relaxed);
    let chan = (w * 1000 + c) as u64;
    let wrong = match &ev.data {
        Value::Array(parts) if parts.len() == 2 => {
            let seq_ok = matches!(&parts[0], Value::Array(h) if h.first() == Some(&Value::Number(p.seq as f64)));
            let body = match (p.kind, &parts[1]) {
                (Kind::Copied | Kind::Moved, Value::ArrayBuffer(b)) => {
                    let got = b.to_vec();
                    let want = pattern(chan, p.seq, p.len);
                    (got != want).then(|| {
                        let at = got.iter().zip(&want).position(|(a, b)| a != b);
                        format!("bytes differ: {} of {} long, first difference at {at:?}", got.len(), want.len())
                    })
                }
                (Kind::Port, Value::Port(back)) => (!probe(p.kept.as_ref(), back)).then(|| "the port".to_string()),
                (_, other) => Some(format!("a {other:?} body")),
            };
            match (seq_ok, body) {
                (true, None) => None,
                (false, _) => Some(format!("out of order: {:?}", parts[0])),
                (true, Some(why)) => Some(why),
            }
        }
        other => Some(format!("not a message of this soak: {other:?}")),
    };
    if let Some(why) = wrong {
        eprintln!("worker {w} channel {c}: echo of message {} ({:?}): {why}", p.seq, p.kind);
        totals.corrupt.fetch_add(1, Ordering::Relaxed);
    }
}

/// An echo that could not be decoded: it is the one channel `key` waits for.
fn message_error(worker: &mut Worker, key: shmport::PortKey, e: shmport::MessageError, w: usize, totals: &Totals) {
    let c = worker.keys.iter().position(|k| *k == key);
    let p = c.and_then(|c| worker.pending[c].pop_front());
    let what = p.map(|p| format!("message {} ({:?})", p.seq, p.kind));
    eprintln!("worker {w} channel {c:?}: the echo of {what:?} is a message error: {e}");
    totals.corrupt.fetch_add(1, Ordering::Relaxed);
}

/// Whether a port sent away and back still talks to the end kept here.
fn probe(kept: Option<&MessagePort>, back: &MessagePort) -> bool {
    let Some(kept) = kept else { return false };
    kept.post_bytes(b"probe").is_ok()
        && back.recv_bytes_timeout_with(Duration::from_secs(5), |b| b == b"probe").unwrap_or(false)
}

/// The worker: echoes every message of every port it was given, moving its buffers
/// and ports back, until the parent closes them or kills it.
fn worker() {
    let control = MessagePort::from_parent().expect("the control port");
    let mut set = PortSet::new().expect("a port set");
    let mut ports = Vec::new();
    let mut waiting_for_ports = true;
    while waiting_for_ports || !set.is_empty() {
        if waiting_for_ports {
            match control.recv_timeout(Duration::from_millis(if set.is_empty() { 1000 } else { 0 })) {
                Ok(mut ev) => {
                    if let Some(port) = ev.ports.pop() {
                        set.add(&port).expect("add to the set");
                        ports.push(port);
                    }
                    continue;
                }
                Err(e) if e.is_closed() => waiting_for_ports = false,
                Err(_) if set.is_empty() => continue,
                Err(_) => {}
            }
        }
        let Ok((key, event)) = set.wait_timeout(Duration::from_millis(10)) else { continue };
        let ev = match event {
            PortEvent::Message(ev) => ev,
            PortEvent::MessageError(e) => {
                eprintln!("worker {}: a message error: {e}", std::process::id());
                continue;
            }
            PortEvent::Closed => continue,
        };
        let Some(port) = set.get(key) else { continue };
        let transfer: Vec<Transferable> = match &ev.data {
            Value::Array(parts) => match parts.get(1) {
                Some(Value::ArrayBuffer(b)) if is_moved(&parts[0]) => vec![b.clone().into()],
                Some(Value::Port(p)) => vec![p.clone().into()],
                _ => vec![],
            },
            _ => vec![],
        };
        if port.post_message(ev.data, transfer).is_err() {
            std::process::exit(3);
        }
    }
}

fn is_moved(head: &Value) -> bool {
    matches!(head, Value::Array(h) if h.get(1) == Some(&Value::Number(Kind::Moved as u32 as f64)))
}
