//! Facts about the machine and the process, from `/proc`, so a recorded
//! figure can be read against the hardware it came from.

use std::fs;

/// What a benchmark result should be quoted with.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu_model: String,
    /// CPUs this process may run on (what `nproc` prints).
    pub cpus: usize,
    pub memory_total_kib: Option<u64>,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let memory_total_kib = proc_field("/proc/meminfo", "MemTotal:");
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Self {
            cpu_model,
            cpus,
            memory_total_kib,
            kernel,
        }
    }
}

/// Peak resident set size of this process so far (`VmHWM`), KiB.
pub fn peak_rss_kib() -> Option<u64> {
    proc_field("/proc/self/status", "VmHWM:")
}

/// Current resident set size of this process (`VmRSS`), KiB.
pub fn rss_kib() -> Option<u64> {
    proc_field("/proc/self/status", "VmRSS:")
}

/// The number (in kB) of a `Name:   1234 kB` line.
fn proc_field(path: &str, name: &str) -> Option<u64> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
