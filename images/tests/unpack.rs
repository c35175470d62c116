//! Layer application: whiteouts, opaque directories, links, devices,
//! metadata, and archives that try to write outside the root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use images::snapshot::clone_tree;
use images::unpack::{UnpackError, apply_layer};

/// Builds tar archives with raw names (no sanitising, so malicious ones too).
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn header(name: &str, kind: tar::EntryType, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        let bytes = name.as_bytes();
        assert!(bytes.len() < 100);
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h
    }

    fn file(mut self, name: &str, data: &[u8], mode: u32) -> Self {
        let mut h = Self::header(name, tar::EntryType::Regular, mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn owned_file(mut self, name: &str, uid: u64, gid: u64, mtime: u64) -> Self {
        let mut h = Self::header(name, tar::EntryType::Regular, 0o640);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    fn dir(mut self, name: &str, mode: u32) -> Self {
        let mut h = Self::header(name, tar::EntryType::Directory, mode);
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    fn link(mut self, name: &str, kind: tar::EntryType, target: &str) -> Self {
        let mut h = Self::header(name, kind, 0o777);
        let t = target.as_bytes();
        h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    fn device(mut self, name: &str, kind: tar::EntryType, major: u32, minor: u32) -> Self {
        let mut h = Self::header(name, kind, 0o666);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    fn xattr_file(mut self, name: &str, key: &str, value: &str) -> Self {
        let pax_key = format!("SCHILY.xattr.{key}");
        self.0
            .append_pax_extensions([(pax_key.as_str(), value.as_bytes())])
            .unwrap();
        self.file(name, b"x", 0o644)
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn apply(root: &Path, tar: Tar) -> Result<images::unpack::Applied, UnpackError> {
    apply_layer(root, &tar.bytes()[..])
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn files_dirs_links_devices_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    let layer = Tar::new()
        .dir("etc/", 0o755)
        .file("etc/passwd", b"root:x:0:0\n", 0o644)
        .file("bin/tool", b"#!/bin/sh\n", 0o4755) // parent created implicitly
        .link("bin/sh", tar::EntryType::Symlink, "/bin/tool")
        .link("bin/hard", tar::EntryType::Link, "bin/tool")
        .owned_file("home/u/file", 1234, 5678, 1_500_000_000)
        .dir("tmp/", 0o1777)
        .xattr_file("etc/cap", "user.frakti", "yes");
    let applied = apply(&root, layer).unwrap();
    assert_eq!(applied.entries, 8);
    assert_eq!(read(root.join("etc/passwd")), "root:x:0:0\n");
    let tool = std::fs::metadata(root.join("bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/tool")
    );
    let hard = std::fs::metadata(root.join("bin/hard")).unwrap();
    assert_eq!(hard.ino(), tool.ino());
    let owned = std::fs::metadata(root.join("home/u/file")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
    assert_eq!(owned.mtime(), 1_500_000_000);
    assert_eq!(owned.mode() & 0o777, 0o640);
    let tmp = std::fs::metadata(root.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    assert_eq!(
        tmp.mtime(),
        1_000_000,
        "directory mtime set after its children"
    );
    let mut value = [0u8; 16];
    let path = std::ffi::CString::new(root.join("etc/cap").to_str().unwrap()).unwrap();
    let name = std::ffi::CString::new("user.frakti").unwrap();
    // SAFETY: valid strings and buffer.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), 16) };
    assert_eq!(&value[..usize::try_from(n).unwrap()], b"yes");
}

#[test]
fn device_nodes_and_fifos_are_refused_a_0_0_char_is_a_whiteout() {
    for (kind, major, minor, what) in [
        (tar::EntryType::Char, 1, 3, "character device"),
        (tar::EntryType::Block, 8, 0, "block device"),
        (tar::EntryType::Fifo, 0, 0, "FIFO"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let layer = Tar::new().device("dev/x", kind, major, minor);
        let err = apply(dir.path(), layer).unwrap_err();
        assert!(matches!(err, UnpackError::DeviceNode { .. }), "{err}");
        assert!(err.to_string().contains(what), "{err}");
        assert!(!dir.path().join("dev/x").exists());
    }
    let dir = tempfile::tempdir().unwrap();
    apply(dir.path(), Tar::new().file("etc/gone", b"x", 0o644)).unwrap();
    let applied = apply(
        dir.path(),
        Tar::new().device("etc/gone", tar::EntryType::Char, 0, 0),
    )
    .unwrap();
    assert_eq!(applied.whiteouts, 1);
    assert!(!dir.path().join("etc/gone").exists());
}

#[test]
fn whiteouts_and_opaque_dirs_on_a_cloned_parent() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    apply(
        &base,
        Tar::new()
            .file("a/keep", b"k", 0o644)
            .file("a/gone", b"g", 0o644)
            .file("b/old1", b"1", 0o644)
            .file("b/sub/old2", b"2", 0o644)
            .file("c", b"c", 0o644)
            .file("shared", b"base", 0o644),
    )
    .unwrap();
    let child = dir.path().join("child");
    clone_tree(&base, &child).unwrap();
    apply(
        &child,
        Tar::new()
            .file("a/.wh.gone", b"", 0o644)
            .file(".wh.c", b"", 0o644)
            .file("b/new", b"n", 0o644) // before the marker, in the same layer: kept
            .file("b/.wh..wh..opq", b"", 0o644)
            .file("shared", b"child", 0o644)
            .file(".wh.never-existed", b"", 0o644),
    )
    .unwrap();
    assert!(child.join("a/keep").exists());
    assert!(!child.join("a/gone").exists());
    assert!(!child.join("c").exists());
    assert!(child.join("b/new").exists());
    assert!(!child.join("b/old1").exists() && !child.join("b/sub").exists());
    assert!(!child.join("b/.wh..wh..opq").exists());
    assert_eq!(read(child.join("shared")), "child");
    // The parent is untouched.
    assert!(base.join("a/gone").exists() && base.join("c").exists());
    assert!(base.join("b/old1").exists() && base.join("b/sub/old2").exists());
    assert_eq!(read(base.join("shared")), "base");
    // Unchanged files share their inode with the parent (stored once).
    assert_eq!(
        std::fs::metadata(base.join("a/keep")).unwrap().ino(),
        std::fs::metadata(child.join("a/keep")).unwrap().ino()
    );
}

/// A sandbox with `root` inside and a sentinel file next to it.
fn sandbox() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(dir.path().join("outside"), "original").unwrap();
    (dir, root)
}

fn outside_untouched(dir: &tempfile::TempDir) {
    assert_eq!(read(dir.path().join("outside")), "original");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["outside", "rootfs"], "nothing new next to the root");
}

#[test]
fn dotdot_paths_are_rejected() {
    let (dir, root) = sandbox();
    let err = apply(&root, Tar::new().file("../outside", b"pwned", 0o644)).unwrap_err();
    assert!(matches!(err, UnpackError::UnsafePath(_)), "{err}");
    let err = apply(&root, Tar::new().file("a/../../evil", b"pwned", 0o644)).unwrap_err();
    assert!(matches!(err, UnpackError::UnsafePath(_)), "{err}");
    let err = apply(
        &root,
        Tar::new()
            .file(".wh...", b"", 0o644)
            .file("x/../../.wh.outside", b"", 0o644),
    );
    assert!(err.is_err());
    outside_untouched(&dir);
}

#[test]
fn absolute_paths_stay_inside() {
    let (dir, root) = sandbox();
    let outside = dir.path().join("outside");
    apply(
        &root,
        Tar::new().file(outside.to_str().unwrap(), b"pwned", 0o644),
    )
    .unwrap();
    assert_eq!(read(root.join(outside.strip_prefix("/").unwrap())), "pwned");
    outside_untouched(&dir);
}

#[test]
fn symlink_escapes_are_contained() {
    let (dir, root) = sandbox();
    let parent = dir.path().to_str().unwrap().to_owned();
    // A symlink to the real parent, then files written through it; a relative
    // climbing symlink; a symlink at the final component replaced, not followed.
    apply(
        &root,
        Tar::new()
            .link("escape", tar::EntryType::Symlink, &parent)
            .file("escape/outside", b"pwned", 0o644)
            .link("up", tar::EntryType::Symlink, "../../../..")
            .file("up/outside", b"pwned", 0o644)
            .link("victim", tar::EntryType::Symlink, "../outside")
            .file("victim", b"replaced the link", 0o644),
    )
    .unwrap();
    outside_untouched(&dir);
    // The writes landed inside, resolved as if the root were `/`.
    assert_eq!(read(root.join(&parent[1..]).join("outside")), "pwned");
    assert_eq!(read(root.join("outside")), "pwned");
    assert_eq!(read(root.join("victim")), "replaced the link");
    assert!(
        !std::fs::symlink_metadata(root.join("victim"))
            .unwrap()
            .is_symlink()
    );
    // A whiteout through the escaping link removes nothing outside.
    apply(&root, Tar::new().file("escape/.wh.outside", b"", 0o644)).unwrap();
    outside_untouched(&dir);
}

#[test]
fn hard_links_to_outside_are_refused() {
    let (dir, root) = sandbox();
    let outside = dir.path().join("outside");
    // An absolute target is looked up inside the root, where it does not exist.
    let err = apply(
        &root,
        Tar::new().link("h", tar::EntryType::Link, outside.to_str().unwrap()),
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::Resolve { .. }), "{err}");
    let err = apply(
        &root,
        Tar::new().link("h", tar::EntryType::Link, "../outside"),
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::UnsafePath(_)), "{err}");
    // Through a symlinked directory: resolved inside the root, so not found.
    let err = apply(
        &root,
        Tar::new()
            .link("d", tar::EntryType::Symlink, dir.path().to_str().unwrap())
            .link("h2", tar::EntryType::Link, "d/outside"),
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::Resolve { .. }), "{err}");
    outside_untouched(&dir);
    assert_eq!(std::fs::metadata(&outside).unwrap().nlink(), 1);
}

#[test]
fn pax_global_headers_are_skipped() {
    let (dir, root) = sandbox();
    let mut t = Tar::new();
    let mut h = Tar::header("pax_global_header", tar::EntryType::XGlobalHeader, 0o644);
    let body = b"52 comment=0123456789012345678901234567890123456789\n";
    h.set_size(body.len() as u64);
    h.set_cksum();
    t.0.append(&h, &body[..]).unwrap();
    apply(&root, t.file("a", b"a", 0o644)).unwrap();
    assert!(!root.join("pax_global_header").exists());
    assert_eq!(read(root.join("a")), "a");
    outside_untouched(&dir);
}

#[test]
fn symlink_loops_fail_cleanly() {
    let (dir, root) = sandbox();
    let err = apply(
        &root,
        Tar::new()
            .link("a", tar::EntryType::Symlink, "b")
            .link("b", tar::EntryType::Symlink, "a")
            .file("a/x", b"", 0o644),
    )
    .unwrap_err();
    assert!(err.to_string().contains("too many levels"), "{err}");
    outside_untouched(&dir);
}
