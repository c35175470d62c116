//! Configuration: embedded defaults, an optional TOML file, then flags.

use std::path::{Path, PathBuf};

use clap::Parser;
use hypervisor::AccelMode;
use serde::{Deserialize, Serialize};

/// Default location of the config file.
pub const DEFAULT_CONFIG: &str = "/etc/frakti/config.toml";
/// Least memory (MiB) a pod VM may be given.
pub const MIN_MEMORY_MIB: u64 = vm::sizing::MIN_MEMORY_MIB;

/// Most VMs a handler may keep booted ahead (`vm_pool`).
pub const MAX_VM_POOL: u32 = 64;

/// frakti: a Kubernetes CRI runtime that runs every pod in its own VM.
#[derive(Debug, Parser)]
#[command(about, disable_version_flag = true)]
pub struct Cli {
    /// Print the version, git commit, build date, and the QEMU and guest
    /// kernel the configuration would use.
    #[arg(long, short = 'V')]
    pub version: bool,
    /// TOML config file; flags override its keys [default: /etc/frakti/config.toml, if present].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Unix socket to serve the CRI on.
    #[arg(long)]
    pub listen: Option<PathBuf>,
    /// Persistent data: pod records, images, container layers.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Runtime files of running pods (sockets, pidfiles, logs).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// vCPUs of a pod VM without a CPU limit.
    #[arg(long)]
    pub cpu: Option<u32>,
    /// Memory in MiB of a pod VM without a memory limit.
    #[arg(long)]
    pub memory: Option<u64>,
    /// Most vCPUs a pod VM may grow to by hot-plug [default: the host's cores].
    #[arg(long)]
    pub max_cpu: Option<u32>,
    /// Most memory in MiB a pod VM may grow to by hot-plug [default: half the host's memory].
    #[arg(long)]
    pub max_memory: Option<u64>,
    /// Accelerator: auto (probe KVM, fall back to TCG), kvm or tcg.
    #[arg(long)]
    pub accel: Option<String>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log lines as `text` or `json` (one object per line) [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// Guest kernel (uncompressed vmlinux) [default: `vmlinux` of the guest assets beside frakti].
    #[arg(long)]
    pub guest_kernel: Option<PathBuf>,
    /// Guest initramfs holding frakti-agent [default: `initramfs.img` of the guest assets beside frakti].
    #[arg(long)]
    pub guest_initrd: Option<PathBuf>,
    /// Guest kernel's module tree as an erofs image, for modules loaded on demand [default: `modules.img` of the guest assets beside frakti].
    #[arg(long)]
    pub guest_modules: Option<PathBuf>,
    /// QEMU binary.
    #[arg(long)]
    pub qemu: Option<PathBuf>,
    /// virtiofsd binary (serves each pod's shared directory).
    #[arg(long)]
    pub virtiofsd: Option<PathBuf>,
    /// Seconds a pod VM may take to boot until its agent answers.
    #[arg(long)]
    pub boot_timeout: Option<u64>,
    /// VMs each VM handler keeps booted ahead for the next pods (0: none) [default: 1].
    #[arg(long)]
    pub vm_pool: Option<u32>,
    /// CNI configuration directory; the first .conflist/.conf by name is used.
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directories (repeat the flag or separate with commas)
    /// [default: /opt/cni/bin,/usr/lib/cni].
    #[arg(long, value_delimiter = ',')]
    pub cni_bin_dir: Vec<PathBuf>,
    /// Registry hosts configuration (containerd layout: `<host>/hosts.toml`) [default: /etc/frakti/certs.d].
    #[arg(long)]
    pub registry_config_dir: Option<PathBuf>,
    /// Address of the streaming server (exec, attach, port-forward URLs); port 0 picks a free one.
    #[arg(long)]
    pub streaming_address: Option<String>,
    /// Address of the Prometheus metrics endpoint (`/metrics`), e.g.
    /// `127.0.0.1:9464` [default: off].
    #[arg(long)]
    pub metrics_address: Option<String>,
    /// Whether pods may run on the host (privileged, node namespaces, the
    /// OS-container annotation, the host handler) [default: true].
    #[arg(long)]
    pub host_pods: Option<bool>,
    /// Runtime handler name of host pods [default: host].
    #[arg(long)]
    pub host_handler: Option<String>,
    /// Where privileged pods run: `host` or `vm` (all capabilities and the guest's devices) [default: host].
    #[arg(long)]
    pub privileged_pods: Option<String>,
    /// The container monitor binary of host pods [default: frakti-monitor next to frakti].
    #[arg(long)]
    pub host_monitor: Option<PathBuf>,
    /// An image that RemoveImage must not remove (repeatable; e.g. the pause
    /// image an operator pre-pulls). Replaces the file's `pinned_images`.
    #[arg(long = "pinned-image")]
    pub pinned_images: Vec<String>,
    /// Group (name or gid) that may use the CRI socket besides root [default: none, root only].
    #[arg(long)]
    pub listen_group: Option<String>,
    /// Most MiB one image's layers may expand to (each layer, and all a pull writes) [default: 20480].
    #[arg(long)]
    pub max_image_size: Option<u64>,
    /// What to do instead of serving the CRI.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// frakti's subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Print a configuration as TOML, every key with a comment.
    Config {
        /// Which configuration.
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Diagnose whether this host can run pods with the configuration that
    /// the same flags and config file give the daemon (exit 0 if it can).
    Check,
}

/// `frakti config …`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum ConfigCommand {
    /// The defaults, as a config file frakti reads back unchanged.
    Default,
    /// The effective configuration: the defaults, the file, then the flags.
    Show,
    /// The CNI network list used when the CNI directory holds none.
    Cni,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Where privileged pods run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivilegedPods {
    /// On the host, as ordinary privileged containers.
    Host,
    /// In their VM, privileged there.
    Vm,
}

impl std::str::FromStr for PrivilegedPods {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host" => Ok(Self::Host),
            "vm" => Ok(Self::Vm),
            other => Err(format!("{other:?} is neither \"host\" nor \"vm\"")),
        }
    }
}

