//! What the figures were measured on, and CPU pinning.

use anyhow::{Context, Result, bail};
use rustix::process::Pid;
use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// The report header's facts.
pub struct MachineInfo {
    pub cpu_model: String,
    /// Logical CPUs this process may run on.
    pub cpus: usize,
    pub kernel: String,
    pub rustc: &'static str,
    pub shmport_revision: &'static str,
    pub iceoryx2: &'static str,
    pub ipc_channel: &'static str,
    pub pinning: String,
}

impl MachineInfo {
    pub fn collect(pinning: &Pinning) -> MachineInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        MachineInfo {
            cpu_model,
            cpus: pinning.allowed.len(),
            kernel,
            rustc: env!("CMP_RUSTC_VERSION"),
            shmport_revision: env!("CMP_SHMPORT_REVISION"),
            iceoryx2: env!("CMP_ICEORYX2_VERSION"),
            ipc_channel: env!("CMP_IPC_CHANNEL_VERSION"),
            pinning: pinning.describe(),
        }
    }
}

/// Which CPUs the two processes run on.
pub struct Pinning {
    /// CPUs this process was allowed at start.
    pub allowed: Vec<usize>,
    /// (parent CPU, child CPU) when pinned.
    pub cpus: Option<(usize, usize)>,
    /// Why not, when not.
    pub failure: Option<String>,
}

impl Pinning {
    /// Pins this process to the first allowed CPU, and picks the second for children.
    pub fn setup(enabled: bool) -> Pinning {
        let allowed = allowed_cpus()
            .unwrap_or_else(|_| (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect());
        let mut pinning = Pinning { allowed: allowed.clone(), cpus: None, failure: None };
        if !enabled {
            pinning.failure = Some("disabled (--no-pin)".into());
        } else if allowed.len() < 2 {
            pinning.failure = Some(format!("only {} CPU available", allowed.len()));
        } else {
            let (parent, child) = (allowed[0], allowed[1]);
            match pin(None, parent) {
                Ok(()) => pinning.cpus = Some((parent, child)),
                Err(e) => pinning.failure = Some(format!("sched_setaffinity failed: {e}")),
            }
        }
        pinning
    }

    pub fn child_cpu(&self) -> Option<usize> {
        self.cpus.map(|(_, child)| child)
    }

    fn describe(&self) -> String {
        match (&self.cpus, &self.failure) {
            (Some((p, c)), _) => format!("yes (parent on CPU {p}, child on CPU {c})"),
            (None, Some(why)) => format!("no: {why}"),
            (None, None) => "no".into(),
        }
    }
}

fn allowed_cpus() -> Result<Vec<usize>> {
    let set = sched_getaffinity(None).context("sched_getaffinity")?;
    Ok((0..CpuSet::MAX_CPU).filter(|&cpu| set.is_set(cpu)).collect())
}

/// Pins `pid` (this process for `None`) to `cpu`. Allocation-free, so it may run
/// between fork and exec.
pub fn pin(pid: Option<Pid>, cpu: usize) -> rustix::io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(pid, &set)
}

/// Checks that `pid` runs on `cpu` alone.
pub fn check_pinned(pid: Pid, cpu: usize) -> Result<()> {
    let set = sched_getaffinity(Some(pid)).context("sched_getaffinity of the child")?;
    if set.count() != 1 || !set.is_set(cpu) {
        bail!("the child is not pinned to CPU {cpu}");
    }
    Ok(())
}
