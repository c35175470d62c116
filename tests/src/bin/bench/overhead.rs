//! The fixed cost of an idle VM pod on the host, beyond what its containers
//! ask for: host memory (RSS and PSS of QEMU and virtiofsd) and CPU (their
//! user + system time over a quiet interval). This is the figure a
//! RuntimeClass's `overhead.podFixed` should carry (`deploy/runtimeclass.yaml`).

use std::time::{Duration, Instant};

use anyhow::Context;
use cri::proto;
use cri::proto::runtime_service_client::RuntimeServiceClient;
use e2e::{pod_config, pod_status, run_pod, vm_pid};
use tonic::transport::Channel;

/// One idle pod's cost.
#[derive(Debug, Clone, Copy)]
pub struct Overhead {
    /// Resident memory of QEMU and virtiofsd, MiB.
    pub rss_mib: f64,
    /// Their proportional share of it, MiB.
    pub pss_mib: f64,
    /// Their CPU, millicores.
    pub cpu_millicores: f64,
}

/// How long an idle pod settles before it is measured.
const SETTLE: Duration = Duration::from_secs(5);
/// How long its CPU is measured.
const WINDOW: Duration = Duration::from_secs(10);

/// `kB` of a `/proc/<pid>/smaps_rollup` field.
fn smaps_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix(field)?
                    .trim_start_matches(':')
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// User + system clock ticks of `pid` and its threads.
fn cpu_ticks(pid: i32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command (which may hold spaces) in parentheses.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Clock ticks per second.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf(3) with a valid name reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Measures `runs` idle pods, one after another.
pub async fn idle_pods(
    c: &mut RuntimeServiceClient<Channel>,
    runs: usize,
) -> anyhow::Result<Vec<Overhead>> {
    let mut out = Vec::new();
    for i in 0..runs {
        let id = run_pod(c, pod_config(&format!("bench-overhead-{i}"), &[])).await?;
        tokio::time::sleep(SETTLE).await;
        let (_, info) = pod_status(c, &id).await?;
        let pids: Vec<i32> = [
            vm_pid(&info),
            info["vm"]["virtiofsd_pid"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .context("no virtiofsd pid")?,
        ]
        .into();
        let before: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
        let begin = Instant::now();
        tokio::time::sleep(WINDOW).await;
        let after: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
        let secs = begin.elapsed().as_secs_f64();
        let kib = |field| pids.iter().map(|p| smaps_kib(*p, field)).sum::<u64>() as f64;
        out.push(Overhead {
            rss_mib: kib("Rss") / 1024.0,
            pss_mib: kib("Pss") / 1024.0,
            cpu_millicores: (after - before) as f64 / ticks_per_second() / secs * 1000.0,
        });
        c.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
    }
    Ok(out)
}
