//! Search permission for one uid through private directories, by POSIX
//! access ACLs.
//!
//! A host pod with a user namespace runs its containers' set-up as the
//! pod's root, whose host uid is not root: libcontainer opens the pod's
//! namespace files and mounts its root filesystem by paths under frakti's
//! state directory, which is `0700`. That uid alone gets `--x` on each
//! such directory (a named-user ACL entry), so it can pass through but not
//! list, and every other user stays shut out.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The xattr holding a file's access ACL.
const ACCESS_ACL: &std::ffi::CStr = c"system.posix_acl_access";
/// Version of the xattr format.
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
/// The id of entries that have none.
const NO_ID: u32 = u32::MAX;
/// The execute (search) permission.
const SEARCH: u16 = 0o1;

/// One ACL entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    tag: u16,
    id: u32,
    perm: u16,
}

/// An ACL cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The directory's ACL cannot be read
    #[error("read the access ACL of {}", .0.display())]
    Read(std::path::PathBuf, #[source] std::io::Error),
    /// The directory's ACL cannot be written
    #[error("write the access ACL of {}", .0.display())]
    Write(std::path::PathBuf, #[source] std::io::Error),
}

fn decode(bytes: &[u8]) -> Option<Vec<Entry>> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*head) != VERSION || rest.len() % 8 != 0 {
        return None;
    }
    Some(
        rest.chunks_exact(8)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect(),
    )
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = VERSION.to_le_bytes().to_vec();
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    out
}

/// The directory's ACL entries: its xattr, or the three its mode stands for.
fn read(dir: &Path) -> Result<Vec<Entry>, AclError> {
    let path = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| AclError::Read(dir.into(), std::io::Error::other(e)))?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: getxattr(2) writes at most `buf.len()` bytes into `buf` and
    // reads two NUL-terminated strings.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            ACCESS_ACL.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n >= 0 {
        buf.truncate(n as usize);
        if let Some(entries) = decode(&buf) {
            return Ok(entries);
        }
    } else {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENODATA) {
            return Err(AclError::Read(dir.into(), e));
        }
    }
    let mode = std::fs::metadata(dir)
        .map_err(|e| AclError::Read(dir.into(), e))?
        .permissions()
        .mode() as u16;
    Ok(vec![
        Entry {
            tag: USER_OBJ,
            id: NO_ID,
            perm: (mode >> 6) & 7,
        },
        Entry {
            tag: GROUP_OBJ,
            id: NO_ID,
            perm: (mode >> 3) & 7,
        },
        Entry {
            tag: OTHER,
            id: NO_ID,
            perm: mode & 7,
        },
    ])
}

/// Writes `entries`, with the mask they need (none for the three base
/// entries alone, which the kernel folds back into the mode).
fn write(dir: &Path, mut entries: Vec<Entry>) -> Result<(), AclError> {
    entries.retain(|e| e.tag != MASK);
    let named = entries.iter().any(|e| e.tag == USER || e.tag == GROUP);
    if named {
        let perm = entries
            .iter()
            .filter(|e| matches!(e.tag, USER | GROUP | GROUP_OBJ))
            .fold(0, |acc, e| acc | e.perm);
        entries.push(Entry {
            tag: MASK,
            id: NO_ID,
            perm,
        });
    }
    entries.sort();
    let path = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| AclError::Write(dir.into(), std::io::Error::other(e)))?;
    let value = encode(&entries);
    // SAFETY: setxattr(2) reads two NUL-terminated strings and `value.len()`
    // bytes of `value`.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            ACCESS_ACL.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(AclError::Write(dir.into(), std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Serialises every read-modify-write of an ACL here: pods and containers
/// are set up and removed concurrently, on directories they share.
static EDITS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn edits() -> std::sync::MutexGuard<'static, ()> {
    EDITS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `dir` gives `uid` an entry of its own.
pub fn names(dir: &Path, uid: u32) -> bool {
    read(dir).is_ok_and(|entries| entries.iter().any(|e| e.tag == USER && e.id == uid))
}

