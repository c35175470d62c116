//! What this host's programs and guest assets say they are: the version
//! lines of QEMU, virtiofsd and iptables and the guest kernel's release, for
//! `frakti check` and `frakti --version`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `program args` for at most ten seconds; its stdout when it succeeds.
pub fn run(program: &Path, args: &[&str], stdin: &str) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not finish within 10 s", program.display()));
            }
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!(
            "{} {}: {}: {}",
            program.display(),
            args.join(" "),
            output.status,
            stderr.trim()
        ))
    }
}

/// The first line of `program --version`.
pub fn version_line(program: &Path) -> Result<String, String> {
    run(program, &["--version"], "")
        .map(|out| out.lines().next().unwrap_or_default().trim().to_owned())
}

/// The release of the guest kernel at `kernel`, which `guest/build.sh`
/// writes beside it as `kernel-release`.
pub fn kernel_release(kernel: &Path) -> Option<String> {
    let text = std::fs::read_to_string(kernel.parent()?.join("kernel-release")).ok()?;
    Some(text.trim().to_owned())
}
