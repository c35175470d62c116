//! A pod's `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`, written once
//! per pod into a directory every container of the pod bind-mounts them from.
//!
//! A pod in a network namespace of its own gets a `hosts` naming its IPs and
//! its own hostname; a pod in the node's network namespace (host network)
//! gets the node's `hosts` and hostname, as kubelet and containerd do it.
//! Either way `resolv.conf` is the pod's DNS config when it has one, else
//! the node's.

use std::path::{Path, PathBuf};

use runtime_api::sandbox::SandboxConfig;

/// The node's hosts file, copied for host-network pods.
const HOST_HOSTS: &str = "/etc/hosts";
/// The node's resolver config, copied for pods without DNS settings.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The `hosts` of a pod in a network namespace of its own, before its IPs.
const POD_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n";

/// Where [`write`] put the pod's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFiles {
    /// The pod's `/etc/hosts`.
    pub hosts: PathBuf,
    /// The pod's `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// The pod's `/etc/hostname`.
    pub hostname: PathBuf,
}

/// Writes the pod's `hosts`, `resolv.conf` and `hostname` into `dir`
/// (created if missing). `ips` are the pod's IPs, named by its hostname in
/// `hosts`; `host_network` says the pod lives in the node's network
/// namespace, so it gets the node's `hosts` and hostname instead.
pub fn write(
    dir: &Path,
    config: &SandboxConfig,
    ips: &[String],
    host_network: bool,
) -> std::io::Result<PodFiles> {
    std::fs::create_dir_all(dir)?;
    let files = PodFiles {
        hosts: dir.join("hosts"),
        resolv_conf: dir.join("resolv.conf"),
        hostname: dir.join("hostname"),
    };
    let (hosts, hostname) = if host_network {
        let hosts = std::fs::read(HOST_HOSTS)?;
        let hostname = nix::unistd::gethostname()?
            .into_string()
            .map_err(|_| std::io::Error::other("the node's hostname is not UTF-8"))?;
        (hosts, hostname)
    } else {
        let hostname = pod_hostname(config);
        let mut hosts = String::from(POD_HOSTS);
        for ip in ips {
            hosts.push_str(&format!("{ip}\t{hostname}\n"));
        }
        (hosts.into_bytes(), hostname)
    };
    std::fs::write(&files.hosts, hosts)?;
    std::fs::write(&files.hostname, format!("{hostname}\n"))?;
    std::fs::write(&files.resolv_conf, resolv_conf(config))?;
    Ok(files)
}

/// The pod's hostname: the one asked for, else the pod's name.
pub fn pod_hostname(config: &SandboxConfig) -> String {
    if config.hostname.is_empty() {
        config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default()
    } else {
        config.hostname.clone()
    }
}

/// The pod's `resolv.conf`: from its DNS config, or the node's without one.
fn resolv_conf(config: &SandboxConfig) -> String {
    let dns = &config.dns;
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        // As other runtimes do: without DNS settings the pod gets the node's.
        return std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default();
    }
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_follows_the_pod_dns_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SandboxConfig {
            hostname: "web-0".into(),
            ..Default::default()
        };
        config.dns.servers = vec!["10.96.0.10".into()];
        config.dns.searches = vec!["ns.svc.cluster.local".into(), "cluster.local".into()];
        config.dns.options = vec!["ndots:5".into()];
        let sandbox = dir.path().join("sandbox");
        let files = write(&sandbox, &config, &["10.77.0.5".into()], false).unwrap();
        assert_eq!(
            files,
            PodFiles {
                hosts: sandbox.join("hosts"),
                resolv_conf: sandbox.join("resolv.conf"),
                hostname: sandbox.join("hostname"),
            }
        );
        let resolv = std::fs::read_to_string(&files.resolv_conf).unwrap();
        assert_eq!(
            resolv,
            "search ns.svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        let hosts = std::fs::read_to_string(&files.hosts).unwrap();
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(hosts.contains("10.77.0.5\tweb-0\n"));
        assert_eq!(std::fs::read_to_string(&files.hostname).unwrap(), "web-0\n");
    }

    #[test]
    fn a_host_network_pod_gets_the_nodes_hosts_and_hostname() {
        let dir = tempfile::tempdir().unwrap();
        let config = SandboxConfig {
            hostname: "ignored".into(),
            ..Default::default()
        };
        let files = write(dir.path(), &config, &["10.77.0.5".into()], true).unwrap();
        assert_eq!(
            std::fs::read(&files.hosts).unwrap(),
            std::fs::read("/etc/hosts").unwrap()
        );
        let node = nix::unistd::gethostname().unwrap();
        assert_eq!(
            std::fs::read_to_string(&files.hostname).unwrap(),
            format!("{}\n", node.to_str().unwrap())
        );
        // Without DNS settings: the node's resolver config.
        assert_eq!(
            std::fs::read_to_string(&files.resolv_conf).unwrap(),
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
        );
    }
}
