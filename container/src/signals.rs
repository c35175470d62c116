//! Signals named by images: the `StopSignal` of an image config.

use nix::sys::signal::Signal;

/// A stop signal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The name or number is no signal of this system
    #[error("unknown stop signal {0}")]
    Unknown(String),
}

/// The signal number of an image's `StopSignal` (`SIGQUIT`, `QUIT`, `quit`,
/// `3`); SIGTERM if it is empty.
pub fn stop_signal(name: &str) -> Result<i32, SignalError> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(libc::SIGTERM);
    }
    let unknown = || SignalError::Unknown(name.to_owned());
    if let Ok(n) = name.parse::<i32>() {
        return Signal::try_from(n).map(|s| s as i32).map_err(|_| unknown());
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| unknown())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse_in_every_form() {
        assert_eq!(stop_signal("").unwrap(), libc::SIGTERM);
        assert_eq!(stop_signal("SIGQUIT").unwrap(), libc::SIGQUIT);
        assert_eq!(stop_signal("usr1").unwrap(), libc::SIGUSR1);
        assert_eq!(stop_signal("9").unwrap(), libc::SIGKILL);
        assert_eq!(
            stop_signal("SIGBOGUS").unwrap_err().to_string(),
            "unknown stop signal SIGBOGUS"
        );
        assert!(stop_signal("999").is_err());
    }
}
