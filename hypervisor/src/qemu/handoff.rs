//! What QEMU gets as open descriptors instead of paths: its two sockets, the
//! console log, the guest kernel and initramfs, the virtio-fs connections,
//! the boot disks and the taps. QEMU then needs no access to the VM
//! directory, the disks or the pod's network namespace, so it can run as an
//! unprivileged user; as root it runs the same way.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crate::{BlockSpec, LaunchError, VmSpec, VmUser};

/// The fd set (`-add-fd set=`) of the console log.
pub(super) const CONSOLE_FDSET: usize = 1;
/// The fd set of boot disk `i` is `DISK_FDSETS + i`.
pub(super) const DISK_FDSETS: usize = 2;

/// The descriptor numbers QEMU's command line names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fds {
    /// The QMP listening socket.
    pub qmp: RawFd,
    /// The agent port's listening socket.
    pub agent: RawFd,
    /// The console log, written to.
    pub console: RawFd,
    /// The guest kernel, read through `/proc/self/fd`.
    pub kernel: RawFd,
    /// The initramfs, read through `/proc/self/fd`.
    pub initrd: RawFd,
    /// A connection to each share's virtiofsd, in `VmSpec::shares` order.
    pub shares: Vec<RawFd>,
    /// The descriptors of each boot disk (read-only, and read-write when writable).
    pub disks: Vec<Vec<RawFd>>,
    /// Each NIC's tap, in `VmSpec::nics` order.
    pub taps: Vec<RawFd>,
}

/// The open files and sockets handed to one QEMU; closed on drop (after spawn).
#[derive(Debug)]
pub(super) struct Handoff {
    qmp: UnixListener,
    agent: UnixListener,
    console: File,
    kernel: File,
    initrd: File,
    shares: Vec<UnixStream>,
    disks: Vec<Vec<File>>,
    taps: Vec<OwnedFd>,
}

/// Maps an I/O error opening `path` (a `what`) into a launch error.
fn open_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LaunchError + use<> {
    let path = path.to_path_buf();
    move |source| LaunchError::Open { what, path, source }
}

