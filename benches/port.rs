//! Criterion benches of the port layer, in one process (cross-process figures come from
//! `cargo run --release -p shmport-bench`).
//!
//! - `bytes_64B_same_thread`: `post_bytes` + `recv_bytes_with` on one thread: the ring
//!   push/pop and the port's bookkeeping, without any cache-line transfer.
//! - `message_object_same_thread`: `post_message` + `recv` of a small object: adds the
//!   structured-clone encode and decode.
//! - `ping_pong_64B_threads/{spin,sleep}`: a round trip between two threads, with the
//!   default spin-then-sleep strategy and with spinning disabled (every wait is a futex
//!   sleep and wake).
//! - `buffer_reuse/{new,new_for_overwrite}/<size>`: a buffer taken and dropped, so each
//!   one reuses the chunk the last one gave back: `new` zeroes it, `new_for_overwrite`
//!   (only this process ever wrote it) does not.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use shmport::{ArrayBuffer, MessageChannel, Value, WaitStrategy};

fn same_thread(c: &mut Criterion) {
    let channel = MessageChannel::new().unwrap();
    let (a, b) = (channel.port1(), channel.port2());
    let payload = [7u8; 64];
    c.bench_function("bytes_64B_same_thread", |bench| {
        bench.iter(|| {
            a.post_bytes(&payload).unwrap();
            b.recv_bytes_with(|bytes| bytes.len()).unwrap()
        })
    });
    let object = Value::Object(vec![
        ("id".into(), Value::Number(42.0)),
        ("name".into(), Value::String("frame".into())),
        ("tags".into(), Value::Array(vec!["a".into(), "b".into()])),
    ]);
    c.bench_function("message_object_same_thread", |bench| {
        bench.iter(|| {
            a.post_message(object.clone(), []).unwrap();
            b.recv().unwrap()
        })
    });
}

fn ping_pong(c: &mut Criterion) {
    let mut group = c.benchmark_group("ping_pong_64B_threads");
    for (name, strategy) in
        [("spin", WaitStrategy::default()), ("sleep", WaitStrategy::SpinThenSleep { spin: Duration::ZERO })]
    {
        let channel = MessageChannel::new().unwrap();
        let (a, b) = (channel.port1(), channel.port2());
        a.set_wait_strategy(strategy);
        b.set_wait_strategy(strategy);
        drop(channel);
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while b.recv_bytes_with(|bytes| buf.copy_from_slice(bytes)).is_ok() {
                b.post_bytes(&buf).unwrap();
            }
        });
        let payload = [1u8; 64];
        group.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    a.post_bytes(&payload).unwrap();
                    a.recv_bytes_with(|bytes| bytes.len()).unwrap();
                }
                start.elapsed()
            })
        });
        a.close();
        echo.join().unwrap();
    }
    group.finish();
}

fn buffer_reuse(c: &mut Criterion) {
    let mut group = c.benchmark_group("buffer_reuse");
    group.sample_size(20);
    for (size, len) in [("64KiB", 64 << 10), ("1MiB", 1 << 20), ("16MiB", 16 << 20)] {
        // Warm: the chunk exists and its pages are populated.
        ArrayBuffer::new(len).unwrap().with_bytes_mut(|bytes| bytes.fill(1));
        group.bench_function(format!("new/{size}"), |bench| bench.iter(|| ArrayBuffer::new(len).unwrap()));
        group.bench_function(format!("new_for_overwrite/{size}"), |bench| {
            bench.iter(|| ArrayBuffer::new_for_overwrite(len).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, same_thread, ping_pong, buffer_reuse);
criterion_main!(benches);
