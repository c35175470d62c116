//! Validation of CreateContainer requests, and where container logs go.

use std::path::{Component, Path};

use runtime_api::ContainerConfig;
use runtime_api::container::{NamespaceMode, Seccomp};

/// The host path of a container's log: the pod's log directory joined with
/// the container's relative log path; empty if either is empty.
pub fn absolute_log_path(log_directory: &str, log_path: &str) -> String {
    if log_directory.is_empty() || log_path.is_empty() {
        return String::new();
    }
    Path::new(log_directory)
        .join(log_path)
        .to_string_lossy()
        .into_owned()
}

/// Container names become file and directory names: letters, digits,
/// `_`, `.` and `-`, starting with a letter or digit.
fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("metadata.name must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "metadata.name {name:?} is longer than 253 characters"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "metadata.name {name:?} must start with a letter or digit"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!("metadata.name {name:?} contains {c:?}"));
    }
    Ok(())
}

pub(crate) fn validate_container(config: &ContainerConfig) -> Result<(), String> {
    validate_name(&config.metadata.name)?;
    if config.image.id.is_empty() || config.image.rootfs.as_os_str().is_empty() {
        return Err(format!(
            "image {:?} is not resolved to an image with a root filesystem",
            config.image.user_ref
        ));
    }
    let log = Path::new(&config.log_path);
    if config.log_path.contains('\0')
        || log
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "log_path {:?} must be relative, without \"..\"",
            config.log_path
        ));
    }
    for (key, value) in &config.envs {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(format!("environment variable {key:?} is invalid"));
        }
    }
    for m in &config.mounts {
        if !m.container_path.starts_with('/') || m.host_path.is_empty() {
            return Err(format!(
                "mount {:?} -> {:?} needs a host path and an absolute container path",
                m.host_path, m.container_path
            ));
        }
    }
    for d in &config.devices {
        if d.container_path.is_empty() || d.host_path.is_empty() {
            return Err(format!(
                "device {:?} -> {:?} needs both paths",
                d.host_path, d.container_path
            ));
        }
    }
    let sec = &config.security;
    if sec.run_as_user.is_some() && !sec.run_as_username.is_empty() {
        return Err("run_as_user and run_as_username are mutually exclusive".into());
    }
    if sec.run_as_group.is_some() && sec.run_as_user.is_none() && sec.run_as_username.is_empty() {
        return Err("run_as_group needs run_as_user or run_as_username".into());
    }
    if let Seccomp::Localhost(path) = &sec.seccomp
        && !path.starts_with('/')
    {
        return Err(format!(
            "localhost seccomp profile {path:?} must be an absolute path"
        ));
    }
    let ns = &sec.namespaces;
    if [ns.network, ns.pid, ns.ipc].contains(&NamespaceMode::Target) && ns.target_id.is_empty() {
        return Err("namespace mode TARGET needs a target_id".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths() {
        assert_eq!(
            absolute_log_path("/var/log/pods/ns_p_uid", "c/0.log"),
            "/var/log/pods/ns_p_uid/c/0.log"
        );
        assert_eq!(absolute_log_path("", "c/0.log"), "");
        assert_eq!(absolute_log_path("/var/log/pods/x", ""), "");
    }

    #[test]
    fn names() {
        assert!(validate_name("web-1.a_b").is_ok());
        for bad in ["", "-x", "a/b", "..", "a b", "a\0"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
