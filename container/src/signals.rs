//! Signals named by images and by the kubelet: an image config's
//! `StopSignal`, or a container config's stop signal.

use nix::sys::signal::Signal;

/// A stop signal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The name or number is no signal of this system
    #[error("unknown stop signal {0}")]
    Unknown(String),
}

/// The signal number of a stop signal: a name with or without `SIG` in any
/// case (`SIGQUIT`, `QUIT`, `quit`), a real-time signal (`SIGRTMIN+3`,
/// `RTMAX-1`), or a number (`3`); SIGTERM if it is empty.
pub fn stop_signal(name: &str) -> Result<i32, SignalError> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(libc::SIGTERM);
    }
    let unknown = || SignalError::Unknown(name.to_owned());
    if let Ok(n) = name.parse::<i32>() {
        return if Signal::try_from(n).is_ok() || realtime(n) {
            Ok(n)
        } else {
            Err(unknown())
        };
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if let Some(n) = realtime_by_name(&full) {
        return if realtime(n) { Ok(n) } else { Err(unknown()) };
    }
    full.parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| unknown())
}

/// The conventional name of a stop signal (as [`stop_signal`] reads it):
/// `SIGQUIT`, or `SIGRTMIN+n` / `SIGRTMAX-n` for real-time signals, the
/// nearer end of the range first.
pub fn canonical_name(name: &str) -> Result<String, SignalError> {
    let n = stop_signal(name)?;
    if realtime(n) {
        let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        return Ok(match (n - min, max - n) {
            (0, _) => "SIGRTMIN".to_owned(),
            (_, 0) => "SIGRTMAX".to_owned(),
            (up, down) if up <= 15 && up <= down + 1 => format!("SIGRTMIN+{up}"),
            (_, down) => format!("SIGRTMAX-{down}"),
        });
    }
    Signal::try_from(n)
        .map(|s| s.as_str().to_owned())
        .map_err(|_| SignalError::Unknown(name.to_owned()))
}

/// `SIGRTMIN`, `SIGRTMIN+n`, `SIGRTMAX`, `SIGRTMAX-n` as a number (unchecked).
fn realtime_by_name(full: &str) -> Option<i32> {
    let offset = |rest: &str, sign: char| -> Option<i32> {
        if rest.is_empty() {
            return Some(0);
        }
        let n: i32 = rest.strip_prefix(sign)?.parse().ok()?;
        Some(if sign == '+' { n } else { -n })
    };
    if let Some(rest) = full.strip_prefix("SIGRTMIN") {
        return Some(libc::SIGRTMIN() + offset(rest, '+')?);
    }
    if let Some(rest) = full.strip_prefix("SIGRTMAX") {
        return Some(libc::SIGRTMAX() + offset(rest, '-')?);
    }
    None
}

fn realtime(n: i32) -> bool {
    (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&n)
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

    #[test]
    fn real_time_signals_parse_by_name_and_number() {
        let min = libc::SIGRTMIN();
        let max = libc::SIGRTMAX();
        assert_eq!(stop_signal("SIGRTMIN").unwrap(), min);
        assert_eq!(stop_signal("SIGRTMIN+3").unwrap(), min + 3);
        assert_eq!(stop_signal("rtmax-1").unwrap(), max - 1);
        assert_eq!(stop_signal("SIGRTMAX").unwrap(), max);
        assert_eq!(stop_signal(&min.to_string()).unwrap(), min);
        assert!(stop_signal("SIGRTMIN+99").is_err());
        assert!(stop_signal("SIGRTMAX+1").is_err());
        assert!(stop_signal("SIGRTMINX").is_err());
    }

    #[test]
    fn canonical_names_round_trip() {
        assert_eq!(canonical_name("quit").unwrap(), "SIGQUIT");
        assert_eq!(canonical_name("").unwrap(), "SIGTERM");
        assert_eq!(canonical_name("9").unwrap(), "SIGKILL");
        for name in [
            "SIGRTMIN",
            "SIGRTMIN+1",
            "SIGRTMIN+15",
            "SIGRTMAX-14",
            "SIGRTMAX-1",
            "SIGRTMAX",
        ] {
            assert_eq!(canonical_name(name).unwrap(), name);
        }
        assert!(canonical_name("SIGNOPE").is_err());
    }
}