/// Lets `uid` search `path` and every directory above it that others
/// cannot search; idempotent.
pub fn grant_search(path: &Path, uid: u32) -> Result<(), AclError> {
    let _edits = edits();
    for dir in path.ancestors() {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        if meta.permissions().mode() & 0o001 != 0 {
            continue;
        }
        let mut entries = read(dir)?;
        if entries
            .iter()
            .any(|e| e.tag == USER && e.id == uid && e.perm & SEARCH != 0)
        {
            continue;
        }
        entries.retain(|e| !(e.tag == USER && e.id == uid));
        entries.push(Entry {
            tag: USER,
            id: uid,
            perm: SEARCH,
        });
        write(dir, entries)?;
    }
    Ok(())
}

/// Takes back what [`grant_search`] gave `uid` on each of `paths` and the
/// directories above them (a missing directory is skipped), unless
/// `still_used` (asked under the same lock as every grant) says another
/// holder of the uid still needs them.
pub fn revoke_search_unless(
    paths: &[&Path],
    uid: u32,
    still_used: impl FnOnce() -> bool,
) -> Result<(), AclError> {
    let _edits = edits();
    if still_used() {
        return Ok(());
    }
    for path in paths {
        revoke_locked(path, uid)?;
    }
    Ok(())
}

fn revoke_locked(path: &Path, uid: u32) -> Result<(), AclError> {
    for dir in path.ancestors() {
        if !dir.is_dir() {
            continue;
        }
        let entries = read(dir)?;
        if !entries.iter().any(|e| e.tag == USER && e.id == uid) {
            continue;
        }
        write(
            dir,
            entries
                .into_iter()
                .filter(|e| !(e.tag == USER && e.id == uid))
                .collect(),
        )?;
    }
    Ok(())
}

/// Whether the filesystem holding `dir` takes access ACLs (tried on a
/// scratch directory under it).
pub fn supported_under(dir: &Path) -> bool {
    let scratch = dir.join(format!(".acl-probe-{}", std::process::id()));
    let probe = u32::MAX - 1;
    let works = std::fs::create_dir_all(&scratch).is_ok()
        && read(&scratch)
            .and_then(|mut entries| {
                entries.push(Entry {
                    tag: USER,
                    id: probe,
                    perm: SEARCH,
                });
                write(&scratch, entries)
            })
            .is_ok()
        && names(&scratch, probe);
    let _ = std::fs::remove_dir_all(&scratch);
    works
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let entries = vec![
            Entry {
                tag: USER_OBJ,
                id: NO_ID,
                perm: 7,
            },
            Entry {
                tag: USER,
                id: 65_536,
                perm: 1,
            },
        ];
        assert_eq!(decode(&encode(&entries)).unwrap(), entries);
        assert_eq!(decode(&[1, 0, 0, 0]), None);
        assert_eq!(decode(&[2, 0, 0, 0, 1]), None);
    }

    /// Needs root and a filesystem with ACLs (the tests' temporary
    /// directory): the uid alone may pass, and taking it back restores the
    /// mode.
    #[test]
    fn one_uid_passes_a_private_directory() {
        let top = tempfile::tempdir().unwrap();
        let private = top.path().join("private");
        let inner = private.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755)).unwrap();
        let probe = |uid: u32| {
            let file = inner.clone();
            std::process::Command::new("setpriv")
                .args([
                    &format!("--reuid={uid}"),
                    "--regid=65534",
                    "--clear-groups",
                    "test",
                    "-d",
                ])
                .arg(file)
                .status()
                .unwrap()
                .success()
        };
        // tempfile's own directory is 0700: the probe needs it passable.
        grant_search(&inner, 300_000).unwrap();
        assert!(probe(300_000), "the granted uid passes");
        assert!(!probe(300_001), "another uid does not");
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o007, 0, "others still have nothing: {mode:o}");
        grant_search(&inner, 300_000).unwrap();
        assert_eq!(
            read(&private)
                .unwrap()
                .iter()
                .filter(|e| e.tag == USER)
                .count(),
            1,
            "granting twice adds one entry"
        );
        revoke_search_unless(&[&inner], 300_000, || true).unwrap();
        assert!(probe(300_000), "kept while still used");
        assert!(names(&private, 300_000));
        revoke_search_unless(&[&inner], 300_000, || false).unwrap();
        assert!(!names(&private, 300_000));
        assert!(!probe(300_000), "taken back");
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the mode is as before: {mode:o}");
    }
}