/// The system user `make build` and `make install` create for QEMU.
pub const DEFAULT_VM_USER: &str = "frakti-vm";

/// The host's CPU cores.
fn host_cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

/// The host's memory, MiB (`MemTotal`).
fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// The config file's keys (all optional); the same names as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<PathBuf>,
    root: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    cpu: Option<u32>,
    memory: Option<u64>,
    max_cpu: Option<u32>,
    max_memory: Option<u64>,
    accel: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    guest_kernel: Option<PathBuf>,
    guest_initrd: Option<PathBuf>,
    guest_modules: Option<PathBuf>,
    qemu: Option<PathBuf>,
    qemu_firmware: Option<PathBuf>,
    qemu_sandbox: Option<bool>,
    vm_user: Option<String>,
    virtiofsd: Option<PathBuf>,
    boot_timeout: Option<u64>,
    vm_pool: Option<u32>,
    cni_conf_dir: Option<PathBuf>,
    cni_bin_dir: Option<Vec<PathBuf>>,
    registry_config_dir: Option<PathBuf>,
    streaming_address: Option<String>,
    metrics_address: Option<String>,
    host_pods: Option<bool>,
    host_handler: Option<String>,
    privileged_pods: Option<String>,
    host_monitor: Option<PathBuf>,
    pinned_images: Option<Vec<String>>,
    listen_group: Option<GroupKey>,
    max_image_size: Option<u64>,
    runtime_handlers: Option<std::collections::BTreeMap<String, handlers::HandlerFile>>,
}

/// A group in the config file: a name, or a gid as a number or a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum GroupKey {
    Gid(u32),
    Name(String),
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// CRI socket.
    pub listen: PathBuf,
    /// Persistent data directory.
    pub root: PathBuf,
    /// Runtime state directory.
    pub state_dir: PathBuf,
    /// Default vCPUs.
    pub cpu: u32,
    /// Default memory, MiB.
    pub memory: u64,
    /// Most vCPUs of a pod VM.
    pub max_cpu: u32,
    /// Most memory of a pod VM, MiB.
    pub max_memory: u64,
    /// Accelerator policy.
    pub accel: AccelMode,
    /// Log filter.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Guest kernel.
    pub guest_kernel: PathBuf,
    /// Guest initramfs.
    pub guest_initrd: PathBuf,
    /// Guest kernel's module tree (erofs image).
    pub guest_modules: PathBuf,
    /// QEMU binary.
    pub qemu: PathBuf,
    /// QEMU firmware (qboot).
    pub qemu_firmware: PathBuf,
    /// Confine QEMU with its seccomp sandbox.
    pub qemu_sandbox: bool,
    /// The user QEMU runs as (`root` to keep it root).
    pub vm_user: String,
    /// virtiofsd binary.
    pub virtiofsd: PathBuf,
    /// Boot timeout, seconds.
    pub boot_timeout: u64,
    /// Warm VMs the default handler keeps (a table handler's default too).
    pub vm_pool: u32,
    /// CNI configuration directory.
    pub cni_conf_dir: PathBuf,
    /// CNI plugin directories.
    pub cni_bin_dir: Vec<PathBuf>,
    /// Registry hosts configuration directory (mirrors, TLS, plain HTTP).
    pub registry_config_dir: PathBuf,
    /// Streaming server address.
    pub streaming_address: std::net::SocketAddr,
    /// Prometheus endpoint address, if it is served.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Pods may run on the host.
    pub host_pods: bool,
    /// Runtime handler of host pods.
    pub host_handler: String,
    /// Where privileged pods run.
    pub privileged_pods: PrivilegedPods,
    /// The container monitor of host pods.
    pub host_monitor: PathBuf,
    /// Images RemoveImage must not remove (reported as pinned).
    pub pinned_images: Vec<String>,
    /// The group that may use the CRI socket besides root (a gid).
    pub listen_group: Option<u32>,
    /// Most MiB one image's layers may expand to.
    pub max_image_size: u64,
    /// The runtime handlers of the `[runtime_handlers.<name>]` tables.
    pub runtime_handlers: std::collections::BTreeMap<String, Handler>,
}

