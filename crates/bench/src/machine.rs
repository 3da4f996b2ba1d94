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

    /// The report's title and the lines every figure is quoted with: the
    /// date, then this machine.
    pub fn print_header(&self, title: &str) {
        println!("# {title}");
        println!();
        println!(
            "- date: {}",
            chrono::Local::now().format("%Y-%m-%d %H:%M:%S %z")
        );
        println!("- cpu: {} × {}", self.cpus, self.cpu_model);
        println!(
            "- memory: {}",
            crate::report::fmt_kib(self.memory_total_kib)
        );
        println!("- kernel: {}", self.kernel);
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

/// CPU time of one thread of this process so far.
#[derive(Debug, Clone)]
pub struct ThreadCpu {
    pub tid: u32,
    /// The thread's name (`comm`, at most 15 bytes).
    pub name: String,
    /// Time on a CPU, ns (`schedstat` field 1).
    pub run_ns: u64,
    /// Time runnable but waiting for a CPU, ns (`schedstat` field 2).
    pub wait_ns: u64,
}

/// Every live thread of this process, from `/proc/self/task/*/schedstat`
/// (nanosecond counts, unlike the tick counts of `stat`). Threads that
/// have exited are not counted.
pub fn thread_cpu() -> Vec<ThreadCpu> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let tid = entry.file_name().to_str()?.parse().ok()?;
            let name = fs::read_to_string(entry.path().join("comm"))
                .ok()?
                .trim_end()
                .to_owned();
            let sched = fs::read_to_string(entry.path().join("schedstat")).ok()?;
            let mut fields = sched.split_whitespace().map(|f| f.parse::<u64>().ok());
            let (Some(Some(run_ns)), Some(Some(wait_ns))) = (fields.next(), fields.next()) else {
                return None;
            };
            Some(ThreadCpu {
                tid,
                name,
                run_ns,
                wait_ns,
            })
        })
        .collect()
}

/// The whole machine's CPU time so far, from the `cpu` line of
/// `/proc/stat`, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    /// Every state but idle, iowait and steal.
    pub busy: f64,
    /// Time the hypervisor gave to someone else while we wanted to run.
    pub steal: f64,
}

pub fn machine_cpu() -> MachineCpu {
    let Some(line) = fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned))
    else {
        return MachineCpu::default();
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user and nice).
    let field = |k: usize| ticks.get(k).copied().unwrap_or(0) as f64 / clock_ticks();
    let busy = [0, 1, 2, 5, 6].into_iter().map(field).sum();
    MachineCpu {
        busy,
        steal: field(7),
    }
}

/// CPU time this process has used so far (user and system, every thread
/// including those that have exited), seconds.
pub fn process_cpu_seconds() -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The command name may hold spaces; the fields after it are plain.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line (utime, stime) are 12 and 13
    // after the name, counting from 1 at the state.
    let ticks = |k: usize| {
        fields
            .get(k)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}
