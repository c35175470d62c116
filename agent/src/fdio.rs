//! Async I/O on raw descriptors (pipes, terminal masters) and the console
//! socket through which libcontainer hands over a terminal's master.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;

/// A non-blocking descriptor driven by the async runtime.
#[derive(Debug)]
pub struct FdIo(AsyncFd<OwnedFd>);

impl FdIo {
    /// Makes `fd` non-blocking and registers it.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(&fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        // SAFETY: `fd` is an open descriptor owned by the `AsyncFd` from
        // here on, so it stays open and keeps its number while registered.
        let registered = unsafe { AsyncFd::register(fd) };
        Ok(Self(registered.map_err(io::Error::from)?))
    }

    /// Reads some bytes; 0 at end of file. A terminal whose other side is
    /// closed reports EIO, which counts as end of file.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(r) => return r,
                Err(_would_block) => {}
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// Sets the terminal size (the descriptor must be a terminal).
    pub fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        set_size(self.0.get_ref().as_fd(), width, height)
    }
}

/// Sets the size of the terminal `fd`.
pub fn set_size(fd: std::os::fd::BorrowedFd<'_>, width: u16, height: u16) -> io::Result<()> {
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
        let deadline = Instant::now() + limit;
        let conn = loop {
            match self.listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(limit))?;
        let mut name = [0u8; 256];
        let mut iov = [io::IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = nix::sys::socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut received = None;
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = cmsg {
                for fd in fds {
                    // SAFETY: the kernel just installed `fd` in our table for
                    // this message; nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    if received.is_none() {
                        received = Some(owned);
                    }
                }
            }
        }
        received.ok_or_else(|| io::Error::other("no terminal descriptor on the console socket"))
    }
}
