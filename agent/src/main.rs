//! `frakti-agent`: PID 1 inside a frakti pod VM.
//!
//! It prepares the guest (mounts, kernel modules), opens the agent's
//! virtio-serial port once and serves the host's requests on it for the life of
//! the VM, accepting a new session whenever the host reconnects.
//!
//! It owns everything that runs in the guest: its setup, the pod's containers
//! (through `libcontainer`), their logs, exits and interactive streams. It
//! knows the host only through the `agent-api` protocol: nothing of the CRI,
//! kubelet, the hypervisor, the host's image store or CNI networking.

mod attach;
mod attach_session;
#[cfg(test)]
mod attach_tests;
mod capture;
mod channel;
mod containers;
mod disks;
mod fdio;
mod handlers;
mod init;
mod modprobe;
mod net;
mod output;
mod podns;
mod reaper;
mod relay;
mod resources;
mod streams;

use std::time::Instant;

fn main() {
    // The kernel runs the agent as its module helper (`/sbin/modprobe`).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(code) = modprobe::run_if_invoked(&args) {
        std::process::exit(code);
    }
    let started = Instant::now();
    let is_init = std::process::id() == 1;
    if is_init {
        init::early();
    }
    // The first line on the console: benchmarks time the boot up to here.
    eprintln!("frakti-agent {}: init", env!("CARGO_PKG_VERSION"));
    init::logging();
    let modules = if is_init {
        init::guest()
    } else {
        init::LoadedModules::default()
    };
    tracing::info!(elapsed_ms = started.elapsed().as_millis(), "guest prepared");

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => init::fatal(&format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        tokio::spawn(reaper::run());
        let state = handlers::State::new(modules, is_init);
        channel::serve(state).await
    });
    if let Err(e) = result {
        init::fatal(&format!("agent stopped: {e:#}"));
    }
}
