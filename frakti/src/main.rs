//! The frakti daemon: serves the CRI on a unix socket and runs every pod
//! sandbox as its own VM, or on the host when the pod needs the node.
//!
//! It owns the configuration (file and flags), the wiring of the crates
//! (the registry of runtimes by handler, the pod networks, the servers) and
//! signal handling; it holds no pod logic of its own.

mod check;
mod config;
mod metrics;
mod probe;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use cri::proto::image_service_server::ImageServiceServer;
use cri::proto::runtime_service_server::RuntimeServiceServer;
use host::{HostRuntime, HostRuntimeConfig};
use hypervisor::{Qemu, QemuConfig};
use network::{Cni, PodNetworks};
use pods::{HostPolicy, PodRuntime, PodService, Registry, Store};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use vm::{VmRuntime, VmRuntimeConfig};

use crate::config::{Cli, Command, Config, ConfigCommand, HandlerKind};

/// The runtime handler of VM pods, and the default one.
pub(crate) const VM_HANDLER: &str = "frakti";

/// How long in-flight CRI calls may run on after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

fn main() {
    let cli = Cli::parse();
    if cli.command
        == Some(Command::Config {
            what: ConfigCommand::Default,
        })
    {
        // The defaults alone: a broken config file does not matter here.
        print!("{}", config::render(&config::defaults(), true));
        return;
    }
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("frakti: {e}");
            std::process::exit(2);
        }
    };
    if cli.version {
        print!("{}", version_text(&config));
        return;
    }
    if let Some(Command::Config { what }) = cli.command {
        match what {
            ConfigCommand::Default | ConfigCommand::Show => {
                print!("{}", config::render(&config, false));
            }
            ConfigCommand::Cni => print!("{}", network::cni::DEFAULT_CONFLIST),
        }
        return;
    }
    let vm_user = config.vm_user_ids();
    // One backend, probed once (`-sandbox` support), for every use below.
    let qemu = Arc::new(qemu(&config, vm_user.as_ref().ok().cloned().flatten()));
    if cli.command == Some(Command::Check) {
        std::process::exit(if check(&config, &qemu) { 0 } else { 1 });
    }
    if let Err(e) = vm_user {
        eprintln!("frakti: {e}");
        std::process::exit(2);
    }
    if let Err(e) = check_socket_paths(&config, &qemu) {
        eprintln!("frakti: {e}");
        std::process::exit(2);
    }
    if let Err(e) = check_handlers(&config) {
        eprintln!("frakti: {e}");
        std::process::exit(2);
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log_level))
        .with_target(false);
    match config.log_format {
        config::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        config::LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let result = runtime
        .context("start the async runtime")
        .and_then(|rt| rt.block_on(serve(config, qemu)));
    if let Err(e) = result {
        tracing::error!("{e:#}");
        eprintln!("frakti: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(config: Config, qemu: Arc<Qemu>) -> anyhow::Result<()> {
    private_dir(&config.root, None)?;
    // The socket's group must reach a socket inside the state directory.
    let socket_in_state = config.listen.parent() == Some(config.state_dir.as_path());
    private_dir(
        &config.state_dir,
        config.listen_group.filter(|_| socket_in_state),
    )?;
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let networks = PodNetworks::new(Cni::new(
        config.cni_conf_dir.clone(),
        config.cni_bin_dir.clone(),
    ));
    let default_runtime = Arc::new(vm_runtime(
        &config,
        VM_HANDLER,
        &config.default_handler(),
        qemu.clone(),
        Some(networks.clone()),
        events_tx.clone(),
    ));
    let host_runtime: Arc<HostRuntime> = Arc::new(HostRuntime::new(
        HostRuntimeConfig {
            state_dir: config.state_dir.join("host"),
            layers_dir: config.root.join("host-layers"),
            monitor: config.host_monitor.clone(),
            networks: Some(networks.clone()),
            cgroup_root: "/sys/fs/cgroup".into(),
        },
        events_tx.clone(),
    ));
    let mut registry = Registry::new(VM_HANDLER, default_runtime.clone()).with_host(HostPolicy {
        handler: config.host_handler.clone(),
        enabled: config.host_pods,
        privileged_on_host: config.privileged_pods == config::PrivilegedPods::Host,
    });
    if config.host_pods {
        registry = registry.with(config.host_handler.clone(), host_runtime.clone());
    }
    // Every VM runtime, for the metrics of their VMs.
    let mut vm_runtimes: Vec<Arc<dyn telemetry::VmSource>> = vec![default_runtime.clone()];
    for (name, handler) in &config.runtime_handlers {
        let runtime: Arc<dyn PodRuntime> = match handler.kind {
            HandlerKind::Host => host_runtime.clone(),
            HandlerKind::Vm => {
                let vms = Arc::new(
                    vm_runtime(
                        &config,
                        name,
                        handler,
                        Arc::new(qemu.for_machine(handler.machine)),
                        Some(networks.clone()),
                        events_tx.clone(),
                    )
                    .sharing_accel(&default_runtime),
                );
                vm_runtimes.push(vms.clone());
                vms
            }
        };
        tracing::info!(handler = %name, kind = ?handler.kind, machine = handler.machine.name(), "runtime handler");
        registry = registry.with(name.clone(), runtime);
    }
    let store = Store::open(&config.root).context("open the record store")?;
    let pods = PodService::new(store, registry);
    let recovered = pods.recover().await.context("load pod records")?;
    tracing::info!(recovered, "pod records loaded");
    tokio::spawn(pods.clone().watch_events(events_rx));
    // Probe the accelerator now, so the first pod does not wait for it.
    pods.warm_up();

    let hosts_dir = config.registry_config_dir.clone();
    let root = config.root.clone();
    let image_store =
        tokio::task::spawn_blocking(move || images::ImageStore::open(&root, Some(hosts_dir)))
            .await
            .context("open the image store")?
            .context("open the image store")?
            .with_pinned(config.pinned_images.clone())
            .with_max_image_size(config.max_image_size << 20);

    let streaming_server = streaming::StreamingServer::bind(
        streaming::ServerConfig {
            address: config.streaming_address,
            ..Default::default()
        },
        Arc::new(pods.stream_router()),
    )
    .await
    .context("start the streaming server")?;
    tracing::info!(url = streaming_server.base_url(), "streaming server ready");

    if let Some(address) = config.metrics_address {
        telemetry::global().register_vms(vm_runtimes.clone());
        let bound = metrics::serve(address).await?;
        tracing::info!(url = %format!("http://{bound}{}", metrics::PATH), "metrics endpoint ready");
    }

    let listener = bind(&config.listen, config.listen_group)?;
    let info = serde_json::to_value(&config).unwrap_or_default();
    let runtime_service = cri::RuntimeService::new(pods.clone(), image_store.clone(), info)
        .with_streaming(Arc::new(streaming_server));
    match pods.network_ready().await {
        Ok(()) => {}
        Err(e) => tracing::warn!("pod networking not ready: {e}"),
    }
    if let Ok(cni) = networks.cni().load() {
        tracing::info!(network = cni.name(), source = %cni.source, "CNI configuration");
    }
    tracing::info!(socket = %config.listen.display(), version = env!("CARGO_PKG_VERSION"), "frakti serving the CRI");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        // runtime.v1alpha2 calls are routed to the v1 services (kubelet 1.20–1.25).
        .layer(cri::V1alpha2Layer)
        .layer(cri::MeteredLayer)
        .add_service(RuntimeServiceServer::new(runtime_service))
        .add_service(ImageServiceServer::new(
            cri::ImageService::new(image_store).with_pods(pods.clone()),
        ))
        // Any `:authority` is accepted: many unix-socket clients send the path.
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|conn| conn.map(cri::AuthorityTolerant::new)),
            async {
                let _ = stop_rx.await;
            },
        );
    // The handlers are in place before anyone is told to send SIGTERM.
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    notify_systemd("READY=1\nSTATUS=serving the CRI");
    let stop = async {
        shutdown_signal(signals).await;
        notify_systemd("STOPPING=1");
        let _ = stop_tx.send(());
        // Connected clients get a moment to finish their calls, not forever.
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        tracing::warn!("clients still connected after {SHUTDOWN_GRACE:?}; closing anyway");
    };
    let served = tokio::select! {
        served = server => served.context("serve the CRI"),
        () = stop => Ok(()),
    };
    let _ = std::fs::remove_file(&config.listen);
    // VMs booted ahead belong to no pod: they go with the daemon.
    pods.cool_down().await;
    served?;
    tracing::info!("frakti stopped; pod VMs keep running");
    Ok(())
}

