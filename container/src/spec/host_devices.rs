//! A container's CRI `devices` on the host, as runc gives them: a device
//! node at `container_path` with the host device's type, numbers, mode and
//! owner, and a cgroup rule that allows the permissions asked.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use runtime_api::container::Device;
use serde_json::{Value, json};

use super::SpecError;

/// The `linux.devices` nodes and the `linux.resources.devices` rules for
/// `devices`; a path that is not a device, or bad permissions, is refused.
pub fn nodes_and_rules(devices: &[Device]) -> Result<(Vec<Value>, Vec<Value>), SpecError> {
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for d in devices {
        let bad = |why: String| SpecError::Device(d.host_path.clone(), why);
        let access = permissions(&d.permissions).map_err(bad)?;
        if !d.container_path.starts_with('/') || d.container_path.split('/').any(|c| c == "..") {
            return Err(bad(format!(
                "container path {:?} is not absolute or has \"..\"",
                d.container_path
            )));
        }
        // Symlinks are followed, as /dev/disk/by-id links are meant to be.
        let meta = std::fs::metadata(&d.host_path).map_err(|e| bad(e.to_string()))?;
        let kind = if meta.file_type().is_char_device() {
            "c"
        } else if meta.file_type().is_block_device() {
            "b"
        } else {
            return Err(bad("is not a device".into()));
        };
        let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
        nodes.push(json!({
            "path": d.container_path,
            "type": kind,
            "major": major,
            "minor": minor,
            "fileMode": meta.permissions().mode() & 0o777,
            "uid": meta.uid(),
            "gid": meta.gid(),
        }));
        rules.push(json!({
            "allow": true,
            "type": kind,
            "major": major,
            "minor": minor,
            "access": access,
        }));
    }
    Ok((nodes, rules))
}

/// The cgroup access of CRI `permissions`: letters of `rwm`, each once;
/// empty is all three.
fn permissions(asked: &str) -> Result<String, String> {
    if asked.is_empty() {
        return Ok("rwm".into());
    }
    let mut seen = String::new();
    for c in asked.chars() {
        if !"rwm".contains(c) || seen.contains(c) {
            return Err(format!(
                "permissions {asked:?} are not letters of \"rwm\", each once"
            ));
        }
        seen.push(c);
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(host: &str, container: &str, permissions: &str) -> Device {
        Device {
            host_path: host.into(),
            container_path: container.into(),
            permissions: permissions.into(),
        }
    }

    #[test]
    fn a_host_device_becomes_a_node_and_a_rule() {
        let (nodes, rules) = nodes_and_rules(&[device("/dev/null", "/dev/mynull", "rw")]).unwrap();
        assert_eq!(nodes[0]["path"], "/dev/mynull");
        assert_eq!(
            (
                nodes[0]["type"].clone(),
                nodes[0]["major"].clone(),
                nodes[0]["minor"].clone()
            ),
            (json!("c"), json!(1), json!(3))
        );
        assert_eq!(nodes[0]["fileMode"], 0o666);
        assert_eq!(
            rules[0],
            json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"})
        );
        let (_, rules) = nodes_and_rules(&[device("/dev/zero", "/dev/z", "")]).unwrap();
        assert_eq!(rules[0]["access"], "rwm");
    }

    #[test]
    fn what_is_not_a_device_is_refused_by_name() {
        for (d, want) in [
            (device("/etc/hostname", "/dev/x", "rw"), "is not a device"),
            (device("/nonexistent/dev", "/dev/x", "rw"), "No such file"),
            (device("/dev/null", "/dev/x", "rwx"), "permissions"),
            (device("/dev/null", "/dev/x", "rr"), "permissions"),
            (device("/dev/null", "dev/x", "r"), "not absolute"),
            (device("/dev/null", "/dev/../x", "r"), "not absolute"),
        ] {
            let err = nodes_and_rules(std::slice::from_ref(&d))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&d.host_path) && err.contains(want), "{err}");
        }
    }
}
