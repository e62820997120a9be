//! The render worker process: one virglrenderer, serving one device process
//! over a socketpair (see `wire.rs`, and `pool.rs` for the parent side).
//!
//! The device process starts it by re-executing its own binary with the
//! hidden first argument [`WORKER_ARG`], the socket on fd 3 and the shared
//! read-back area (a memfd) on fd 4. `gpu-reactor` and `loadgen` call
//! [`run_if_requested`] first thing in `main`.
//!
//! Inside, it is the in-process [`Virgl`] renderer on a one-shard reactor:
//! requests are carried out in arrival order; fences are tasks that answer
//! when the library reports them, so a long GPU job never holds up the
//! replies behind it. The worker dies with its parent (`PR_SET_PDEATHSIG`).

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::wire::{self, Event, MemRegion, Request, RC_WORKER_ERROR};
use super::{read_capsets, Virgl};
use crate::backing::{Backing, GuestMem};
use crate::protocol::ProtocolError;
use crate::render::Renderer;

/// The hidden first argument that makes a binary a render worker.
pub const WORKER_ARG: &str = "--render-worker";
/// Where the worker finds its socket and its shared read-back area.
pub const SOCKET_FD: i32 = 3;
pub const SHM_FD: i32 = 4;

/// Runs a render worker and returns its exit code if this process was
/// started as one; `None` otherwise (carry on with `main`).
pub fn run_if_requested() -> Option<ExitCode> {
    if std::env::args_os().nth(1).is_none_or(|a| a != WORKER_ARG) {
        return None;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    // The parent may block termination signals on its threads; a worker
    // takes its default dispositions back.
    // SAFETY: an empty, initialised set handed to sigprocmask.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    // SAFETY: plain prctl with integer arguments; the result is checked
    // below through getppid (a parent gone before this call).
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } == 1 {
        return Some(ExitCode::FAILURE);
    }
    // SAFETY: the parent put these descriptors here for us alone (dup2 in
    // its pre_exec); nothing else in this fresh process owns them.
    let (sock, shm) = unsafe {
        (
            OwnedFd::from_raw_fd(SOCKET_FD),
            OwnedFd::from_raw_fd(SHM_FD),
        )
    };
    match reactor::block_on(serve(sock, shm)) {
        Ok(Ok(())) => Some(ExitCode::SUCCESS),
        Ok(Err(e)) => {
            tracing::error!(error = %e, pid = std::process::id(), "render worker stops");
            Some(ExitCode::FAILURE)
        }
        Err(e) => {
            tracing::error!(error = %e, "render worker has no reactor");
            Some(ExitCode::FAILURE)
        }
    }
}

/// The shared read-back area, mapped writable here.
struct Shm {
    ptr: *mut u8,
    len: usize,
}

impl Shm {
    fn map(fd: &OwnedFd) -> std::io::Result<Shm> {
        use std::os::fd::AsRawFd;
        let len = File::from(fd.try_clone()?).metadata()?.len() as usize;
        // SAFETY: a shared mapping of a memfd of `len` bytes; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Shm {
            ptr: ptr.cast(),
            len,
        })
    }

    fn write(&self, offset: u64, src: &[u8]) -> Result<(), ProtocolError> {
        let end = offset.checked_add(src.len() as u64);
        if end.is_none_or(|e| e > self.len as u64) {
            return Err(ProtocolError::OutOfMemory {
                requested: src.len() as u64,
            });
        }
        // SAFETY: `offset..offset+len` lies inside the mapping (checked);
        // the parent reads that span only after our reply.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(offset as usize), src.len())
        };
        Ok(())
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

async fn serve(sock: OwnedFd, shm: OwnedFd) -> Result<(), String> {
    let shm = Shm::map(&shm).map_err(|e| format!("cannot map the read-back area: {e}"))?;
    let mut virgl = Virgl::new()?;
    let sock = reactor::io::AsyncFd::new(sock);
    // One writer, so replies from fence tasks never interleave mid-frame.
    let (tx, mut rx) = reactor::channel::<Vec<u8>>();
    let out = sock.clone();
    let writer = reactor::spawn_local_named("worker-writer", async move {
        while let Some(frame) = rx.recv().await {
            if out.write_all(frame).await.0.is_err() {
                return;
            }
        }
    });
    let _ = tx.send(wire::encode_event(&Event::Ready(read_capsets())));
    let mut mem: GuestMem = GuestMemoryMmap::new();
    let mut fds: VecDeque<OwnedFd> = VecDeque::new();
    let mut buf = Vec::new();
    loop {
        let (r, mut b) = sock.recvmsg(Vec::with_capacity(256 << 10), 16).await;
        let msg = r.map_err(|e| format!("socket: {e}"))?;
        if msg.len == 0 {
            break; // the parent closed: we are done
        }
        fds.extend(msg.fds);
        buf.append(&mut b);
        for body in wire::split_frames(&mut buf).map_err(|e| e.to_string())? {
            let (seq, req) = wire::decode_request(&body).map_err(|e| e.to_string())?;
            let reply = move |rc: i32| wire::encode_event(&Event::Reply { seq, rc });
            // A memory table this worker cannot map is the end of it: it
            // would go on rendering with the old guest memory (or none).
            // The parent sees it exit and starts another, which gets the
            // table again.
            if let Request::MemTable(regions) = &req {
                mem = map_guest_memory(regions, &mut fds)
                    .map_err(|e| format!("cannot map the guest memory table: {e}"))?;
                let _ = tx.send(reply(0));
                continue;
            }
            if let Request::Fence { ctx, ring } = req {
                let wait = virgl.fence(ctx, ring);
                let tx = tx.clone();
                reactor::spawn_local_named("worker-fence", async move {
                    wait.await;
                    let _ = tx.send(reply(0));
                });
                continue;
            }
            let rc = match handle(&mut virgl, &mem, &shm, req) {
                Ok(()) => 0,
                Err(ProtocolError::RendererFailed(rc)) => rc,
                Err(e) => {
                    tracing::debug!(error = %e, "render worker request failed");
                    RC_WORKER_ERROR
                }
            };
            let _ = tx.send(reply(rc));
        }
    }
    drop(tx);
    let _ = writer.await;
    drop(virgl);
    Ok(())
}

