use super::*;

fn cli(args: &[&str]) -> Cli {
    Cli::parse_from(std::iter::once("frakti").chain(args.iter().copied()))
}

fn file(text: &str) -> FileConfig {
    toml::from_str(text).unwrap()
}

#[test]
fn defaults() {
    let c = Config::merge(&cli(&[]), FileConfig::default()).unwrap();
    assert_eq!(c.listen, PathBuf::from("/run/frakti/frakti.sock"));
    assert_eq!(c.root, PathBuf::from("/var/lib/frakti"));
    assert_eq!(c.state_dir, PathBuf::from("/run/frakti"));
    assert_eq!((c.cpu, c.memory, c.accel), (1, 512, AccelMode::Auto));
    assert_eq!(c.registry_config_dir, PathBuf::from("/etc/frakti/certs.d"));
    assert_eq!(c.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
    assert_eq!(
        c.cni_bin_dir,
        [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
    );
}

#[test]
fn cni_bin_dir_is_a_list() {
    let c = Config::merge(
        &cli(&["--cni-bin-dir", "/a,/b", "--cni-bin-dir", "/c"]),
        FileConfig::default(),
    );
    assert_eq!(
        c.unwrap().cni_bin_dir,
        [PathBuf::from("/a"), "/b".into(), "/c".into()]
    );
    let f = file("cni_bin_dir = [\"/x\"]\ncni_conf_dir = \"/etc/x\"\n");
    let c = Config::merge(&cli(&[]), f).unwrap();
    assert_eq!(
        (c.cni_bin_dir, c.cni_conf_dir),
        (vec![PathBuf::from("/x")], PathBuf::from("/etc/x"))
    );
}

#[test]
fn registry_config_dir_from_file_and_flag() {
    let f = file("registry_config_dir = \"/srv/certs.d\"\n");
    let c = Config::merge(&cli(&[]), f).unwrap();
    assert_eq!(c.registry_config_dir, PathBuf::from("/srv/certs.d"));
    let f = file("registry_config_dir = \"/srv/certs.d\"\n");
    let c = Config::merge(&cli(&["--registry-config-dir", "/x"]), f).unwrap();
    assert_eq!(c.registry_config_dir, PathBuf::from("/x"));
    let err = Config::merge(
        &cli(&["--registry-config-dir", "rel"]),
        FileConfig::default(),
    );
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("key `registry_config_dir`")
    );
}

#[test]
fn the_metrics_endpoint_is_off_unless_an_address_is_given() {
    let none = Config::merge(&cli(&[]), FileConfig::default()).unwrap();
    assert_eq!(none.metrics_address, None);
    let f = file("metrics_address = \"127.0.0.1:9464\"\n");
    let c = Config::merge(&cli(&[]), f).unwrap();
    assert_eq!(c.metrics_address, Some("127.0.0.1:9464".parse().unwrap()));
    let f = file("metrics_address = \"127.0.0.1:9464\"\n");
    let c = Config::merge(&cli(&["--metrics-address", ""]), f).unwrap();
    assert_eq!(c.metrics_address, None, "an empty flag turns it off");
    let err = Config::merge(
        &cli(&["--metrics-address", "localhost"]),
        FileConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("metrics_address"), "{err}");
}

#[test]
fn pinned_images_from_the_file_or_the_flags() {
    let none = Config::merge(&cli(&[]), FileConfig::default()).unwrap();
    assert!(none.pinned_images.is_empty());
    let f = file("pinned_images = [\"registry.k8s.io/pause:3.10\"]\n");
    let c = Config::merge(&cli(&[]), f).unwrap();
    assert_eq!(c.pinned_images, vec!["registry.k8s.io/pause:3.10"]);
    let f = file("pinned_images = [\"a\"]\n");
    let c = Config::merge(&cli(&["--pinned-image", "b", "--pinned-image", "c"]), f).unwrap();
    assert_eq!(c.pinned_images, vec!["b", "c"]);
}

#[test]
fn log_format_text_or_json() {
    let c = Config::merge(&cli(&[]), FileConfig::default()).unwrap();
    assert_eq!(c.log_format, LogFormat::Text);
    let c = Config::merge(&cli(&[]), file("log_format = \"json\"\n")).unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
    let err = Config::merge(&cli(&["--log-format", "xml"]), FileConfig::default()).unwrap_err();
    assert!(err.to_string().contains("key `log_format`"), "{err}");
}

#[test]
fn max_image_size_in_mib() {
    let c = Config::merge(&cli(&[]), FileConfig::default()).unwrap();
    assert_eq!(c.max_image_size, 20480);
    let c = Config::merge(
        &cli(&["--max-image-size", "64"]),
        file("max_image_size = 8\n"),
    )
    .unwrap();
    assert_eq!(c.max_image_size, 64);
    let err = Config::merge(&cli(&["--max-image-size", "0"]), FileConfig::default()).unwrap_err();
    assert!(err.to_string().contains("key `max_image_size`"), "{err}");
}

#[test]
fn listen_group_by_name_or_gid() {
    let c = Config::merge(&cli(&[]), FileConfig::default()).unwrap();
    assert_eq!(c.listen_group, None);
    let c = Config::merge(&cli(&[]), file("listen_group = \"root\"\n")).unwrap();
    assert_eq!(c.listen_group, Some(0));
    let c = Config::merge(&cli(&["--listen-group", "4242"]), FileConfig::default()).unwrap();
    assert_eq!(c.listen_group, Some(4242));
    let err = Config::merge(
        &cli(&["--listen-group", "no-such-group"]),
        FileConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("key `listen_group`") && err.contains("no-such-group"),
        "{err}"
    );
}

#[test]
fn streaming_address() {
    let c = Config::merge(&cli(&[]), FileConfig::default()).unwrap();
    assert_eq!(c.streaming_address.to_string(), "127.0.0.1:0");
    let f = file("streaming_address = \"0.0.0.0:10010\"\n");
    let c = Config::merge(&cli(&[]), f).unwrap();
    assert_eq!(c.streaming_address.to_string(), "0.0.0.0:10010");
    let f = file("streaming_address = \"0.0.0.0:10010\"\n");
    let c = Config::merge(&cli(&["--streaming-address", "[::1]:7"]), f).unwrap();
    assert_eq!(c.streaming_address.to_string(), "[::1]:7");
    let err = Config::merge(
        &cli(&["--streaming-address", "localhost"]),
        FileConfig::default(),
    );
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("key `streaming_address`")
    );
}