/// The configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The config file is not valid TOML for frakti
    #[error("invalid config file {0}: {1}")]
    Parse(PathBuf, String),
    /// A key has an unusable value
    #[error("invalid config: key `{key}`: {message}")]
    Value {
        /// The key (same name as the flag).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// The user QEMU runs as: `vm_user` with its primary group and, when the
    /// host has one, the `kvm` group; `None` for root.
    pub fn vm_user_ids(&self) -> Result<Option<hypervisor::VmUser>, ConfigError> {
        let name = &self.vm_user;
        let err = |message: String| ConfigError::Value {
            key: "vm_user",
            message,
        };
        let user = match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => user,
            Ok(None) => {
                return Err(err(format!(
                    "no user {name:?} on this host; `make build` or `make install` creates \
                     {DEFAULT_VM_USER} (useradd --system --no-create-home --shell \
                     /usr/sbin/nologin {name}), or set vm_user = \"root\" to run QEMU as root"
                )));
            }
            Err(e) => return Err(err(format!("cannot look up user {name:?}: {e}"))),
        };
        if user.uid.is_root() {
            return Ok(None);
        }
        let groups = match nix::unistd::Group::from_name("kvm") {
            Ok(Some(kvm)) => vec![kvm.gid.as_raw()],
            _ => Vec::new(),
        };
        let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
        Ok(Some(hypervisor::VmUser {
            name: name.clone(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
            uid_range: subordinate_ids(&subuid, name, user.uid.as_raw()),
        }))
    }
}

/// The first subordinate uid of `name` (or of its `uid`) in the
/// `/etc/subuid` text `subuid`, and how many there are: the first range listed.
fn subordinate_ids(subuid: &str, name: &str, uid: u32) -> Option<(u32, u32)> {
    subuid.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let owner = fields.next()?;
        if owner != name && owner.parse::<u32>().ok() != Some(uid) {
            return None;
        }
        let first: u32 = fields.next()?.parse().ok()?;
        let count: u32 = fields.next()?.parse().ok()?;
        // A range reaching past the largest uid (-1 is no uid) is not one.
        (count > 0 && first.checked_add(count).is_some()).then_some((first, count))
    })
}

/// The gid of group `group` (a name in the group database, or a number).
fn gid_of(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group named {group:?}")),
        Err(e) => Err(format!("cannot look up group {group:?}: {e}")),
    }
}

/// The socket address `text` of key `key`.
fn address(key: &'static str, text: &str) -> Result<std::net::SocketAddr, ConfigError> {
    text.parse()
        .map_err(|e| invalid(key, format!("{text:?} is not an address with a port: {e}")))
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key,
        message: message.into(),
    }
}

