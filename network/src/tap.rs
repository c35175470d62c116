//! A tap device in the pod's namespace, mirrored to the CNI interface with
//! tc ingress redirects both ways, so a VM attached to the tap owns the
//! CNI interface's traffic (docs/architecture.md, "The guest"). Uses `ip` and `tc` from iproute2.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::netns::Netns;

/// Setting up or tearing down the tap failed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The CNI interface is missing
    #[error("interface {ifname} not found in network namespace {netns}: {reason}")]
    NoInterface {
        /// The interface looked for.
        ifname: String,
        /// The namespace.
        netns: String,
        /// The tool's answer.
        reason: String,
    },
    /// An iproute2 command failed
    #[error("`{command}` failed: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output.
        reason: String,
    },
    /// The tun device cannot be provided
    #[error("cannot create /dev/net/tun: {0}")]
    TunDevice(String),
}

/// A tap mirrored to a CNI interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapLink {
    /// The CNI interface (e.g. `eth0`).
    pub ifname: String,
    /// The tap device (e.g. `tap0`).
    pub tap: String,
    /// The CNI interface's MAC address; the VM's NIC takes it.
    pub mac: String,
    /// The CNI interface's MTU.
    pub mtu: u32,
}

#[derive(Deserialize)]
struct LinkInfo {
    address: String,
    mtu: u32,
}

