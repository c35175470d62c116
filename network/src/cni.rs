//! CNI: configuration loading and plugin invocation (CNI spec 0.3.0 – 1.0.0).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// How long one plugin invocation may take.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The network frakti uses when the CNI configuration directory is empty.
pub const DEFAULT_CONFLIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "frakti",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "frakti0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "10.77.0.0/16" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}"#;

/// The loopback network run for every pod, as other runtimes do.
const LOOPBACK_CONFLIST: &str =
    r#"{"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}"#;

/// A CNI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No usable network configuration
    #[error("no usable CNI configuration in {dir}: {reason}")]
    NoConfig {
        /// The configuration directory.
        dir: PathBuf,
        /// Why nothing there can be used.
        reason: String,
    },
    /// A configuration file is invalid
    #[error("invalid CNI configuration {file}: {reason}")]
    BadConfig {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A plugin binary is missing
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound {
        /// The plugin type.
        plugin: String,
        /// Where it was looked for.
        dirs: Vec<PathBuf>,
    },
    /// A plugin failed
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// The plugin's error message.
        message: String,
    },
    /// A plugin returned a result frakti cannot read
    #[error("CNI plugin {plugin} returned an unreadable result: {reason}")]
    BadResult {
        /// The plugin type.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
}

/// A loaded network configuration list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniConfig {
    /// Where it came from (a file, or the embedded default).
    pub source: String,
    /// The configuration list, as JSON.
    pub list: Value,
}

impl CniConfig {
    /// The network's name.
    pub fn name(&self) -> &str {
        self.list["name"].as_str().unwrap_or("")
    }

    fn version(&self) -> &str {
        self.list["cniVersion"].as_str().unwrap_or("0.4.0")
    }

    /// The `type` of each plugin of the list, in order.
    pub fn plugin_types(&self) -> Vec<&str> {
        self.plugins()
            .iter()
            .filter_map(|p| p["type"].as_str())
            .collect()
    }

    fn plugins(&self) -> &[Value] {
        self.list["plugins"].as_array().map_or(&[], Vec::as_slice)
    }

    fn parse(source: String, text: &str) -> Result<Self, CniError> {
        let bad = |reason: String| CniError::BadConfig {
            file: source.clone(),
            reason,
        };
        let mut value: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if value.get("plugins").is_none() {
            // A single-plugin .conf: make it a list of one.
            if value.get("type").is_none() {
                return Err(bad("neither \"plugins\" nor \"type\" is set".into()));
            }
            let name = value["name"].clone();
            let version = value["cniVersion"].clone();
            value = json!({ "cniVersion": version, "name": name, "plugins": [value] });
        }
        let config = Self {
            source: source.clone(),
            list: value,
        };
        if config.name().is_empty() {
            return Err(bad("\"name\" is missing".into()));
        }
        if config.plugins().is_empty() {
            return Err(bad("\"plugins\" is empty".into()));
        }
        for plugin in config.plugins() {
            if plugin["type"].as_str().is_none_or(str::is_empty) {
                return Err(bad("a plugin has no \"type\"".into()));
            }
        }
        Ok(config)
    }
}

/// A hostPort mapping, as the `portMappings` capability carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port on the host.
    pub host_port: i32,
    /// Port in the pod.
    pub container_port: i32,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Host address to bind, empty for all.
    #[serde(rename = "hostIP", skip_serializing_if = "String::is_empty", default)]
    pub host_ip: String,
}

/// Who the network is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The sandbox id (CNI_CONTAINERID).
    pub container_id: String,
    /// The network namespace path (CNI_NETNS).
    pub netns: PathBuf,
    /// Interface name in the namespace (CNI_IFNAME).
    pub ifname: String,
    /// Kubernetes pod namespace.
    pub pod_namespace: String,
    /// Kubernetes pod name.
    pub pod_name: String,
    /// Kubernetes pod UID.
    pub pod_uid: String,
}

impl Attachment {
    fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.pod_namespace, self.pod_name, self.container_id, self.pod_uid
        )
    }
}

/// An interface from a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// MAC address.
    #[serde(default)]
    pub mac: String,
    /// Namespace path, empty for host-side interfaces.
    #[serde(default)]
    pub sandbox: String,
}

/// An address from a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address in CIDR form.
    pub address: String,
    /// Gateway, if any.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// A route from a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination in CIDR form.
    pub dst: String,
    /// Gateway, if any.
    #[serde(default)]
    pub gw: Option<String>,
}

/// The result of a network ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CniResult {
    /// Interfaces created.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes to install.
    #[serde(default)]
    pub routes: Vec<Route>,
}

