//! Resolves the user a container runs as, from its own `/etc/passwd` and `/etc/group`.

use std::path::{Path, PathBuf};

use runtime_api::container::SupplementalGroupsPolicy;

/// The process identity of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// UID.
    pub uid: u32,
    /// Primary GID.
    pub gid: u32,
    /// Supplementary GIDs.
    pub additional_gids: Vec<u32>,
}

/// The user cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A user name is not in the container's passwd file
    #[error("user {0:?} not found in the container's /etc/passwd")]
    UnknownUser(String),
    /// A group name is not in the container's group file
    #[error("group {0:?} not found in the container's /etc/group")]
    UnknownGroup(String),
    /// An id is out of range
    #[error("id {0} is out of range")]
    Range(i64),
}

struct Entry {
    name: String,
    id: u32,
    gid: u32,
    members: Vec<String>,
}

fn read_db(rootfs: &Path, file: &str) -> Vec<Entry> {
    // Only a regular file directly inside the rootfs is read: a symlink could
    // point anywhere on the host.
    let path: PathBuf = rootfs.join("etc").join(file);
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return Vec::new();
    };
    if !meta.is_file() {
        return Vec::new();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let id = f.get(2)?.parse().ok()?;
            Some(Entry {
                name: f.first()?.to_string(),
                id,
                gid: if file == "passwd" {
                    f.get(3)?.parse().ok()?
                } else {
                    id
                },
                members: if file == "group" {
                    f.get(3)
                        .map(|m| {
                            m.split(',')
                                .filter(|s| !s.is_empty())
                                .map(String::from)
                                .collect()
                        })
                        .unwrap_or_default()
                } else {
                    Vec::new()
                },
            })
        })
        .collect()
}

fn id(v: i64) -> Result<u32, UserError> {
    u32::try_from(v).map_err(|_| UserError::Range(v))
}

/// Resolves the identity: `run_as_user`/`run_as_username` override the
/// image's `User` (`uid`, `name`, `uid:gid`, `name:group`), `run_as_group`
/// overrides the group; supplementary groups are `supplemental`, plus the
/// user's groups in `/etc/group` unless `policy` is `Strict`.
pub fn resolve(
    rootfs: &Path,
    image_user: &str,
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
    run_as_username: &str,
    supplemental: &[i64],
    policy: SupplementalGroupsPolicy,
) -> Result<User, UserError> {
    let passwd = read_db(rootfs, "passwd");
    let groups = read_db(rootfs, "group");
    let (image_name, image_group) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let by_name = |n: &str| passwd.iter().find(|e| e.name == n);
    let (uid, mut gid, name) = if let Some(uid) = run_as_user {
        let uid = id(uid)?;
        let e = passwd.iter().find(|e| e.id == uid);
        (uid, e.map_or(0, |e| e.gid), e.map(|e| e.name.clone()))
    } else if !run_as_username.is_empty() {
        let e = by_name(run_as_username)
            .ok_or_else(|| UserError::UnknownUser(run_as_username.to_owned()))?;
        (e.id, e.gid, Some(e.name.clone()))
    } else if image_name.is_empty() {
        (0, 0, Some("root".to_owned()))
    } else if let Ok(uid) = image_name.parse::<u32>() {
        let e = passwd.iter().find(|e| e.id == uid);
        (uid, e.map_or(0, |e| e.gid), e.map(|e| e.name.clone()))
    } else {
        let e = by_name(image_name).ok_or_else(|| UserError::UnknownUser(image_name.to_owned()))?;
        (e.id, e.gid, Some(e.name.clone()))
    };
    if run_as_user.is_none()
        && run_as_username.is_empty()
        && let Some(g) = image_group.filter(|g| !g.is_empty())
    {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.id)
                .ok_or_else(|| UserError::UnknownGroup(g.to_owned()))?,
        };
    }
    if let Some(g) = run_as_group {
        gid = id(g)?;
    }
    let mut additional: Vec<u32> = Vec::new();
    if let Some(name) = name
        .as_ref()
        .filter(|_| policy == SupplementalGroupsPolicy::Merge)
    {
        additional.extend(
            groups
                .iter()
                .filter(|g| g.members.contains(name))
                .map(|g| g.id),
        );
    }
    for g in supplemental {
        additional.push(id(*g)?);
    }
    additional.sort_unstable();
    additional.dedup();
    Ok(User {
        uid,
        gid,
        additional_gids: additional,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MERGE: SupplementalGroupsPolicy = SupplementalGroupsPolicy::Merge;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1001::/home/web:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nweb:x:1001:\nwheel:x:10:web,other\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn names_resolve_in_the_container() {
        let r = rootfs();
        let u = resolve(r.path(), "web", None, None, "", &[], MERGE).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (1000, 1001, vec![10]));
        let u = resolve(r.path(), "", None, None, "web", &[5], MERGE).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (1000, 1001, vec![5, 10]));
        let strict = SupplementalGroupsPolicy::Strict;
        let u = resolve(r.path(), "", None, None, "web", &[5], strict).unwrap();
        assert_eq!(u.additional_gids, vec![5], "Strict: not the image's groups");
        let u = resolve(r.path(), "web:root", None, None, "", &[], MERGE).unwrap();
        assert_eq!(u.gid, 0);
        let u = resolve(r.path(), "web", Some(42), Some(43), "", &[], MERGE).unwrap();
        assert_eq!((u.uid, u.gid), (42, 43));
        let u = resolve(r.path(), "", None, None, "", &[], MERGE).unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
        assert!(matches!(
            resolve(r.path(), "nobody", None, None, "", &[], MERGE),
            Err(UserError::UnknownUser(_))
        ));
        assert!(matches!(
            resolve(r.path(), "", Some(-1), None, "", &[], MERGE),
            Err(UserError::Range(-1))
        ));
    }
}