#[test]
fn host_pod_keys() {
    let c = Config::merge(&cli(&[]), FileConfig::default()).unwrap();
    assert!(c.host_pods);
    assert_eq!(c.host_handler, "host");
    assert_eq!(c.privileged_pods, PrivilegedPods::Host);
    let f = file("host_pods = false\nhost_handler = \"node\"\nprivileged_pods = \"vm\"\n");
    let c = Config::merge(&cli(&[]), f).unwrap();
    assert!(!c.host_pods);
    assert_eq!(c.host_handler, "node");
    assert_eq!(c.privileged_pods, PrivilegedPods::Vm);
    let c = Config::merge(&cli(&["--host-pods", "false"]), FileConfig::default()).unwrap();
    assert!(!c.host_pods);
    let err =
        Config::merge(&cli(&["--privileged-pods", "maybe"]), FileConfig::default()).unwrap_err();
    assert!(err.to_string().contains("key `privileged_pods`"), "{err}");
    let err =
        Config::merge(&cli(&["--host-handler", "frakti"]), FileConfig::default()).unwrap_err();
    assert!(err.to_string().contains("key `host_handler`"), "{err}");
}

#[test]
fn flags_override_file() {
    let f = file("cpu = 2\nmemory = 1024\naccel = \"kvm\"\nroot = \"/srv/frakti\"\n");
    let c = Config::merge(&cli(&["--cpu", "3", "--accel", "tcg"]), f).unwrap();
    assert_eq!((c.cpu, c.memory, c.accel), (3, 1024, AccelMode::Tcg));
    assert_eq!(c.root, PathBuf::from("/srv/frakti"));
}

#[test]
fn the_maximum_a_vm_grows_to_is_at_least_its_default_size() {
    let c = Config::merge(&cli(&["--cpu", "300"]), FileConfig::default());
    assert!(c.is_err(), "cpu is checked first");
    let c = Config::merge(
        &cli(&["--cpu", "64", "--memory", "1048576"]),
        FileConfig::default(),
    )
    .unwrap();
    assert_eq!((c.max_cpu, c.max_memory), (64, 1_048_576));
    let f = file("max_cpu = 1\n");
    let err = Config::merge(&cli(&["--cpu", "2"]), f)
        .unwrap_err()
        .to_string();
    assert!(err.contains("key `max_cpu`"), "{err}");
    let err = Config::merge(&cli(&["--max-memory", "256"]), FileConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("key `max_memory`"), "{err}");
}

