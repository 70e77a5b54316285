//! What every benchmark program of shmport shares: the workloads (written once against
//! [`link::Link`]) with their figures, the machine description and CPU pinning, the
//! command-line options, and the runner that measures each job between two processes.
//!
//! A program implements [`job::Connect`] for its transports, and hands its options
//! and the sizes and counts of its jobs to [`run::all`] from [`run::main`]; it
//! formats the results its own way. The `shmport-bench` binary (shmport against Unix
//! sockets, pipes, TCP, a raw ring and a one-slot ping-pong) is one such program;
//! `comparisons/` (shmport against iceoryx2 and ipc-channel) is another.

pub mod cli;
pub mod job;
pub mod link;
pub mod machine;
pub mod report;
pub mod run;
pub mod stats;
pub mod workloads;
