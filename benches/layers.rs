//! Criterion benches of the internal layers, through `shmport::__bench` (build with
//! `--features bench-internals`):
//!
//! - `ring/push_pop_64B`: one 64-byte record written, published, read and released on
//!   one thread: the ring's own cost, without cache-line transfers or waiting.
//! - `ring/push_pop_4KiB`: the same with a payload that wraps around the end half the time.
//! - `codec/encode_object`, `codec/decode_object`: the structured-clone wire format of a
//!   small object with a string, numbers and an array.

use criterion::{Criterion, criterion_group, criterion_main};
use shmport::__bench::{Ring, decode, encode};
use shmport::Value;

fn ring(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring");
    for (name, len) in [("push_pop_64B", 64usize), ("push_pop_4KiB", 4096)] {
        let mut ring = Ring::new(1 << 16);
        let payload = vec![7u8; len];
        group.bench_function(name, |b| {
            b.iter(|| {
                assert!(ring.push(&payload));
                ring.pop()
            })
        });
    }
    group.finish();
}

fn codec(c: &mut Criterion) {
    let value = Value::Object(vec![
        ("id".into(), Value::Number(42.0)),
        ("name".into(), Value::String("frame-000042".into())),
        ("tags".into(), Value::Array(vec!["red".into(), "fast".into(), Value::Bool(true)])),
        ("position".into(), Value::Array(vec![1.5.into(), (-2.25).into(), 1e9.into()])),
    ]);
    let mut out = Vec::new();
    encode(&value, &mut out);
    let bytes = out.clone();
    let mut group = c.benchmark_group("codec");
    group.bench_function("encode_object", |b| b.iter(|| encode(&value, &mut out)));
    group.bench_function("decode_object", |b| b.iter(|| decode(&bytes)));
    group.finish();
}

criterion_group!(benches, ring, codec);
criterion_main!(benches);
