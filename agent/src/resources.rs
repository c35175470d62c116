//! The guest's side of CPU and memory hot-plug: memory blocks the host
//! plugged are onlined (movable, so they can be unplugged again), and vCPUs
//! are brought online or offline until the count the host asked for is
//! online.

use std::path::Path;
use std::time::{Duration, Instant};

use agent_api::AgentError;
use agent_api::messages::AgentErrorKind;

const CPUS: &str = "/sys/devices/system/cpu";
const MEMORY: &str = "/sys/devices/system/memory";

/// How often the vCPUs are looked at while waiting for plugged ones.
const POLL: Duration = Duration::from_millis(20);

/// The CPUs listed in a sysfs range list such as `0-2,4`.
pub fn parse_cpu_list(text: &str) -> Vec<u32> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>(), b.parse::<u32>()),
            None => (part.parse::<u32>(), part.parse::<u32>()),
        };
        if let (Ok(from), Ok(to)) = (from, to) {
            cpus.extend(from..=to);
        }
    }
    cpus
}

/// The online vCPUs.
pub fn online_cpus() -> Vec<u32> {
    std::fs::read_to_string(Path::new(CPUS).join("online"))
        .map(|t| parse_cpu_list(&t))
        .unwrap_or_default()
}

/// The vCPUs that are there (plugged), online or not.
fn present_cpus() -> Vec<u32> {
    std::fs::read_to_string(Path::new(CPUS).join("present"))
        .map(|t| parse_cpu_list(&t))
        .unwrap_or_default()
}

/// Onlines every offline memory block, as movable memory where the kernel
/// allows it. Returns how many were onlined.
pub fn online_memory() -> usize {
    let Ok(blocks) = std::fs::read_dir(MEMORY) else {
        return 0;
    };
    let mut onlined = 0;
    for block in blocks.flatten() {
        let name = block.file_name();
        if !name.to_string_lossy().starts_with("memory") {
            continue;
        }
        let state = block.path().join("state");
        let offline = std::fs::read_to_string(&state).is_ok_and(|s| s.trim() == "offline");
        if !offline {
            continue;
        }
        if std::fs::write(&state, "online_movable").is_ok()
            || std::fs::write(&state, "online").is_ok()
        {
            onlined += 1;
        } else {
            tracing::warn!(block = %name.to_string_lossy(), "cannot online a memory block");
        }
    }
    onlined
}

fn set_cpu(cpu: u32, online: bool) -> std::io::Result<()> {
    let file = Path::new(CPUS).join(format!("cpu{cpu}/online"));
    std::fs::write(file, if online { "1" } else { "0" })
}

/// Onlines the plugged memory and makes exactly `want` vCPUs online,
/// waiting up to `timeout` for plugged vCPUs to appear. vCPU 0 stays.
pub fn online_resources(want: u32, timeout: Duration) -> Result<(), AgentError> {
    let want = want.max(1) as usize;
    let deadline = Instant::now() + timeout;
    loop {
        online_memory();
        let online = online_cpus();
        if online.len() == want {
            return Ok(());
        }
        if online.len() > want {
            for cpu in online
                .iter()
                .rev()
                .filter(|c| **c != 0)
                .take(online.len() - want)
            {
                set_cpu(*cpu, false).map_err(|e| {
                    AgentError::new(
                        AgentErrorKind::Internal,
                        format!("cannot offline vCPU {cpu}: {e}"),
                    )
                })?;
            }
        } else {
            let offline = present_cpus().into_iter().filter(|c| !online.contains(c));
            for cpu in offline.take(want - online.len()) {
                if let Err(e) = set_cpu(cpu, true) {
                    tracing::debug!(cpu, "cannot online vCPU yet: {e}");
                }
            }
        }
        if online_cpus().len() == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(AgentError::new(
                AgentErrorKind::DeadlineExceeded,
                format!(
                    "{} vCPUs are online after {timeout:?}, not the {want} asked for",
                    online_cpus().len()
                ),
            ));
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_ranges_and_singles() {
        assert_eq!(parse_cpu_list("0-2,4\n"), vec![0, 1, 2, 4]);
        assert_eq!(parse_cpu_list("0"), vec![0]);
        assert_eq!(parse_cpu_list(""), Vec::<u32>::new());
        assert_eq!(parse_cpu_list("x,3"), vec![3]);
    }
}
