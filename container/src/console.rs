//! Terminals of containers: the console socket through which libcontainer
//! hands over a terminal's master, and setting a terminal's size.
//!
//! Blocking, std only: the agent calls it on blocking threads, the host's
//! monitor from its single thread.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Sets the size of the terminal `fd`.
pub fn set_size(fd: BorrowedFd<'_>, width: u16, height: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid
    // for the duration of the call; `fd` is an open descriptor.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A listening console socket; removed from the filesystem when dropped.
#[derive(Debug)]
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ConsoleSocket {
    /// Listens at `path` (replacing a stale socket).
    pub fn bind(path: PathBuf) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(Self { path, listener })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the terminal master libcontainer sent (blocking, at most `limit`).
    pub fn receive(&self, limit: Duration) -> io::Result<OwnedFd> {
        let deadline = Instant::now().checked_add(limit);
        let conn = loop {
            match self.listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        && deadline.is_none_or(|d| Instant::now() < d) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(limit.max(Duration::from_millis(1))))?;
        receive_fd(&conn)
    }
}

/// How many descriptors one message may carry before the rest are cut off.
const MAX_FDS: usize = 4;

/// Receives one message on `conn` and returns the first descriptor it
/// carried; any others are closed.
fn receive_fd(conn: &UnixStream) -> io::Result<OwnedFd> {
    let mut name = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: name.as_mut_ptr().cast(),
        iov_len: name.len(),
    };
    let fd_bytes = (MAX_FDS * size_of::<RawFd>()) as libc::c_uint;
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    // u64 words keep the control buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(size_of::<u64>())];
    // SAFETY: `msghdr` is a plain C struct for which all zeroes is a valid
    // (empty) value; the fields that matter are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() * size_of::<u64>();
    let n = loop {
        // SAFETY: `msg` points at `iov` (which points at `name`) and at
        // `control`, all alive and of the lengths given, for the call.
        let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut received: Vec<OwnedFd> = Vec::new();
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR reads its control
    // fields and returns null or a pointer into `control`.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: a non-null header from CMSG_FIRSTHDR/CMSG_NXTHDR lies within
        // the control buffer the kernel filled.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN only computes a size.
            let empty = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (header.cmsg_len as usize).saturating_sub(empty) / size_of::<RawFd>();
            // SAFETY: the header is valid (above); CMSG_DATA points right after it.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: the kernel wrote `count` descriptors after the header,
                // inside the control buffer; they may be unaligned.
                let fd = unsafe { data.add(i).read_unaligned() };
                // SAFETY: the kernel just installed `fd` in our table for this
                // message; nothing else owns it.
                received.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: `cmsg` is a valid header of `msg` (above).
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    if n == 0 && received.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the console socket closed without a terminal",
        ));
    }
    received
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::other("no terminal descriptor on the console socket"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;
    use std::os::fd::AsFd;

    fn send_fd(stream: &UnixStream, fd: BorrowedFd<'_>) {
        let raw = fd.as_raw_fd();
        let data = b"/dev/pts/0";
        let iov = [IoSlice::new(data)];
        // SAFETY: size computations only.
        let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as libc::c_uint) } as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        // SAFETY: all-zero msghdr is valid; fields set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer has room for one header and one fd.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as libc::c_uint) as usize;
            libc::CMSG_DATA(cmsg).cast::<RawFd>().write_unaligned(raw);
        }
        // SAFETY: `msg` points at live buffers for the call.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, 0) };
        assert!(n > 0, "sendmsg: {}", io::Error::last_os_error());
    }

    #[test]
    fn receives_a_descriptor_and_removes_its_socket() {
        let dir = std::env::temp_dir().join(format!("frakti-console-{}", std::process::id()));
        let path = dir.join("c.sock");
        let console = ConsoleSocket::bind(path.clone()).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let client = UnixStream::connect(&path).unwrap();
        send_fd(&client, w.as_fd());
        let got = console.receive(Duration::from_secs(5)).unwrap();
        drop(w);
        nix::unistd::write(&got, b"hi").unwrap();
        let mut buf = [0u8; 2];
        nix::unistd::read(&r, &mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        drop(console);
        assert!(!path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_sender_times_out() {
        let dir = std::env::temp_dir().join(format!("frakti-console-t-{}", std::process::id()));
        let console = ConsoleSocket::bind(dir.join("c.sock")).unwrap();
        assert!(console.receive(Duration::from_millis(20)).is_err());
        drop(console);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