impl CniResult {
    /// Addresses without prefix length, IPv4 first.
    pub fn pod_ips(&self) -> Vec<String> {
        let mut ips: Vec<String> = self
            .ips
            .iter()
            .map(|ip| ip.address.split('/').next().unwrap_or("").to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        ips.sort_by_key(|a| a.contains(':'));
        ips
    }
}

/// The CNI configuration directory and plugin search path.
#[derive(Debug, Clone)]
pub struct Cni {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
}

impl Cni {
    /// CNI reading configuration from `conf_dir` and plugins from `bin_dirs`.
    pub fn new(conf_dir: PathBuf, bin_dirs: Vec<PathBuf>) -> Self {
        Self { conf_dir, bin_dirs }
    }

    /// The configuration in force now: the first `.conflist`/`.conf`/`.json` file
    /// by name, or the embedded default when the directory has none. Read anew
    /// on every call, so changes apply to the next pod.
    pub fn load(&self) -> Result<CniConfig, CniError> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.conf_dir) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(CniError::NoConfig {
                    dir: self.conf_dir.clone(),
                    reason: e.to_string(),
                });
            }
        };
        files.sort();
        let Some(file) = files.first() else {
            return CniConfig::parse(
                "embedded default (bridge frakti0, 10.77.0.0/16)".into(),
                DEFAULT_CONFLIST,
            );
        };
        let text = std::fs::read_to_string(file).map_err(|e| CniError::BadConfig {
            file: file.display().to_string(),
            reason: e.to_string(),
        })?;
        CniConfig::parse(file.display().to_string(), &text)
    }

    /// The built-in loopback network.
    pub fn loopback(&self) -> CniConfig {
        // The constant is valid; parse cannot fail on it.
        CniConfig::parse("loopback".into(), LOOPBACK_CONFLIST).unwrap_or(CniConfig {
            source: "loopback".into(),
            list: Value::Null,
        })
    }

    /// Whether pods can get a network now; `Err` says why not.
    pub fn status(&self) -> Result<CniConfig, CniError> {
        let config = self.load()?;
        for plugin in config.plugins() {
            self.find(plugin["type"].as_str().unwrap_or(""))?;
        }
        Ok(config)
    }

    fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        if !plugin.contains('/') {
            for dir in &self.bin_dirs {
                let path = dir.join(plugin);
                if path.is_file() {
                    return Ok(path);
                }
            }
        }
        Err(CniError::PluginNotFound {
            plugin: plugin.to_owned(),
            dirs: self.bin_dirs.clone(),
        })
    }

    /// Runs ADD through every plugin of `config`; returns the final result.
    pub async fn add(
        &self,
        config: &CniConfig,
        attachment: &Attachment,
        port_mappings: &[PortMapping],
    ) -> Result<CniResult, CniError> {
        let mut prev: Option<Value> = None;
        let mut last_plugin = String::new();
        for plugin in config.plugins() {
            let stdin = plugin_conf(config, plugin, prev.as_ref(), port_mappings);
            last_plugin = plugin["type"].as_str().unwrap_or("").to_owned();
            let out = self.invoke(&last_plugin, "ADD", attachment, &stdin).await?;
            prev = Some(out);
        }
        let raw = prev.unwrap_or(Value::Null);
        serde_json::from_value(raw).map_err(|e| CniError::BadResult {
            plugin: last_plugin,
            reason: e.to_string(),
        })
    }

    /// Runs DEL through the plugins in reverse order, with the ADD result as `prevResult`.
    pub async fn del(
        &self,
        config: &CniConfig,
        attachment: &Attachment,
        prev_result: Option<&CniResult>,
        port_mappings: &[PortMapping],
    ) -> Result<(), CniError> {
        let prev = prev_result.and_then(|r| serde_json::to_value(r).ok());
        for plugin in config.plugins().iter().rev() {
            let stdin = plugin_conf(config, plugin, prev.as_ref(), port_mappings);
            let name = plugin["type"].as_str().unwrap_or("");
            self.invoke(name, "DEL", attachment, &stdin).await?;
        }
        Ok(())
    }

    /// Runs CHECK (CNI ≥ 0.4.0) through every plugin; older configs are skipped.
    pub async fn check(
        &self,
        config: &CniConfig,
        attachment: &Attachment,
        prev_result: &CniResult,
        port_mappings: &[PortMapping],
    ) -> Result<bool, CniError> {
        if version_lt(config.version(), "0.4.0") {
            return Ok(false);
        }
        let prev = serde_json::to_value(prev_result).ok();
        for plugin in config.plugins() {
            let stdin = plugin_conf(config, plugin, prev.as_ref(), port_mappings);
            let name = plugin["type"].as_str().unwrap_or("");
            self.invoke(name, "CHECK", attachment, &stdin).await?;
        }
        Ok(true)
    }

    async fn invoke(
        &self,
        plugin: &str,
        command: &'static str,
        attachment: &Attachment,
        stdin: &Value,
    ) -> Result<Value, CniError> {
        let binary = self.find(plugin)?;
        let fail = |message: String| CniError::Plugin {
            plugin: plugin.to_owned(),
            command,
            message,
        };
        let path = std::env::join_paths(&self.bin_dirs).unwrap_or_default();
        let mut child = tokio::process::Command::new(&binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &attachment.container_id)
            .env("CNI_NETNS", &attachment.netns)
            .env("CNI_IFNAME", &attachment.ifname)
            .env("CNI_ARGS", attachment.cni_args())
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", binary.display())))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin.to_string().as_bytes())
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| fail(format!("no answer within {PLUGIN_TIMEOUT:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let msg = stdout["msg"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned());
            let details = stdout["details"].as_str().unwrap_or("");
            let message = if details.is_empty() {
                msg
            } else {
                format!("{msg}: {details}")
            };
            return Err(fail(message));
        }
        tracing::debug!(plugin, command, container = %attachment.container_id, "CNI plugin done");
        Ok(stdout)
    }
}

