//! Operating-system limits and process statistics.
//!
//! Before a run the harness checks what could stop it and says which limit it is: this
//! process's open-files limit (raised to the hard limit at start-up), the ephemeral port range
//! times the number of loopback source addresses, the server's `max_connections`, and the
//! server's own open-files limit. During a run it reads CPU time and resident memory of
//! itself, its shard processes and the server from `/proc`.

use std::net::IpAddr;
use std::path::Path;

/// File descriptors the harness keeps for itself besides its connections.
pub const FD_RESERVE: u64 = 128;

/// Why a run cannot happen as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    /// Not enough file descriptors in one load-generator process.
    #[error("fd limit: {per_proc} connections per load-generator process need about {need} open files, but the limit is {limit} (hard limit, cannot be raised here): use --procs {suggest}")]
    Fd {
        /// Connections per process.
        per_proc: u64,
        /// Files needed.
        need: u64,
        /// The soft limit after raising.
        limit: u64,
        /// A `--procs` that fits.
        suggest: u64,
    },
    /// Not enough ephemeral ports.
    #[error("ephemeral port range: {per_source} connections per source address exceed the {ports} ports of /proc/sys/net/ipv4/ip_local_port_range ({lo}-{hi}): use more --sources (at least {suggest})")]
    Ports {
        /// Connections per source address.
        per_source: u64,
        /// Ports available.
        ports: u64,
        /// Range start.
        lo: u64,
        /// Range end.
        hi: u64,
        /// A `--sources` that fits.
        suggest: u64,
    },
    /// The server refuses more connections than this.
    #[error("server max_connections: the run needs {need} connections but the server allows {max} (server.max_connections / CHATD_SERVER__MAX_CONNECTIONS)")]
    ServerMax {
        /// Connections needed.
        need: u64,
        /// The server's limit.
        max: u64,
    },
    /// The server process cannot open that many sockets.
    #[error("server fd limit: the server process (pid {pid}) may open {limit} files, fewer than the {need} connections of the run plus its own files")]
    ServerFd {
        /// The server's pid.
        pid: u32,
        /// Its limit.
        limit: u64,
        /// Connections needed.
        need: u64,
    },
}

/// Raises this process's open-files soft limit to the hard limit; returns (soft, hard).
pub fn raise_nofile() -> (u64, u64) {
    let soft = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(_, h)| h)
        .unwrap_or(soft);
    (soft, hard)
}

/// The ephemeral port range.
pub fn port_range() -> (u64, u64) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().filter_map(|x| x.parse().ok());
    match (it.next(), it.next()) {
        (Some(lo), Some(hi)) if hi >= lo => (lo, hi),
        _ => (32768, 60999),
    }
}

/// What a run needs and has.
#[derive(Debug, Clone)]
pub struct Needs {
    /// Concurrent connections in total.
    pub connections: u64,
    /// Load-generator processes.
    pub procs: u64,
    /// Loopback source addresses.
    pub sources: u64,
    /// The open-files soft limit of each process.
    pub fd_limit: u64,
    /// The server's `max_connections`, if known.
    pub server_max: Option<u64>,
    /// The server's pid and open-files limit, if known.
    pub server_fd: Option<(u32, u64)>,
}

/// Checks the limits; the first one that stops the run is the error.
pub fn check(n: &Needs) -> Result<(), LimitError> {
    let procs = n.procs.max(1);
    let per_proc = n.connections.div_ceil(procs);
    let need = per_proc + FD_RESERVE;
    if need > n.fd_limit {
        let usable = n.fd_limit.saturating_sub(FD_RESERVE).max(1);
        return Err(LimitError::Fd {
            per_proc,
            need,
            limit: n.fd_limit,
            suggest: n.connections.div_ceil(usable),
        });
    }
    let (lo, hi) = port_range();
    let ports = hi - lo + 1;
    let per_source = n.connections.div_ceil(n.sources.max(1));
    if per_source > ports {
        return Err(LimitError::Ports {
            per_source,
            ports,
            lo,
            hi,
            suggest: n.connections.div_ceil(ports),
        });
    }
    if let Some(max) = n.server_max {
        if n.connections > max {
            return Err(LimitError::ServerMax {
                need: n.connections,
                max,
            });
        }
    }
    if let Some((pid, limit)) = n.server_fd {
        if n.connections + 32 > limit {
            return Err(LimitError::ServerFd {
                pid,
                limit,
                need: n.connections,
            });
        }
    }
    Ok(())
}

/// Loopback source addresses 127.0.0.2, 127.0.0.3, ...
pub fn sources(n: usize) -> Vec<IpAddr> {
    (0..n.max(1))
        .map(|i| {
            let x = 2 + i as u32;
            IpAddr::from([
                127,
                ((x >> 16) & 0xff) as u8,
                ((x >> 8) & 0xff) as u8,
                (x & 0xff) as u8,
            ])
        })
        .collect()
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const TICKS: f64 = 100.0;

/// CPU seconds (user + system) a process has used.
pub fn cpu_secs(pid: &str) -> Option<f64> {
    cpu_times(pid).map(|t| t.user + t.system)
}

/// CPU time a process has used so far, split into user and system (kernel) seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    /// Seconds in user code.
    pub user: f64,
    /// Seconds in the kernel on the process's behalf (system calls, page faults).
    pub system: f64,
}

/// User and system CPU seconds of a process so far (`/proc/<pid>/stat`).
pub fn cpu_times(pid: &str) -> Option<CpuTimes> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some(CpuTimes {
        user: utime / TICKS,
        system: stime / TICKS,
    })
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The open-files soft limit of a process.
pub fn nofile_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    text.lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// Busy and total jiffies of the whole machine.
pub fn machine_cpu() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Number of CPUs.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The pid of the process listening on TCP `port` (via `/proc/net/tcp*` and `/proc/*/fd`).
pub fn pid_by_port(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT, st 0A is LISTEN, inode is field 9.
            let (Some(local), Some(st), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let p = local
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            if p == Some(port) && *st == "0A" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_the_one_that_stops_the_run() {
        let base = Needs {
            connections: 19_000,
            procs: 1,
            sources: 4,
            fd_limit: 20_000,
            server_max: Some(100_000),
            server_fd: Some((1, 20_000)),
        };
        assert_eq!(check(&base), Ok(()));
        let e = check(&Needs {
            connections: 30_000,
            ..base.clone()
        })
        .unwrap_err();
        assert!(matches!(e, LimitError::Fd { suggest: 2, .. }), "{e}");
        assert!(e.to_string().starts_with("fd limit"));
        let e = check(&Needs {
            sources: 1,
            connections: 40_000,
            procs: 4,
            server_fd: None,
            ..base.clone()
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("ephemeral port range"), "{e}");
        let e = check(&Needs {
            server_max: Some(1000),
            ..base.clone()
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("server max_connections"), "{e}");
        let e = check(&Needs {
            server_fd: Some((7, 1024)),
            ..base
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("server fd limit"), "{e}");
    }

    #[test]
    fn proc_readers_work_on_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_secs("self").is_some());
        let t = cpu_times("self").unwrap();
        assert!(t.user >= 0.0 && t.system >= 0.0);
        assert!(nofile_of(me).unwrap() > 0);
        let (busy, total) = machine_cpu().unwrap();
        assert!(total >= busy);
        assert_eq!(
            sources(2),
            vec![IpAddr::from([127, 0, 0, 2]), IpAddr::from([127, 0, 0, 3])]
        );
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(pid_by_port(l.local_addr().unwrap().port()), Some(me));
    }
}