#[test]
fn errors_name_the_key() {
    let err = Config::merge(&cli(&["--cpu", "0"]), FileConfig::default()).unwrap_err();
    assert!(err.to_string().contains("key `cpu`"), "{err}");
    let err = Config::merge(&cli(&["--memory", "16"]), FileConfig::default()).unwrap_err();
    assert!(err.to_string().contains("key `memory`"), "{err}");
    let err = Config::merge(&cli(&["--accel", "xen"]), FileConfig::default()).unwrap_err();
    assert!(err.to_string().contains("key `accel`"), "{err}");
    let err = Config::merge(&cli(&["--log-level", "info,[=bad"]), FileConfig::default());
    assert!(err.unwrap_err().to_string().contains("key `log_level`"));
    let err = Config::merge(&cli(&["--root", "relative"]), FileConfig::default()).unwrap_err();
    assert!(err.to_string().contains("key `root`"), "{err}");
}

#[test]
fn unknown_file_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "cpus = 2\n").unwrap();
    let err = read_file(&path).unwrap_err().to_string();
    assert!(err.contains("cpus"), "{err}");
    std::fs::write(&path, "memory = \"lots\"\n").unwrap();
    let err = read_file(&path).unwrap_err().to_string();
    assert!(err.contains("memory"), "{err}");
    assert!(matches!(
        read_file(&dir.path().join("missing.toml")),
        Err(ConfigError::Read(..))
    ));
}

#[test]
fn the_vm_users_uid_range_comes_from_subuid() {
    let subuid = "alice:100000:65536\n# frakti-vm:1:1\nfrakti-vm:1879048192:65536\n999:5:5\n";
    assert_eq!(
        subordinate_ids(subuid, "frakti-vm", 999),
        Some((1_879_048_192, 65536)),
        "the first range of the name"
    );
    assert_eq!(
        subordinate_ids("999:500:10\n", "frakti-vm", 999),
        Some((500, 10)),
        "by uid"
    );
    assert_eq!(subordinate_ids(subuid, "bob", 1000), None);
    for bad in [
        "frakti-vm:x:1",
        "frakti-vm:5:0",
        "frakti-vm:4294967295:2",
        "frakti-vm:5",
    ] {
        assert_eq!(subordinate_ids(bad, "frakti-vm", 999), None, "{bad}");
    }
}

#[test]
fn the_vm_pool_is_per_handler_and_bounded() {
    let c = Config::merge(&cli(&[]), FileConfig::default()).unwrap();
    assert_eq!(c.vm_pool, 1, "one VM booted ahead by default");
    let f = file(
        "vm_pool = 3\n[runtime_handlers.big]\nmemory = 1024\n\
         [runtime_handlers.none]\nvm_pool = 0\n[runtime_handlers.node]\nkind = \"host\"\n",
    );
    let c = Config::merge(&cli(&[]), f).unwrap();
    assert_eq!(c.default_handler().vm_pool, Some(3));
    assert_eq!(
        c.runtime_handlers["big"].vm_pool,
        Some(3),
        "the top-level key is the default"
    );
    assert_eq!(c.runtime_handlers["none"].vm_pool, Some(0));
    assert_eq!(
        c.runtime_handlers["node"].vm_pool, None,
        "host pods have no VMs"
    );
    // The flag overrides the file.
    let c = Config::merge(&cli(&["--vm-pool", "0"]), file("vm_pool = 3\n")).unwrap();
    assert_eq!(c.vm_pool, 0);
    let err = Config::merge(&cli(&["--vm-pool", "65"]), FileConfig::default()).unwrap_err();
    assert!(err.to_string().contains("key `vm_pool`"), "{err}");
    let f = file("[runtime_handlers.big]\nvm_pool = 100\n");
    let err = Config::merge(&cli(&[]), f).unwrap_err().to_string();
    assert!(err.contains("vm_pool 100"), "{err}");
    let f = file("[runtime_handlers.node]\nkind = \"host\"\nvm_pool = 1\n");
    let err = Config::merge(&cli(&[]), f).unwrap_err().to_string();
    assert!(err.contains("vm_pool is a key of vm handlers"), "{err}");
}