/// The runtime of VM pods for `config`, on `qemu`.
/// The VM runtime of `handler` (its guest, machine and default size).
fn vm_runtime(
    config: &Config,
    name: &str,
    handler: &config::Handler,
    qemu: Arc<Qemu>,
    networks: Option<PodNetworks>,
    events: tokio::sync::mpsc::UnboundedSender<runtime_api::RuntimeEvent>,
) -> VmRuntime {
    VmRuntime::new(
        VmRuntimeConfig {
            state_dir: config.state_dir.clone(),
            kernel: handler.kernel.clone(),
            initrd: handler.initrd.clone(),
            modules: Some(config.guest_modules.clone()).filter(|m| m.is_file()),
            default_vcpus: handler.cpu,
            default_memory_mib: handler.memory,
            accel: config.accel,
            boot_timeout: Duration::from_secs(config.boot_timeout),
            extra_cmdline: Vec::new(),
            networks,
            virtiofsd: config.virtiofsd.clone(),
            containers_dir: config.root.join("layers"),
            max_vcpus: config.max_cpu,
            max_memory_mib: config.max_memory,
            cgroup_root: Some("/sys/fs/cgroup".into()),
            handler: name.to_owned(),
            pool: handler.vm_pool.unwrap_or(0) as usize,
        },
        qemu,
        events,
    )
}

