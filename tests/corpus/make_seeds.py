#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz corpus (see README.md for what they are). Each
input follows the encoding of its target's `run`: bytes read one decision at a time."""
import os, struct

here = os.path.dirname(os.path.abspath(__file__))
POSITION, NONCE = 4096, 77
NO = 0xFFFFFFFF


def write(target, name, data):
    os.makedirs(os.path.join(here, target), exist_ok=True)
    with open(os.path.join(here, target, name), "wb") as f:
        f.write(bytes(data))


def u32(v):
    return list(struct.pack("<I", v & 0xFFFFFFFF))


def u64(v):
    return list(struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF))


# ---- ring: first byte = cap (64 << b % 6) | 0x80 for honest-only ops -------------
# honest-only ops: byte % 3 -> push (len byte, multiplier byte, kind byte), read, release
def push(length, mult=0, kind=0):
    return [0, length, mult, kind]


READ, RELEASE = [1], [2]
honest = [0x80 | 2]
for i in range(40):  # fill a 256-byte ring, read, release, around the wrap
    honest += push(17 + i % 50) + READ + (RELEASE if i % 3 == 0 else [])
write("ring", "ok-honest-wraps", honest)
write("ring", "ok-honest-full-then-drained", [0x80 | 0] + push(40) * 6 + READ * 6 + RELEASE + push(48) + READ)
write("ring", "ok-honest-largest-record", [0x80 | 1] + push(112) + READ + RELEASE + push(113) + READ)
# all ops: 0 push, 1 scribble (u32 offset, u64 word), 2 read, 3 counter (u64, shift, which), 4 release, 5 re-attach
def scribble(offset, word):
    return [1] + u32(offset) + u64(word)


def header(length, kind, flags=0):
    return length | (kind << 32) | (flags << 48)


write("ring", "length-past-the-ring", [2, 0, 8, 0, 0] + scribble(0, header(0xFFFFFFF0, 1)) + [2])
write("ring", "kind-zero", [2] + scribble(0, header(8, 0)) + [2])
write("ring", "padding-at-offset-0", [2] + scribble(0, header(200, 0xFFFF)) + [2])
write("ring", "padding-not-to-the-end", [2, 0, 8, 0, 0, 2, 4] + scribble(16, header(8, 0xFFFF)) + [2, 2])
write("ring", "header-of-another-lap", [0] + [0, 40, 0, 0, 2] * 3 + scribble(8 * 7, header(40, 1)) + [2] * 4)
write("ring", "head-past-tail", [2, 0, 8, 0, 0] + [3] + u64(1 << 40) + [0, 0] + [0, 8, 0, 0, 5, 2])
write("ring", "tail-near-the-top", [2] + [3] + u64(1 << 63) + [0, 1] + [5, 0, 8, 0, 0, 2])
write("ring", "misaligned-head", [2, 0, 8, 0, 0, 2, 4] + [3] + u64(12) + [0, 0] + [0, 200, 0, 0, 0, 200, 0, 0])

# ---- fds: messages (count byte; per message: fd count, kind, ...), drop-peer byte, n, head
def fd_message(fds, position_sel=0, extra=(), nonce_sel=1, nonce=(), count_sel=1, count=()):
    return [fds, 2, position_sel, *extra, nonce_sel, *nonce, count_sel, *count]


SIGNAL = [0, 0]
write("fds", "ok-one-descriptor", [1] + fd_message(1) + [1, 1, 0])
write("fds", "ok-stale-then-signal-then-ours", [3] + fd_message(1, 1, [1]) + SIGNAL + fd_message(2) + [1, 2, 0])
write("fds", "ok-wrong-nonce-dropped", [2] + fd_message(1, nonce_sel=0, nonce=u32(NONCE + 1)) + fd_message(3) + [1, 3, 0])
write("fds", "later-message-first", [1] + fd_message(1, 2, [1]) + [1, 1, 0])
write("fds", "count-says-more-than-sent", [1] + fd_message(1, count_sel=0, count=u32(5)) + [1, 1, 0])
write("fds", "garbage-16-bytes-with-fds", [1, 2, 1, 16] + list(range(16)) + [1, 2, 0])
write("fds", "peer-gone-nothing-queued", [0, 0, 1, 0])
write("fds", "descriptors-missing", [1] + fd_message(1) + [1, 3, 0])

# ---- table: socket messages (as fds), structured byte (odd: raw), n (payload = 2n bytes), payload
def table(n_fds, n_buffers, n_ports, spilled, nonce=NONCE, generation=0, n_shared=0, reserved=0):
    # The header's eight words (segment version 8): n_shared and a reserved zero last.
    return (u32(n_fds) + u32(n_buffers) + u32(n_ports) + u32(spilled) + u32(nonce) + u32(generation)
            + u32(n_shared) + u32(reserved))


def raw_table(messages, payload):
    assert len(payload) % 2 == 0
    return messages + [1, len(payload) // 2] + payload


port_entry = u32(0) + u32(1) + u32(0) + u32(0)
write("table", "ok-one-port", raw_table([1] + fd_message(2), table(2, 0, 1, 0) + port_entry))
empty_buffer = u32(NO) + u32(0) + u32(0) + u32(NO) + u64(0)
write("table", "ok-empty-buffer-and-body", raw_table([0], table(0, 1, 0, 0) + empty_buffer + [1, 2, 3, 4]))
write("table", "ok-nothing-attached", raw_table([0], table(0, 0, 0, 0)))
write("table", "buffer-names-a-missing-descriptor", raw_table([0], table(0, 1, 0, 0) + u32(3) + u32(0) + u32(0) + u32(NO) + u64(8)))
write("table", "buffer-of-a-non-arena-memfd", raw_table([1] + fd_message(2), table(2, 1, 0, 0) + u32(1) + u32(0) + u32(0) + u32(NO) + u64(8)))
write("table", "unknown-arena-id", raw_table([0], table(0, 1, 0, 0) + u32(NO) + u32(0) + u32(0) + u32(5) + u64(8)))
write("table", "arena-id-out-of-range", raw_table([1] + fd_message(1), table(1, 1, 0, 0) + u32(0) + u32(0) + u32(0) + u32(40) + u64(8)))
write("table", "port-map-past-the-descriptors", raw_table([1] + fd_message(2), table(2, 0, 1, 0) + u32(0) + u32(1) + u32(0) + u32(0xFF)))
write("table", "counts-longer-than-the-message", raw_table([0], table(0, 0xFFFF, 0xFFFF, 0)))
write("table", "too-many-descriptors", raw_table([0], table(10000, 0, 0, 0)))
write("table", "spilled-flag-out-of-range", raw_table([0], table(0, 0, 0, 3)))
write("table", "reserved-word-set", raw_table([0], table(0, 0, 0, 0, reserved=1)))
write("table", "shared-count-longer-than-the-message", raw_table([0], table(0, 0, 0, 0, n_shared=0xFFFF)))
write("table", "shared-entry-names-a-missing-descriptor", raw_table([0], table(0, 0, 0, 0, n_shared=1) + u32(3) + u32(0) + u64(8)))
write("table", "spilled-without-pages", raw_table([0], table(0, 0, 0, 1) + empty_buffer[:16] + u64(100)))
write("table", "truncated-header", raw_table([0], table(0, 0, 0, 0)[:10]))
write("table", "descriptors-stale-nonce", raw_table([1] + fd_message(2, nonce_sel=0, nonce=u32(1)), table(2, 0, 1, 0) + port_entry))