impl Handoff {
    /// Opens everything `spec` needs; `qmp`, `agent` and `console` are the
    /// paths of the sockets and log to create. `user` must be able to read
    /// the kernel and initramfs, which QEMU reopens.
    pub(super) fn open(
        spec: &VmSpec,
        [qmp, agent, console]: [&Path; 3],
        user: Option<&VmUser>,
    ) -> Result<Self, LaunchError> {
        let listen = |what, path: &Path| {
            let _ = fs::remove_file(path);
            let listener = UnixListener::bind(path).map_err(open_err(what, path))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .map_err(open_err(what, path))?;
            Ok::<_, LaunchError>(listener)
        };
        let readable = |what, path: &Path| {
            let file = File::open(path).map_err(open_err(what, path))?;
            if let Some(user) = user {
                let meta = file.metadata().map_err(open_err(what, path))?;
                if !readable_by(&meta, user) {
                    return Err(LaunchError::Unreadable {
                        what,
                        path: path.to_path_buf(),
                        user: user.name.clone(),
                    });
                }
            }
            Ok(file)
        };
        let console_file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(console)
            .map_err(open_err("console log", console))?;
        let shares = spec
            .shares
            .iter()
            .map(|s| {
                UnixStream::connect(&s.socket).map_err(open_err("virtiofsd socket", &s.socket))
            })
            .collect::<Result<_, _>>()?;
        let disks = spec
            .disks
            .iter()
            .map(|d| open_disk(d).map_err(open_err("disk", &d.path)))
            .collect::<Result<_, _>>()?;
        let taps = spec
            .nics
            .iter()
            .map(|n| {
                let ns = n.netns.as_deref().or(spec.netns.as_deref());
                open_tap(ns, &n.tap).map_err(open_err("tap", Path::new(&n.tap)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            qmp: listen("QMP socket", qmp)?,
            agent: listen("agent socket", agent)?,
            console: console_file,
            kernel: readable("guest kernel", &spec.kernel)?,
            initrd: readable("guest initramfs", &spec.initrd)?,
            shares,
            disks,
            taps,
        })
    }

    /// The numbers of the descriptors, for the command line.
    pub(super) fn fds(&self) -> Fds {
        Fds {
            qmp: self.qmp.as_raw_fd(),
            agent: self.agent.as_raw_fd(),
            console: self.console.as_raw_fd(),
            kernel: self.kernel.as_raw_fd(),
            initrd: self.initrd.as_raw_fd(),
            shares: self.shares.iter().map(AsRawFd::as_raw_fd).collect(),
            disks: self
                .disks
                .iter()
                .map(|d| d.iter().map(AsRawFd::as_raw_fd).collect())
                .collect(),
            taps: self.taps.iter().map(AsRawFd::as_raw_fd).collect(),
        }
    }
}

impl Fds {
    /// Every descriptor, to be inherited across exec.
    pub(super) fn all(&self) -> Vec<RawFd> {
        let mut all = vec![self.qmp, self.agent, self.console, self.kernel, self.initrd];
        all.extend(&self.shares);
        all.extend(self.disks.iter().flatten());
        all.extend(&self.taps);
        all
    }
}

/// Whether `user` may read a file with `meta` (owner, group, other bits).
fn readable_by(meta: &fs::Metadata, user: &VmUser) -> bool {
    let mode = meta.mode();
    if meta.uid() == user.uid {
        return mode & 0o400 != 0;
    }
    if meta.gid() == user.gid || user.groups.contains(&meta.gid()) {
        return mode & 0o040 != 0;
    }
    mode & 0o004 != 0
}

/// Opens `disk` read-only, and read-write as well when it is writable (QEMU
/// takes the one whose access mode it needs from the fd set).
pub(super) fn open_disk(disk: &BlockSpec) -> io::Result<Vec<File>> {
    let mut files = vec![File::open(&disk.path)?];
    if !disk.read_only {
        files.push(OpenOptions::new().read(true).write(true).open(&disk.path)?);
    }
    Ok(files)
}

/// `struct ifreq` as `TUNSETIFF` reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens the existing tap `name` in the namespace `netns` (the caller's
/// when `None`) with a virtio-net header, as QEMU's `-netdev tap,fd=` wants it.
pub(super) fn open_tap(netns: Option<&Path>, name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} cannot name a network interface"),
        ));
    }
    // A thread of its own enters the namespace; it ends with the open.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(path) = netns {
                    let ns = File::open(path)?;
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                }
                // TUNSETIFF would make a tap that is missing: refuse instead.
                if nix::net::if_::if_nametoindex(name).is_err() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no network interface {name}"),
                    ));
                }
                let tun = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/net/tun")?;
                let mut req = IfReq {
                    name: [0; libc::IFNAMSIZ],
                    flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
                    _pad: [0; 22],
                };
                for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
                    *dst = src as libc::c_char;
                }
                // SAFETY: `req` is a live, properly laid out `struct ifreq`
                // that the kernel reads and writes only within its size.
                let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(OwnedFd::from(tun))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the tap opener panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, gid: u32, groups: Vec<u32>) -> VmUser {
        VmUser {
            name: "vm".into(),
            uid,
            gid,
            groups,
            uid_range: None,
        }
    }

    #[test]
    fn readability_follows_owner_group_and_other_bits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        fs::write(&file, "x").unwrap();
        let check = |mode: u32, u: &VmUser| {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            readable_by(&fs::metadata(&file).unwrap(), u)
        };
        // The file belongs to root:root (the test runs as root).
        let other = user(4242, 4242, vec![]);
        assert!(check(0o644, &other));
        assert!(!check(0o640, &other));
        assert!(check(0o640, &user(4242, 0, vec![])));
        assert!(check(0o640, &user(4242, 4242, vec![0])));
        assert!(!check(0o600, &user(4242, 4242, vec![0])));
        assert!(check(0o400, &user(0, 4242, vec![])));
    }

    #[test]
    fn a_tap_name_that_cannot_be_one_is_refused_before_any_syscall() {
        for name in ["", "a-name-that-is-too-long", "ta\0p"] {
            let err = open_tap(None, name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }
}