async fn run(program: &str, args: &[&str]) -> Result<String, TapError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| TapError::Command {
            command: format!("{program} {}", args.join(" ")),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(TapError::Command {
            command: format!("{program} {}", args.join(" ")),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes sure `/dev/net/tun` exists (some hosts ship without the node).
pub fn ensure_tun_device() -> Result<(), TapError> {
    let path = Path::new("/dev/net/tun");
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all("/dev/net").map_err(|e| TapError::TunDevice(e.to_string()))?;
    let dev = nix::sys::stat::makedev(10, 200);
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        dev,
    )
    .map_err(|e| TapError::TunDevice(e.to_string()))
}

/// Creates `tap` in `netns` and mirrors it to `ifname` both ways.
pub async fn setup(netns: &Netns, ifname: &str, tap: &str) -> Result<TapLink, TapError> {
    mirror(netns, ifname, tap, None).await
}

/// Like [`setup`], with the existing tap `tap` of namespace `from` (a VM
/// booted with it) moved into `netns` instead of a new one.
pub async fn adopt(
    from: &Netns,
    netns: &Netns,
    ifname: &str,
    tap: &str,
) -> Result<TapLink, TapError> {
    mirror(netns, ifname, tap, Some(from)).await
}

/// Makes the tap `tap` in `netns`, for a VM to boot with before it has a
/// pod (see [`adopt`]).
pub async fn create(netns: &Netns, tap: &str) -> Result<(), TapError> {
    ensure_tun_device()?;
    run(
        "ip",
        &[
            "-n",
            netns.name(),
            "tuntap",
            "add",
            "dev",
            tap,
            "mode",
            "tap",
        ],
    )
    .await?;
    Ok(())
}

async fn mirror(
    netns: &Netns,
    ifname: &str,
    tap: &str,
    from: Option<&Netns>,
) -> Result<TapLink, TapError> {
    ensure_tun_device()?;
    let ns = netns.name();
    let json = run("ip", &["-n", ns, "-j", "link", "show", "dev", ifname])
        .await
        .map_err(|e| TapError::NoInterface {
            ifname: ifname.into(),
            netns: ns.into(),
            reason: e.to_string(),
        })?;
    let info: Vec<LinkInfo> = serde_json::from_str(&json).map_err(|e| TapError::NoInterface {
        ifname: ifname.into(),
        netns: ns.into(),
        reason: e.to_string(),
    })?;
    let info = info
        .into_iter()
        .next()
        .ok_or_else(|| TapError::NoInterface {
            ifname: ifname.into(),
            netns: ns.into(),
            reason: "no such link".into(),
        })?;
    let mtu = info.mtu.to_string();
    match from {
        Some(other) => {
            run(
                "ip",
                &["-n", other.name(), "link", "set", "dev", tap, "netns", ns],
            )
            .await?
        }
        None => {
            run(
                "ip",
                &["-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"],
            )
            .await?
        }
    };
    run(
        "ip",
        &["-n", ns, "link", "set", "dev", tap, "mtu", &mtu, "up"],
    )
    .await?;
    for (from, to) in [(ifname, tap), (tap, ifname)] {
        run("tc", &["-n", ns, "qdisc", "add", "dev", from, "ingress"]).await?;
        run(
            "tc",
            &[
                "-n", ns, "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all",
                "u32", "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev",
                to,
            ],
        )
        .await?;
    }
    Ok(TapLink {
        ifname: ifname.into(),
        tap: tap.into(),
        mac: info.address,
        mtu: info.mtu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mirrors_a_veth_to_a_tap() {
        let ns = Netns::new(format!("frakti-tap-{}", std::process::id()));
        ns.create().unwrap();
        let name = ns.name().to_owned();
        // A veth standing in for the CNI interface, with a known MAC and MTU.
        run(
            "ip",
            &[
                "-n",
                &name,
                "link",
                "add",
                "eth0",
                "mtu",
                "1400",
                "address",
                "02:00:00:aa:bb:cc",
                "type",
                "veth",
                "peer",
                "name",
                "peer0",
            ],
        )
        .await
        .unwrap();
        let link = setup(&ns, "eth0", "tap0").await.unwrap();
        assert_eq!((link.mac.as_str(), link.mtu), ("02:00:00:aa:bb:cc", 1400));
        let filters = run(
            "tc",
            &["-n", &name, "filter", "show", "dev", "eth0", "ingress"],
        )
        .await
        .unwrap();
        assert!(
            filters.contains("mirred") && filters.contains("tap0"),
            "{filters}"
        );
        let filters = run(
            "tc",
            &["-n", &name, "filter", "show", "dev", "tap0", "ingress"],
        )
        .await
        .unwrap();
        assert!(filters.contains("eth0"), "{filters}");
        let tap = run("ip", &["-n", &name, "-d", "link", "show", "tap0"])
            .await
            .unwrap();
        assert!(
            tap.contains("mtu 1400") && tap.contains("tun type tap"),
            "{tap}"
        );
        // A missing interface is named in the error.
        let err = setup(&ns, "eth9", "tap9").await.unwrap_err().to_string();
        assert!(err.contains("eth9"), "{err}");
        ns.remove().unwrap();
    }

    #[tokio::test]
    async fn a_tap_made_ahead_moves_into_the_pod_namespace() {
        let pool = Netns::new(format!("frakti-tap-pool-{}", std::process::id()));
        let pod = Netns::new(format!("frakti-tap-pod-{}", std::process::id()));
        pool.create().unwrap();
        pod.create().unwrap();
        create(&pool, "tap0").await.unwrap();
        run(
            "ip",
            &[
                "-n",
                pod.name(),
                "link",
                "add",
                "eth0",
                "mtu",
                "1450",
                "type",
                "veth",
                "peer",
                "name",
                "peer0",
            ],
        )
        .await
        .unwrap();
        let link = adopt(&pool, &pod, "eth0", "tap0").await.unwrap();
        assert_eq!(link.mtu, 1450);
        let moved = run("ip", &["-n", pod.name(), "-d", "link", "show", "tap0"])
            .await
            .unwrap();
        assert!(
            moved.contains("mtu 1450") && moved.contains("tun type tap"),
            "{moved}"
        );
        assert!(moved.contains("UP"), "{moved}");
        let left = run("ip", &["-n", pool.name(), "link", "show", "tap0"]).await;
        assert!(left.is_err(), "the tap left the pool's namespace: {left:?}");
        let filters = run(
            "tc",
            &["-n", pod.name(), "filter", "show", "dev", "eth0", "ingress"],
        )
        .await
        .unwrap();
        assert!(filters.contains("tap0"), "{filters}");
        // A tap that is not there is an error, not a new tap.
        let err = adopt(&pool, &pod, "eth0", "tap7")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("tap7"), "{err}");
        pool.remove().unwrap();
        pod.remove().unwrap();
    }
}
