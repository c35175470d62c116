//! PID 1's reaper: reaps every child and hands exit statuses to whoever waits for that pid.
//!
//! A process may exit before anyone registers for it (a short exec), so
//! statuses nobody asked for are kept for a while, bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// Unclaimed statuses kept at most.
const KEEP_UNCLAIMED: usize = 256;

#[derive(Default)]
struct Table {
    waiting: HashMap<i32, oneshot::Sender<i32>>,
    unclaimed: VecDeque<(i32, i32)>,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

fn with_table<T>(f: impl FnOnce(&mut Table) -> T) -> T {
    let mut guard = TABLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(guard.get_or_insert_with(Table::default))
}

/// The shell-style exit code of a status: the code, or 128 + the signal.
fn exit_code(status: WaitStatus) -> Option<(i32, i32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as i32)),
        _ => None,
    }
}

/// Resolves with `pid`'s exit code (128 + signal if killed) once it is reaped.
pub fn wait_for(pid: i32) -> oneshot::Receiver<i32> {
    let (tx, rx) = oneshot::channel();
    with_table(|t| {
        if let Some(i) = t.unclaimed.iter().position(|(p, _)| *p == pid) {
            if let Some((_, code)) = t.unclaimed.remove(i) {
                let _ = tx.send(code);
            }
        } else {
            t.waiting.insert(pid, tx);
        }
    });
    rx
}

fn deliver(pid: i32, code: i32) {
    with_table(|t| match t.waiting.remove(&pid) {
        Some(tx) => {
            let _ = tx.send(code);
        }
        None => {
            if t.unclaimed.len() == KEEP_UNCLAIMED {
                t.unclaimed.pop_front();
            }
            t.unclaimed.push_back((pid, code));
        }
    });
}

/// Reaps children as SIGCHLD arrives, forever.
pub async fn run() {
    let Ok(mut sigchld) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
    else {
        tracing::error!("cannot watch SIGCHLD: children will not be reaped");
        return;
    };
    loop {
        reap_all();
        sigchld.recv().await;
    }
}

fn reap_all() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(status) => {
                if let Some((pid, code)) = exit_code(status) {
                    tracing::debug!(pid, code, "reaped");
                    deliver(pid, code);
                }
            }
        }
    }
}