/// `frakti check`: prints one line per check; true when pods can run.
fn check(config: &Config, qemu: &Arc<Qemu>) -> bool {
    // The accelerator verdict is the daemon's own: the same probe, when
    // QEMU and the guest assets are there to run it.
    let probe = {
        use hypervisor::Hypervisor;
        qemu.check_host().is_ok() && config.guest_kernel.is_file() && config.guest_initrd.is_file()
    };
    let accel = probe
        .then(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (events, _) = tokio::sync::mpsc::unbounded_channel();
                let runtime = vm_runtime(
                    config,
                    VM_HANDLER,
                    &config.default_handler(),
                    qemu.clone(),
                    None,
                    events,
                );
                let verdict = runtime.accel().await;
                Some((verdict.accel, verdict.reason.clone()))
            })
        })
        .flatten();
    check::report(&check::host(config, qemu, accel), &mut std::io::stdout())
}

fn qemu(config: &Config, user: Option<hypervisor::VmUser>) -> Qemu {
    Qemu::new(QemuConfig {
        binary: config.qemu.clone(),
        firmware: config.qemu_firmware.clone(),
        seccomp: config.qemu_sandbox,
        machine: hypervisor::Machine::Q35,
        user,
    })
}

/// `--version`: frakti's own version and build, and what the configuration
/// would run pods with.
fn version_text(config: &Config) -> String {
    let qemu = probe::version_line(&config.qemu)
        .unwrap_or_else(|_| format!("not runnable ({})", config.qemu.display()));
    let kernel = probe::kernel_release(&config.guest_kernel).unwrap_or_else(|| "unknown".into());
    format!(
        "frakti {}\ncommit: {}\nbuilt: {}\nqemu: {qemu}\nguest kernel: {kernel} ({})\n",
        env!("CARGO_PKG_VERSION"),
        env!("FRAKTI_GIT_COMMIT"),
        env!("FRAKTI_BUILD_DATE"),
        config.guest_kernel.display()
    )
}

/// Every unix socket frakti makes must fit a `sun_path`: the CRI socket and
/// each pod's sockets under the state directory. The longest one's length.
/// Every VM handler's guest assets are there (the default handler's
/// included), and a host handler has host pods to run.
fn check_handlers(config: &Config) -> Result<(), String> {
    for (name, handler) in config.handlers() {
        if handler.kind == HandlerKind::Host {
            if !config.host_pods {
                return Err(format!(
                    "runtime handler {name:?} runs pods on the host, and host_pods = false"
                ));
            }
            continue;
        }
        for (what, path) in [("kernel", &handler.kernel), ("initramfs", &handler.initrd)] {
            if !path.is_file() {
                return Err(format!(
                    "runtime handler {name:?}: guest {what} {} not found (run `make build`, \
                     or set its path in the config)",
                    path.display()
                ));
            }
        }
    }
    Ok(())
}

fn check_socket_paths(config: &Config, qemu: &Qemu) -> Result<usize, config::ConfigError> {
    let mut checks = vec![("listen", config.listen.clone())];
    checks.extend(
        vm::pod_socket_paths(qemu, &config.state_dir)
            .into_iter()
            .chain(HostRuntimeConfig::socket_paths(
                &config.state_dir.join("host"),
            ))
            .map(|p| ("state_dir", p)),
    );
    let mut longest = 0;
    for (key, path) in checks {
        let len = path.as_os_str().len();
        longest = longest.max(len);
        if len > vm::MAX_SOCKET_PATH {
            return Err(config::ConfigError::Value {
                key,
                message: format!(
                    "the socket {} would be {len} bytes long, over the {}-byte limit of a \
                     unix socket path; choose a shorter directory",
                    path.display(),
                    vm::MAX_SOCKET_PATH
                ),
            });
        }
    }
    Ok(longest)
}

/// Creates `dir` if missing and makes it root's alone (`0700`), so that no
/// other host user reads pod records, env, volumes or sockets under it; with
/// `group`, that group may traverse it (`0710`) to reach the CRI socket.
fn private_dir(dir: &Path, group: Option<u32>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mode = if group.is_some() { 0o710 } else { 0o700 };
    own(dir, group, mode)
}

/// Gives `path` to root and `group` (root's group without one), with `mode`.
fn own(path: &Path, group: Option<u32>, mode: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(0), Some(group.unwrap_or(0)))
        .with_context(|| format!("chown {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Binds the CRI socket (`0660`, root and `group`), replacing a stale
/// socket file but never a live server.
fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another process is serving {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("remove stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    own(path, group, 0o660)?;
    Ok(listener)
}

/// Tells the service manager (systemd `Type=notify`) `state`, if it
/// started frakti with `NOTIFY_SOCKET`; a path, or `@name` for an abstract
/// socket. Failures are logged, never fatal.
fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = target.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(Path::new(&target)),
    };
    let sent = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    match sent {
        Ok(_) => tracing::debug!(state, "notified the service manager"),
        Err(e) => tracing::warn!(
            "cannot notify the service manager at {}: {e}",
            target.display()
        ),
    }
}

async fn shutdown_signal(
    signals: (
        std::io::Result<tokio::signal::unix::Signal>,
        std::io::Result<tokio::signal::unix::Signal>,
    ),
) {
    let (Ok(mut term), Ok(mut int)) = signals else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
