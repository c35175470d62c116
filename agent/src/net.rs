//! Guest network configuration over rtnetlink.

use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_api::messages::AgentErrorKind;
use agent_api::{AgentError, NetInterface, NetRoute};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// How long an interface may take to appear (its driver loads in the background).
const LINK_WAIT: Duration = Duration::from_secs(20);

fn internal(message: String) -> AgentError {
    AgentError::new(AgentErrorKind::Internal, message)
}

fn invalid(message: String) -> AgentError {
    AgentError::new(AgentErrorKind::InvalidArgument, message)
}

/// Parses `addr/prefix`.
fn cidr(text: &str) -> Result<(IpAddr, u8), AgentError> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| invalid(format!("{text:?} is not CIDR")))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| invalid(format!("bad address in {text:?}")))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| invalid(format!("bad prefix in {text:?}")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(invalid(format!("prefix too long in {text:?}")));
    }
    Ok((addr, prefix))
}

/// The name and index of the interface with `mac`, waiting for it to appear.
async fn link_by_mac(mac: &str) -> Result<(String, u32), AgentError> {
    let deadline = Instant::now() + LINK_WAIT;
    let want = mac.to_ascii_lowercase();
    loop {
        if let Ok(entries) = fs::read_dir("/sys/class/net") {
            for entry in entries.flatten() {
                let dir = entry.path();
                let address = fs::read_to_string(dir.join("address")).unwrap_or_default();
                if address.trim() == want {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    return Ok((name, read_index(&dir)?));
                }
            }
        }
        if Instant::now() > deadline {
            return Err(AgentError::new(
                AgentErrorKind::NotFound,
                format!("no network interface with MAC {mac} after {LINK_WAIT:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_index(dir: &Path) -> Result<u32, AgentError> {
    fs::read_to_string(dir.join("ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| internal(format!("cannot read {}/ifindex", dir.display())))
}

/// Treats "already exists" as success, so configuration can be repeated.
fn tolerate_exists(result: Result<(), rtnetlink::Error>, what: &str) -> Result<(), AgentError> {
    match result {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(internal(format!("{what}: {e}"))),
    }
}

/// Brings up `lo`, configures each interface, then adds the routes.
pub async fn configure(interfaces: &[NetInterface], routes: &[NetRoute]) -> Result<(), AgentError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| internal(format!("netlink: {e}")))?;
    let task = tokio::spawn(connection);
    let result = apply(&handle, interfaces, routes).await;
    task.abort();
    result
}

async fn apply(
    handle: &Handle,
    interfaces: &[NetInterface],
    routes: &[NetRoute],
) -> Result<(), AgentError> {
    let lo = read_index(Path::new("/sys/class/net/lo"))?;
    set_link(handle, lo, None).await?;
    for iface in interfaces {
        let (name, index, renamed) = match &iface.current_mac {
            Some(current) if !current.eq_ignore_ascii_case(&iface.mac) => {
                let (name, index) = link_by_mac(current).await?;
                set_address(handle, index, &iface.mac).await?;
                (name, index, true)
            }
            _ => {
                let (name, index) = link_by_mac(&iface.mac).await?;
                (name, index, false)
            }
        };
        let ipv6 = format!("/proc/sys/net/ipv6/conf/{name}");
        // The addresses were allocated by IPAM and are unique: skip duplicate
        // address detection, so IPv6 addresses work at once, as on other runtimes.
        let _ = fs::write(format!("{ipv6}/accept_dad"), "0");
        if renamed {
            // The link-local address was made from the old MAC: IPv6 off
            // and on again drops it and makes the new MAC's.
            let _ = fs::write(format!("{ipv6}/disable_ipv6"), "1");
            let _ = fs::write(format!("{ipv6}/disable_ipv6"), "0");
        }
        set_link(handle, index, Some(iface.mtu)).await?;
        for address in &iface.addresses {
            let (ip, prefix) = cidr(address)?;
            let added = handle.address().add(index, ip, prefix).execute().await;
            tolerate_exists(added, &format!("add address {address}"))?;
        }
    }
    for route in routes {
        let (dst, prefix) = cidr(&route.destination)?;
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst, prefix)
            .map_err(|e| invalid(format!("route {}: {e}", route.destination)))?;
        if let Some(gw) = &route.gateway {
            let gw: IpAddr = gw
                .parse()
                .map_err(|_| invalid(format!("bad gateway {gw:?}")))?;
            builder = builder
                .gateway(gw)
                .map_err(|e| invalid(format!("gateway {gw}: {e}")))?;
        }
        let added = handle.route().add(builder.build()).execute().await;
        tolerate_exists(added, &format!("add route {}", route.destination))?;
    }
    tracing::info!(
        interfaces = interfaces.len(),
        routes = routes.len(),
        "network configured"
    );
    Ok(())
}

/// Gives link `index` the MAC address `mac` (`aa:bb:cc:dd:ee:ff`).
async fn set_address(handle: &Handle, index: u32, mac: &str) -> Result<(), AgentError> {
    let bytes = parse_mac(mac)?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).address(bytes).build())
        .execute()
        .await
        .map_err(|e| internal(format!("set the MAC of link {index} to {mac}: {e}")))
}

/// The six bytes of a MAC address written `aa:bb:cc:dd:ee:ff`.
fn parse_mac(mac: &str) -> Result<Vec<u8>, AgentError> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| invalid(format!("bad MAC address {mac:?}")))?;
    if bytes.len() != 6 || mac.split(':').any(|b| b.len() != 2) {
        return Err(invalid(format!("bad MAC address {mac:?}")));
    }
    Ok(bytes)
}

async fn set_link(handle: &Handle, index: u32, mtu: Option<u32>) -> Result<(), AgentError> {
    let mut link = LinkUnspec::new_with_index(index).up();
    if let Some(mtu) = mtu {
        link = link.mtu(mtu);
    }
    handle
        .link()
        .set(link.build())
        .execute()
        .await
        .map_err(|e| internal(format!("set link {index} up: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("aa:c6:88:7A:b0:1d").unwrap(),
            vec![0xaa, 0xc6, 0x88, 0x7a, 0xb0, 0x1d]
        );
        for bad in [
            "",
            "aa:bb",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:zz",
            "a:bb:cc:dd:ee:ff0",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_cidr() {
        assert_eq!(
            cidr("10.0.0.5/16").unwrap(),
            ("10.0.0.5".parse().unwrap(), 16)
        );
        assert_eq!(cidr("fd00::1/64").unwrap().1, 64);
        assert!(cidr("10.0.0.5").is_err());
        assert!(cidr("10.0.0.5/33").is_err());
        assert!(cidr("x/8").is_err());
    }
}