fn handle(v: &mut Virgl, mem: &GuestMem, shm: &Shm, req: Request) -> Result<(), ProtocolError> {
    match req {
        // Handled by `serve`: a failure ends the worker.
        Request::MemTable(_) => Ok(()),
        Request::CtxCreate { ctx, capset, name } => v.create_context(ctx, capset, &name),
        Request::CtxDestroy(ctx) => {
            v.destroy_context(ctx);
            Ok(())
        }
        Request::Attach { ctx, res } => v.attach_resource(ctx, res),
        Request::Detach { ctx, res } => {
            v.detach_resource(ctx, res);
            Ok(())
        }
        Request::ResCreate { id, kind } => v.create_resource(id, &kind),
        Request::ResDestroy(id) => {
            v.destroy_resource(id);
            Ok(())
        }
        Request::Submit { ctx, ring, cmds } => v.submit(ctx, ring, &cmds),
        // Answered by its own task (see `serve`).
        Request::Fence { .. } => Ok(()),
        Request::Transfer2d {
            id,
            rect,
            offset,
            entries,
        } => {
            let backing = Backing::new(entries, mem)?;
            v.transfer_to_host_2d(id, rect, offset, &backing, mem)
        }
        Request::Transfer3d {
            ctx,
            t,
            to_host,
            entries,
        } => {
            let backing = Backing::new(entries, mem)?;
            v.transfer_3d(ctx, &t, to_host, &backing, mem)
        }
        Request::AttachBacking { id, entries } => {
            let backing = Backing::new(entries, mem)?;
            v.attach_backing(id, &backing, mem)
        }
        Request::DetachBacking(id) => v.detach_backing(id),
        Request::ReadRect {
            id,
            rect,
            shm_offset,
        } => {
            let mut px = Vec::new();
            v.read_rect(id, rect, &mut px)?;
            shm.write(shm_offset, &px)
        }
    }
}

/// Guest RAM as the parent has it: each region from the fd sent with it.
fn map_guest_memory(
    regions: &[MemRegion],
    fds: &mut VecDeque<OwnedFd>,
) -> Result<GuestMem, ProtocolError> {
    let bad = |r: &MemRegion| ProtocolError::BackingBeyondGuestMemory {
        addr: r.guest_addr,
        length: u32::try_from(r.size).unwrap_or(u32::MAX),
    };
    let mut mapped = Vec::with_capacity(regions.len());
    for r in regions {
        let fd = fds.pop_front().ok_or_else(|| bad(r))?;
        let size = usize::try_from(r.size).map_err(|_| bad(r))?;
        let file = Arc::new(File::from(fd));
        let region = MmapRegion::<()>::from_file(FileOffset::from_arc(file, r.file_offset), size)
            .map_err(|_| bad(r))?;
        mapped
            .push(GuestRegionMmap::new(region, GuestAddress(r.guest_addr)).ok_or_else(|| bad(r))?);
    }
    GuestMemoryMmap::from_regions(mapped)
        .map_err(|_| ProtocolError::BackingBeyondGuestMemory { addr: 0, length: 0 })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::*;

    /// The events a worker sent until it closed its socket.
    fn events_until_closed(sock: &mut UnixStream) -> Vec<Event> {
        let mut buf = Vec::new();
        let _ = sock.read_to_end(&mut buf);
        wire::split_frames(&mut buf)
            .unwrap()
            .iter()
            .map(|b| wire::decode_event(b).unwrap())
            .collect()
    }

    #[test]
    fn virgl_worker_that_cannot_map_a_memory_table_stops_instead_of_answering() {
        let _serial = super::super::tests::serial();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        // SAFETY: memfd_create with a static name; checked below.
        let raw = unsafe { libc::memfd_create(c"test-readback".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        let shm = unsafe { OwnedFd::from_raw_fd(raw) };
        File::from(shm.try_clone().unwrap()).set_len(4096).unwrap();
        let worker = std::thread::spawn(move || reactor::block_on(serve(theirs.into(), shm)));
        // A region sent without its fd: nothing to map it from. Then the
        // parent closes its side: a worker that answered the table and
        // went on would end cleanly here.
        let table = Request::MemTable(vec![MemRegion {
            guest_addr: 0,
            size: 1 << 20,
            file_offset: 0,
        }]);
        ours.write_all(&wire::encode_request(1, &table)).unwrap();
        ours.shutdown(std::net::Shutdown::Write).unwrap();
        let ended = worker.join().unwrap().unwrap();
        let err = ended.expect_err("the worker stops");
        assert!(err.contains("cannot map the guest memory table"), "{err}");
        let events = events_until_closed(&mut ours);
        assert!(
            matches!(events.as_slice(), [Event::Ready(_)]),
            "the table was answered: {events:?}"
        );
    }
}
