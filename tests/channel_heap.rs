//! The tests of `channel.rs` again, with every channel and buffer of this process in
//! process memory (the heap): `common::in_process_memory()` is true in a binary whose
//! name ends in `_heap`, and `common::channel` then switches the process to process
//! memory (`shmport::__process_memory_only`) and makes each channel process-local. So
//! the SEMANTICS rules of `channel.rs` hold on both backends, and these run where no
//! memfd can be created.

#[path = "channel.rs"]
mod channel;
