//! `frakti-monitor`: the per-container helper of frakti's host runtime.
//!
//! - `run` creates a container and stays its parent (child subreaper): it
//!   copies the container's stdio into the CRI log and to attached clients,
//!   serves the daemon on a unix socket and writes the exit file;
//! - `exec` runs one process in a running container and reports its exit;
//! - `delete` removes a container's remains;
//! - `pidns` makes a pod's PID namespace, held by a tiny init.
//!
//! Single-threaded, std only: it runs once per container. The command lines
//! are in `monitor::args`, the socket protocol in `monitor::protocol`.

mod delete;
mod exec;
mod pidns;
mod run;
mod sys;

use monitor::args::Command;

fn main() {
    // libcontainer reports the detail of its failures through tracing.
    let filter = tracing_subscriber::EnvFilter::try_from_env("FRAKTI_MONITOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
    let command = match Command::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("frakti-monitor: {e}");
            eprintln!(
                "usage: frakti-monitor run|exec|delete|pidns [flags] (see the monitor crate's args module)"
            );
            std::process::exit(2);
        }
    };
    let code = match command {
        Command::Run(args) => run::run(args),
        Command::Exec(args) => exec::exec(args),
        Command::Delete(args) => delete::delete(&args),
        Command::Pidns(args) => pidns::pidns(&args),
    };
    std::process::exit(code);
}
