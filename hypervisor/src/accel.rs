//! Accelerator choice.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How the accelerator is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    /// Probe KVM with a real boot; fall back to TCG.
    #[default]
    Auto,
    /// Always KVM.
    Kvm,
    /// Always TCG (software emulation).
    Tcg,
}

impl FromStr for AccelMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?} (expected auto, kvm or tcg)"
            )),
        }
    }
}

/// An accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's tiny code generator.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

/// Whether `/dev/kvm` can be opened read-write; `Err` says why not.
pub fn kvm_device_usable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!("auto".parse(), Ok(AccelMode::Auto));
        assert_eq!("kvm".parse(), Ok(AccelMode::Kvm));
        assert_eq!("tcg".parse(), Ok(AccelMode::Tcg));
        assert!("xen".parse::<AccelMode>().unwrap_err().contains("xen"));
    }
}