impl Config {
    /// Merges defaults, the config file (explicit, or the default one if present) and flags.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => read_file(Path::new(DEFAULT_CONFIG))?,
            None => FileConfig::default(),
        };
        Self::merge(cli, file)
    }

    fn merge(cli: &Cli, mut file: FileConfig) -> Result<Self, ConfigError> {
        let handler_table = file.runtime_handlers.take().unwrap_or_default();
        let guest_dir = default_guest_dir();
        let accel = cli
            .accel
            .clone()
            .or(file.accel)
            .unwrap_or_else(|| "auto".into());
        let mut config = Self {
            listen: cli
                .listen
                .clone()
                .or(file.listen)
                .unwrap_or_else(|| "/run/frakti/frakti.sock".into()),
            root: cli
                .root
                .clone()
                .or(file.root)
                .unwrap_or_else(|| "/var/lib/frakti".into()),
            state_dir: cli
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| "/run/frakti".into()),
            cpu: cli.cpu.or(file.cpu).unwrap_or(1),
            memory: cli.memory.or(file.memory).unwrap_or(512),
            max_cpu: cli
                .max_cpu
                .or(file.max_cpu)
                .unwrap_or_else(|| host_cores().max(cli.cpu.or(file.cpu).unwrap_or(1))),
            max_memory: cli.max_memory.or(file.max_memory).unwrap_or_else(|| {
                (host_memory_mib() / 2).max(cli.memory.or(file.memory).unwrap_or(512))
            }),
            accel: accel.parse().map_err(|e: String| invalid("accel", e))?,
            log_level: cli
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            log_format: match cli.log_format.clone().or(file.log_format).as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(invalid(
                        "log_format",
                        format!("{other:?} is neither text nor json"),
                    ));
                }
            },
            guest_kernel: cli
                .guest_kernel
                .clone()
                .or(file.guest_kernel)
                .unwrap_or_else(|| guest_dir.join("vmlinux")),
            guest_initrd: cli
                .guest_initrd
                .clone()
                .or(file.guest_initrd)
                .unwrap_or_else(|| guest_dir.join("initramfs.img")),
            guest_modules: cli
                .guest_modules
                .clone()
                .or(file.guest_modules)
                .unwrap_or_else(|| guest_dir.join("modules.img")),
            qemu: cli
                .qemu
                .clone()
                .or(file.qemu)
                .unwrap_or_else(|| "/usr/bin/qemu-system-x86_64".into()),
            qemu_firmware: file
                .qemu_firmware
                .unwrap_or_else(|| "/usr/share/qemu/qboot.rom".into()),
            qemu_sandbox: file.qemu_sandbox.unwrap_or(true),
            vm_user: file.vm_user.unwrap_or_else(|| DEFAULT_VM_USER.into()),
            virtiofsd: cli
                .virtiofsd
                .clone()
                .or(file.virtiofsd)
                .unwrap_or_else(|| "/usr/lib/qemu/virtiofsd".into()),
            boot_timeout: cli.boot_timeout.or(file.boot_timeout).unwrap_or(60),
            vm_pool: cli.vm_pool.or(file.vm_pool).unwrap_or(1),
            cni_conf_dir: cli
                .cni_conf_dir
                .clone()
                .or(file.cni_conf_dir)
                .unwrap_or_else(|| "/etc/cni/net.d".into()),
            cni_bin_dir: Some(cli.cni_bin_dir.clone())
                .filter(|d| !d.is_empty())
                .or(file.cni_bin_dir)
                .unwrap_or_else(network::cni::default_bin_dirs),
            registry_config_dir: cli
                .registry_config_dir
                .clone()
                .or(file.registry_config_dir)
                .unwrap_or_else(|| "/etc/frakti/certs.d".into()),
            streaming_address: address(
                "streaming_address",
                &cli.streaming_address
                    .clone()
                    .or(file.streaming_address)
                    .unwrap_or_else(|| "127.0.0.1:0".into()),
            )?,
            metrics_address: match cli.metrics_address.clone().or(file.metrics_address) {
                None => None,
                Some(text) if text.is_empty() => None,
                Some(text) => Some(address("metrics_address", &text)?),
            },
            host_pods: cli.host_pods.or(file.host_pods).unwrap_or(true),
            host_handler: cli
                .host_handler
                .clone()
                .or(file.host_handler)
                .unwrap_or_else(|| "host".into()),
            privileged_pods: cli
                .privileged_pods
                .clone()
                .or(file.privileged_pods)
                .unwrap_or_else(|| "host".into())
                .parse()
                .map_err(|e: String| invalid("privileged_pods", e))?,
            host_monitor: cli
                .host_monitor
                .clone()
                .or(file.host_monitor)
                .unwrap_or_else(default_monitor),
            pinned_images: if cli.pinned_images.is_empty() {
                file.pinned_images.unwrap_or_default()
            } else {
                cli.pinned_images.clone()
            },
            max_image_size: cli
                .max_image_size
                .or(file.max_image_size)
                .unwrap_or(images::DEFAULT_MAX_IMAGE_SIZE >> 20),
            listen_group: match cli
                .listen_group
                .clone()
                .or(file.listen_group.map(|g| match g {
                    GroupKey::Gid(gid) => gid.to_string(),
                    GroupKey::Name(name) => name,
                })) {
                // An empty group is none: the socket stays root's.
                None => None,
                Some(group) if group.is_empty() => None,
                Some(group) => Some(gid_of(&group).map_err(|e| invalid("listen_group", e))?),
            },
            runtime_handlers: std::collections::BTreeMap::new(),
        };
        config.runtime_handlers = handlers::resolve(
            handler_table,
            &handlers::Defaults {
                kernel: &config.guest_kernel,
                initrd: &config.guest_initrd,
                cpu: config.cpu,
                memory: config.memory,
                vm_pool: config.vm_pool,
                reserved: [crate::VM_HANDLER, &config.host_handler],
            },
        )?;
        config.validate()?;
        Ok(config)
    }

    /// The default VM handler (`""`, alias `frakti`): the top-level keys.
    pub fn default_handler(&self) -> Handler {
        Handler {
            kind: HandlerKind::Vm,
            kernel: self.guest_kernel.clone(),
            initrd: self.guest_initrd.clone(),
            machine: hypervisor::Machine::Q35,
            cpu: self.cpu,
            memory: self.memory,
            overhead_memory: 0,
            overhead_cpu: 0,
            vm_pool: Some(self.vm_pool),
        }
    }

    /// Every handler: the default VM one (as `frakti`), then the table's.
    pub fn handlers(&self) -> Vec<(String, Handler)> {
        std::iter::once((crate::VM_HANDLER.to_owned(), self.default_handler()))
            .chain(
                self.runtime_handlers
                    .iter()
                    .map(|(name, h)| (name.clone(), h.clone())),
            )
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.cpu == 0 || self.cpu > 255 {
            return Err(invalid(
                "cpu",
                format!("{} is not between 1 and 255", self.cpu),
            ));
        }
        if self.memory < MIN_MEMORY_MIB {
            return Err(invalid(
                "memory",
                format!(
                    "{} MiB is below the {MIN_MEMORY_MIB} MiB a guest needs",
                    self.memory
                ),
            ));
        }
        if self.max_image_size == 0 || self.max_image_size > u64::MAX >> 20 {
            return Err(invalid(
                "max_image_size",
                format!(
                    "{} MiB is not a size an image can have",
                    self.max_image_size
                ),
            ));
        }
        if self.max_cpu < self.cpu {
            return Err(invalid(
                "max_cpu",
                format!("{} is below cpu ({})", self.max_cpu, self.cpu),
            ));
        }
        if self.max_memory < self.memory {
            return Err(invalid(
                "max_memory",
                format!(
                    "{} MiB is below memory ({} MiB)",
                    self.max_memory, self.memory
                ),
            ));
        }
        if self.host_handler.is_empty() || self.host_handler == crate::VM_HANDLER {
            return Err(invalid(
                "host_handler",
                format!(
                    "{:?} is the VM pods' handler; host pods need a name of their own",
                    self.host_handler
                ),
            ));
        }
        if self.vm_pool > MAX_VM_POOL {
            return Err(invalid(
                "vm_pool",
                format!(
                    "{} is more than {MAX_VM_POOL} VMs booted ahead",
                    self.vm_pool
                ),
            ));
        }
        if self.boot_timeout == 0 {
            return Err(invalid("boot_timeout", "must be at least 1 second"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| invalid("log_level", format!("{:?}: {e}", self.log_level)))?;
        for (key, path) in [
            ("listen", &self.listen),
            ("root", &self.root),
            ("state_dir", &self.state_dir),
            ("registry_config_dir", &self.registry_config_dir),
        ] {
            if !path.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{} is not an absolute path", path.display()),
                ));
            }
        }
        Ok(())
    }
}

/// `frakti-monitor` next to the running binary, else the installed one.
fn default_monitor() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("frakti-monitor")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "/usr/local/bin/frakti-monitor".into())
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e.to_string()))
}

/// Where the guest assets are, relative to the binary: `target/guest` beside
/// a build-tree `target/release/frakti`, `../share/frakti/guest` of an
/// installed one (wherever a `DESTDIR` put it), else `/usr/share/frakti/guest`.
fn default_guest_dir() -> PathBuf {
    let installed = PathBuf::from("/usr/share/frakti/guest");
    let Ok(exe) = std::env::current_exe() else {
        return installed;
    };
    let Some(bin_dir) = exe.parent() else {
        return installed;
    };
    [
        bin_dir.join("../guest"),
        bin_dir.join("../share/frakti/guest"),
    ]
    .into_iter()
    .find(|d| d.join("vmlinux").exists())
    .map(|d| d.canonicalize().unwrap_or(d))
    .unwrap_or(installed)
}

mod handlers;
mod render;
pub use handlers::{Handler, HandlerKind};

pub use render::{defaults, render};

#[cfg(test)]
mod tests;