/// The stdin configuration of one plugin in a list.
fn plugin_conf(
    config: &CniConfig,
    plugin: &Value,
    prev: Option<&Value>,
    port_mappings: &[PortMapping],
) -> Value {
    let mut conf = plugin.clone();
    conf["name"] = config.name().into();
    conf["cniVersion"] = config.version().into();
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    let wants_ports = plugin["capabilities"]["portMappings"]
        .as_bool()
        .unwrap_or(false);
    if wants_ports && !port_mappings.is_empty() {
        conf["runtimeConfig"] = json!({ "portMappings": port_mappings });
    }
    conf
}

/// Whether dotted version `a` is older than `b`.
fn version_lt(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a) < parse(b)
}

/// Default plugin directories: the CNI convention and Debian's.
pub fn default_bin_dirs() -> Vec<PathBuf> {
    vec![
        Path::new("/opt/cni/bin").into(),
        Path::new("/usr/lib/cni").into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dir_uses_embedded_default_and_files_win_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let cni = Cni::new(dir.path().into(), default_bin_dirs());
        let c = cni.load().unwrap();
        assert_eq!(c.name(), "frakti");
        assert!(c.source.contains("embedded default"));
        std::fs::write(
            dir.path().join("20-b.conflist"),
            DEFAULT_CONFLIST.replace("\"frakti\"", "\"b\""),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10-a.conf"),
            r#"{"cniVersion":"0.4.0","name":"a","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("00-ignored.txt"), "nope").unwrap();
        let c = cni.load().unwrap();
        assert_eq!(c.name(), "a");
        assert_eq!(c.plugins().len(), 1);
        assert_eq!(c.version(), "0.4.0");
    }

    #[test]
    fn broken_config_says_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let cni = Cni::new(dir.path().into(), default_bin_dirs());
        std::fs::write(dir.path().join("10-x.conflist"), "{ not json").unwrap();
        let err = cni.load().unwrap_err().to_string();
        assert!(err.contains("10-x.conflist"), "{err}");
        std::fs::write(
            dir.path().join("10-x.conflist"),
            r#"{"name":"x","plugins":[{}]}"#,
        )
        .unwrap();
        assert!(cni.load().unwrap_err().to_string().contains("no \"type\""));
        std::fs::write(
            dir.path().join("10-x.conflist"),
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"no-such-plugin"}]}"#,
        )
        .unwrap();
        let err = cni.status().unwrap_err().to_string();
        assert!(err.contains("no-such-plugin"), "{err}");
    }

    #[test]
    fn plugin_conf_injects_name_version_prev_and_ports() {
        let config = CniConfig::parse("t".into(), DEFAULT_CONFLIST).unwrap();
        let ports = [PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }];
        let bridge = plugin_conf(&config, &config.plugins()[0], None, &ports);
        assert_eq!(bridge["name"], "frakti");
        assert!(bridge.get("runtimeConfig").is_none());
        let prev = json!({"ips": []});
        let portmap = plugin_conf(&config, &config.plugins()[1], Some(&prev), &ports);
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"][0]["containerPort"],
            80
        );
        assert!(
            portmap["runtimeConfig"]["portMappings"][0]
                .get("hostIP")
                .is_none()
        );
    }

    #[test]
    fn versions_and_ips() {
        assert!(version_lt("0.3.1", "0.4.0"));
        assert!(!version_lt("1.0.0", "0.4.0"));
        let r: CniResult = serde_json::from_value(json!({
            "ips": [{"address": "fd00::5/64"}, {"address": "10.1.0.5/16", "gateway": "10.1.0.1"}]
        }))
        .unwrap();
        assert_eq!(r.pod_ips(), vec!["10.1.0.5", "fd00::5"]);
    }
}
