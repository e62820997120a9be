//! The listening socket: one frontend at a time, each served on a
//! dedicated control thread (a plain thread: `Device` calls wait on the
//! owner shard, which only a non-shard thread may do). When a frontend
//! leaves or breaks the protocol the device is reset and the next one is
//! accepted.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::Backend;

/// Listens for vhost-user frontends on a unix socket path.
pub struct Server {
    listener: UnixListener,
    /// A second handle on the listening socket for [`ServerStop`]: it stays
    /// valid even after the `Server` is gone.
    stop_handle: Arc<UnixListener>,
    path: PathBuf,
    backend: Arc<Backend>,
    stop: Arc<StopFlag>,
}

#[derive(Default)]
struct StopFlag {
    stopped: AtomicBool,
}

/// Stops a [`Server`] from another thread (a signal handler thread).
#[derive(Clone)]
pub struct ServerStop {
    stop: Arc<StopFlag>,
    listener: Arc<UnixListener>,
    backend: Arc<Backend>,
}

impl ServerStop {
    /// Stops accepting and ends the running session; [`Server::run`] then
    /// returns once the device is reset.
    pub fn stop(&self) {
        self.stop.stopped.store(true, Ordering::SeqCst);
        // On Linux, shutdown(2) on a listening socket wakes a blocked
        // accept(2) with EINVAL.
        // SAFETY: no memory arguments; the fd is open (owned by
        // `self.listener`), and shutdown acts on the socket every handle
        // shares.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        self.backend.interrupt();
    }
}

impl Server {
    /// Binds `path` (mode 0600). A stale socket file is removed; a socket
    /// someone still listens on is an error, as is any other file there.
    pub fn bind(path: impl AsRef<Path>, backend: Arc<Backend>) -> io::Result<Server> {
        let path = path.as_ref().to_path_buf();
        remove_stale(&path)?;
        let listener = bind_private(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        let stop_handle = Arc::new(listener.try_clone()?);
        Ok(Server {
            listener,
            stop_handle,
            path,
            backend,
            stop: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stopper(&self) -> ServerStop {
        ServerStop {
            stop: self.stop.clone(),
            listener: self.stop_handle.clone(),
            backend: self.backend.clone(),
        }
    }

    /// Accepts frontends one at a time until stopped.
    pub fn run(&self) -> io::Result<()> {
        tracing::info!(path = %self.path.display(), "waiting for a vhost-user frontend");
        while !self.stop.stopped.load(Ordering::SeqCst) {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(_) if self.stop.stopped.load(Ordering::SeqCst) => break,
                Err(e) if is_transient(&e) => {
                    tracing::warn!("accept failed: {e}; retrying");
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(e) => return Err(e),
            };
            tracing::info!("vhost-user frontend connected");
            self.serve_on_control_thread(stream)?;
        }
        tracing::info!("stopped accepting frontends");
        Ok(())
    }

    fn serve_on_control_thread(&self, stream: UnixStream) -> io::Result<()> {
        let backend = self.backend.clone();
        let session = thread::Builder::new()
            .name("vhost-control".into())
            .spawn(move || backend.serve_stream(stream))?;
        if session.join().is_err() {
            tracing::error!("the session thread panicked; resetting the device");
            let _ = self.backend.device().reset();
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EINTR
                | libc::ECONNABORTED
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
        )
    )
}

/// Removes a socket file nobody listens on any more.
fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another backend is listening on {}", path.display()),
        ));
    }
    tracing::info!(path = %path.display(), "removing stale socket");
    fs::remove_file(path)
}

/// Binds with a umask that leaves the socket 0600 from its first moment.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    // SAFETY: umask(2) takes and returns a mode; no memory involved. It is
    // process-wide, so it is restored right after the bind.
    let old = unsafe { libc::umask(0o177) };
    let res = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    res
}
