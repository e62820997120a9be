//! The QEMU vhost-user-gpu display protocol (`docs/interop/vhost-user-gpu.rst`
//! in QEMU): the socket the frontend hands over with `GPU_SET_SOCKET`, on
//! which the backend shows scanouts, pixels and the cursor, and asks the VMM
//! for its display configuration and EDID.
//!
//! [`GpuSocketDisplay`] is the device's [`DisplaySink`]. Its methods run on
//! whatever shard flushed, so they only queue (merging what a newer message
//! makes pointless, see `display_queue.rs`) and wake a writer task on the
//! display shard, which sends with ring I/O. A reader task on the same
//! shard takes the VMM's replies. A VMM that reads slowly therefore costs
//! memory bounded by a few frames, never a blocked guest; a VMM that never
//! answers a request costs one timeout.
//!
//! The VMM's display view (its `GET_DISPLAY_INFO` and `GET_EDID` answers) is
//! fetched once per socket and cached: the guest's own queries are answered
//! from the cache at once. [`GpuSocketDisplay::refresh`] fetches it again in
//! the background (the guest asked for its display configuration, or
//! cleared a display event); when a refresh finds the view changed, the
//! callback set with [`GpuSocketDisplay::on_change`] runs (the backend
//! raises `VIRTIO_GPU_EVENT_DISPLAY` with it). Refreshes never overlap: one
//! asked for while another runs makes that one go round once more.
//!
//! The device keeps its sink for its whole life, while sockets come and go
//! with frontend sessions (and QEMU sends a new one each time the driver
//! starts): [`GpuSocketDisplay::attach`] replaces the socket,
//! [`GpuSocketDisplay::detach`] drops it, and the sink stays the same object.

use std::mem;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use reactor::io::AsyncFd;
use vhost::vhost_user::gpu_message::{
    GpuBackendReq, VhostUserGpuCursorPos, VhostUserGpuCursorUpdate, VhostUserGpuEdidRequest,
    VhostUserGpuScanout, VhostUserGpuUpdate, VirtioGpuRespDisplayInfo, VirtioGpuRespGetEdid,
};
use vm_memory::ByteValued;

use super::display_queue::{Merged, Outbox, Outgoing};
use super::frame::{self, Header};
use super::link::{self, Waiters};
use crate::device::{CursorEvent, DisplaySink, ScanoutMode, VmmViewWait};
use crate::protocol::{DisplayMode, Rect};

/// `VHOST_USER_GPU_PROTOCOL_F_EDID` (bit 0): the VMM answers `GET_EDID`.
pub const GPU_PROTOCOL_F_EDID: u64 = 1 << 0;
/// Reply flag of the GPU protocol header.
const FLAG_REPLY: u32 = 0x4;
/// Largest reply accepted from the VMM (an EDID reply is 1056 bytes).
const MAX_REPLY: usize = 64 << 10;
/// Send buffer asked for on the GPU socket: a 1280x800 frame and then some.
const SEND_BUFFER: libc::c_int = 4 << 20;
/// Cursor images are 64x64, 4 bytes per pixel.
const CURSOR_BYTES: usize = 64 * 64 * 4;

/// Counters of the display link.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DisplayStats {
    /// Messages written to the socket.
    pub sent: u64,
    /// Unsent messages a newer one made pointless.
    pub replaced: u64,
    /// Of those, UPDATEs: frames whose pixels a newer frame superseded
    /// before the VMM read them (latest pixels win).
    pub updates_replaced: u64,
    /// Updates dropped: too many bytes pending, no socket, or no mode.
    pub dropped: u64,
    /// Requests the VMM did not answer in time.
    pub reply_timeouts: u64,
    /// Sockets lost to an error or to the VMM closing them.
    pub socket_errors: u64,
    /// Re-fetches of the VMM's display view after the first.
    pub vmm_refreshes: u64,
    /// Fetches that found the view changed (each ran the change callback).
    pub vmm_changes: u64,
}

/// Called (on the display shard) when the VMM's display view changed.
pub type DisplayChanged = Arc<dyn Fn() + Send + Sync>;

/// The re-fetch state of the current link.
#[derive(Debug, Default)]
struct Refresh {
    /// A fetch (the handshake's or a refresh) is under way.
    running: bool,
    /// Asked for while running: go round once more.
    again: bool,
    /// The guest asked before the VMM's view was known (it was answered
    /// from the device's own modes): the first view counts as a change.
    answered_without_vmm: bool,
}

/// What the VMM told us about its display (cached per socket).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VmmDisplay {
    /// `GET_PROTOCOL_FEATURES` answer.
    pub protocol_features: Option<u64>,
    /// `GET_DISPLAY_INFO` answer: the VMM's preferred mode per scanout.
    pub modes: Option<Vec<DisplayMode>>,
    /// `GET_EDID` answers, per scanout.
    pub edid: Vec<Option<Vec<u8>>>,
}

struct Link {
    generation: u64,
    fd: AsyncFd,
    outbox: Outbox,
    waiters: Waiters<Vec<u8>>,
    writer: Option<Waker>,
}

impl Link {
    fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Ends the link: pending requests fail, the socket is shut down so
    /// the reader's pending read completes, the writer wakes and leaves.
    fn close(mut self) {
        self.waiters.clear();
        self.outbox.clear();
        // SAFETY: shutdown(2) takes no memory; the fd is open (owned by
        // `self.fd`).
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
        self.wake_writer();
    }
}

struct State {
    generation: u64,
    link: Option<Link>,
    /// Current mode per scanout, replayed to a newly attached socket.
    modes: Vec<Option<ScanoutMode>>,
    vmm: VmmDisplay,
    stats: DisplayStats,
    refresh: Refresh,
    on_change: Option<DisplayChanged>,
    /// The current link's first fetch is over.
    first_view: bool,
    /// Waiting for the first fetch (`vmm_view_pending`).
    view_waiters: Vec<Waker>,
}

impl State {
    fn wake_view_waiters(&mut self) {
        for w in self.view_waiters.drain(..) {
            w.wake();
        }
    }

    fn link(&mut self, generation: u64) -> Option<&mut Link> {
        self.link.as_mut().filter(|l| l.generation == generation)
    }

    fn count(&mut self, m: Merged) {
        self.stats.replaced += m.replaced;
        self.stats.dropped += m.dropped;
    }
}

type Shared = Arc<Mutex<State>>;

/// The display sink that speaks the QEMU GPU socket protocol.
pub struct GpuSocketDisplay {
    shard: reactor::ShardHandle,
    state: Shared,
    num_scanouts: u32,
    reply_timeout: Duration,
}

impl GpuSocketDisplay {
    /// A sink with no socket yet; its tasks will run on `shard`. Requests
    /// to the VMM give up after `reply_timeout`.
    pub fn new(shard: reactor::ShardHandle, num_scanouts: u32, reply_timeout: Duration) -> Self {
        let num_scanouts = num_scanouts.max(1);
        GpuSocketDisplay {
            shard,
            state: Arc::new(Mutex::new(State {
                generation: 0,
                link: None,
                modes: vec![None; num_scanouts as usize],
                vmm: VmmDisplay::default(),
                stats: DisplayStats::default(),
                refresh: Refresh::default(),
                on_change: None,
                first_view: false,
                view_waiters: Vec::new(),
            })),
            num_scanouts,
            reply_timeout,
        }
    }

    /// Starts talking on `fd` (replacing any previous socket): current
    /// scanout modes are announced again, then the VMM is asked for its
    /// protocol features, display info and EDIDs.
    pub fn attach(&self, fd: OwnedFd) {
        grow_send_buffer(&fd);
        let fd = AsyncFd::new(fd);
        let generation = {
            let mut st = link::lock(&self.state);
            if let Some(old) = st.link.take() {
                old.close();
            }
            st.generation += 1;
            st.vmm = VmmDisplay::default();
            // The handshake's fetch is the first.
            st.refresh = Refresh {
                running: true,
                ..Refresh::default()
            };
            st.first_view = false;
            st.wake_view_waiters();
            let mut outbox = Outbox::new(self.num_scanouts);
            for (i, m) in st.modes.iter().enumerate() {
                if let Some(m) = m {
                    outbox.push_scanout(i as u32, m.width, m.height);
                }
            }
            st.link = Some(Link {
                generation: st.generation,
                fd: fd.clone(),
                outbox,
                waiters: Waiters::default(),
                writer: None,
            });
            st.generation
        };
        let state = self.state.clone();
        let (timeout, scanouts) = (self.reply_timeout, self.num_scanouts);
        let started = self.shard.run(move || {
            reactor::spawn_local_named(
                "gpu-socket-reader",
                reader(state.clone(), generation, fd.clone()),
            );
            reactor::spawn_local_named(
                "gpu-socket-handshake",
                handshake(state.clone(), generation, timeout, scanouts),
            );
            reactor::spawn_local_named("gpu-socket-writer", writer(state, generation, fd));
        });
        if !started {
            tracing::error!("display shard is gone; the GPU socket is not served");
            self.detach();
        }
    }

    /// Drops the socket (session over). Later sink calls are dropped until
    /// the next [`attach`](Self::attach).
    pub fn detach(&self) {
        let mut st = link::lock(&self.state);
        st.generation += 1;
        if let Some(old) = st.link.take() {
            old.close();
        }
        st.wake_view_waiters();
    }

    pub fn is_attached(&self) -> bool {
        link::lock(&self.state).link.is_some()
    }

    /// Runs `f` (on the display shard, no lock held) whenever a fetch finds
    /// the VMM's display view changed.
    pub fn on_change(&self, f: DisplayChanged) {
        link::lock(&self.state).on_change = Some(f);
    }

    /// Fetches the VMM's display view again, in the background (nothing
    /// waits for it; without a socket it does nothing).
    pub fn refresh(&self) {
        let generation = {
            let mut st = link::lock(&self.state);
            let generation = st.generation;
            if st.link(generation).is_none() {
                return;
            }
            if st.refresh.running {
                st.refresh.again = true;
                return;
            }
            st.refresh.running = true;
            generation
        };
        let state = self.state.clone();
        let (timeout, scanouts) = (self.reply_timeout, self.num_scanouts);
        let task_state = state.clone();
        let started = self.shard.run(move || {
            reactor::spawn_local_named(
                "gpu-socket-refresh",
                fetch_until_settled(task_state, generation, timeout, scanouts, false),
            );
        });
        if !started {
            link::lock(&state).refresh.running = false;
        }
    }

    /// What the VMM answered on the current socket so far.
    pub fn vmm_display(&self) -> VmmDisplay {
        link::lock(&self.state).vmm.clone()
    }

    pub fn stats(&self) -> DisplayStats {
        link::lock(&self.state).stats
    }

    /// Messages waiting for the VMM on the current socket (bounded per
    /// scanout whatever the guest sends, `display_queue.rs`).
    pub fn queued_messages(&self) -> usize {
        link::lock(&self.state)
            .link
            .as_ref()
            .map_or(0, |l| l.outbox.len())
    }
}

impl DisplaySink for GpuSocketDisplay {
    fn vmm_modes(&self) -> Option<Vec<DisplayMode>> {
        link::lock(&self.state).vmm.modes.clone()
    }

    fn vmm_view_pending(&self) -> Option<VmmViewWait> {
        let st = link::lock(&self.state);
        let generation = st.generation;
        if st.first_view || st.link.as_ref().is_none_or(|l| l.generation != generation) {
            return None;
        }
        Some(Box::pin(FirstView {
            state: self.state.clone(),
            generation,
        }))
    }

    fn display_info_asked(&self) {
        {
            let mut st = link::lock(&self.state);
            if st.vmm.modes.is_none() {
                st.refresh.answered_without_vmm = true;
            }
        }
        self.refresh();
    }

    fn vmm_edid(&self, scanout: u32) -> Option<Vec<u8>> {
        link::lock(&self.state)
            .vmm
            .edid
            .get(scanout as usize)
            .cloned()
            .flatten()
    }

    fn scanout(&self, scanout: u32, mode: Option<ScanoutMode>) {
        let mut st = link::lock(&self.state);
        let Some(slot) = st.modes.get_mut(scanout as usize) else {
            return;
        };
        if *slot == mode {
            // The guest set up what is already shown (Linux's dumb-buffer
            // path sends SET_SCANOUT with every frame): telling the VMM
            // again would make it build a new surface and drop the
            // updates still queued for this one.
            return;
        }
        *slot = mode;
        let (w, h) = mode.map_or((0, 0), |m| (m.width, m.height));
        let merged = match st.link.as_mut() {
            Some(l) => {
                let m = l.outbox.push_scanout(scanout, w, h);
                l.wake_writer();
                m
            }
            None => return,
        };
        // Unsent frames of the old mode: superseded, like merged ones.
        st.stats.updates_replaced += merged.updates_replaced;
        st.count(merged);
    }

    fn backlogged(&self, scanout: u32) -> bool {
        link::lock(&self.state)
            .link
            .as_ref()
            .is_some_and(|l| l.outbox.backlogged(scanout))
    }

    fn pixel_buffer(&self, len: usize) -> Vec<u8> {
        match link::lock(&self.state).link.as_mut() {
            Some(l) => l.outbox.buffer(len),
            None => Vec::with_capacity(len),
        }
    }

    fn update(&self, scanout: u32, rect: Rect, pixels: Vec<u8>) {
        let mut st = link::lock(&self.state);
        let mode = st.modes.get(scanout as usize).copied().flatten();
        let expected = rect.width as usize * rect.height as usize * 4;
        let fits = mode.is_some_and(|m| rect.fits_within(m.width, m.height));
        if !fits || pixels.len() != expected || rect.is_empty() {
            // QEMU paints an UPDATE into the surface its SCANOUT created;
            // one without a fitting mode would write outside it.
            st.stats.dropped += 1;
            return;
        }
        let merged = match st.link.as_mut() {
            Some(l) => {
                let m = l.outbox.push_update(scanout, rect, pixels);
                l.wake_writer();
                m
            }
            None => {
                st.stats.dropped += 1;
                return;
            }
        };
        st.stats.updates_replaced += merged.updates_replaced;
        st.count(merged);
    }

    fn cursor(&self, event: CursorEvent) {
        let mut st = link::lock(&self.state);
        let merged = match st.link.as_mut() {
            Some(l) => {
                let m = l.outbox.push_cursor(event);
                l.wake_writer();
                m
            }
            None => return,
        };
        st.count(merged);
    }
}

/// Asks for a send buffer that holds a whole frame: with the default
/// (about 200 KiB) a 4 MiB UPDATE takes twenty round trips of "VMM reads,
/// writer wakes". The kernel caps it at `net.core.wmem_max`; if it refuses,
/// the default stays (slower, still correct).
fn grow_send_buffer(fd: &OwnedFd) {
    let want: libc::c_int = SEND_BUFFER;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local;
    // the fd is open (borrowed from `fd`).
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&want as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "GPU socket: SO_SNDBUF not raised: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Ends link `generation` after an I/O failure (once: later calls for an
/// older generation do nothing). `None`: the VMM closed the socket, which
/// is routine (QEMU does it whenever the guest driver stops).
fn fail(state: &Shared, generation: u64, error: Option<&str>) {
    let mut st = link::lock(state);
    if st.link(generation).is_none() {
        return;
    }
    match error {
        Some(why) => tracing::warn!(
            "GPU socket: {why}; display output is dropped until the VMM sends a new socket"
        ),
        None => tracing::info!("the VMM closed the GPU socket; display output stops"),
    }
    st.stats.socket_errors += 1;
    if let Some(l) = st.link.take() {
        l.close();
    }
    st.wake_view_waiters();
}

/// Resolves when link `generation`'s first fetch is over or the link is
/// gone.
struct FirstView {
    state: Shared,
    generation: u64,
}

impl std::future::Future for FirstView {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let mut st = link::lock(&self.state);
        if st.first_view || st.link(self.generation).is_none() {
            return std::task::Poll::Ready(());
        }
        st.view_waiters.push(cx.waker().clone());
        std::task::Poll::Pending
    }
}

enum Next {
    Send(Outgoing),
    Stop,
}

/// Sends queued messages until the link ends.
async fn writer(state: Shared, generation: u64, fd: AsyncFd) {
    loop {
        let next = link::next_item(state.clone(), move |st: &mut State, waker: &Waker| {
            let Some(l) = st.link(generation) else {
                return Some(Next::Stop);
            };
            match l.outbox.pop() {
                Some(m) => Some(Next::Send(m)),
                None => {
                    l.writer = Some(waker.clone());
                    None
                }
            }
        })
        .await;
        let Next::Send(msg) = next else {
            return;
        };
        let Some((head, bulk)) = encode(msg) else {
            continue;
        };
        let (res, _) = fd.write_all(head).await;
        let (res, sent) = match (res, bulk) {
            (Ok(()), Some(bulk)) => {
                let (res, buf) = fd.write_all(bulk).await;
                (res, Some(buf))
            }
            (res, _) => (res, None),
        };
        if let Err(e) = res {
            fail(&state, generation, Some(&format!("write failed: {e}")));
            return;
        }
        let mut st = link::lock(&state);
        st.stats.sent += 1;
        if let (Some(l), Some(buf)) = (st.link(generation), sent) {
            l.outbox.recycle(buf);
        }
    }
}

/// Takes the VMM's replies until the link ends.
async fn reader(state: Shared, generation: u64, fd: AsyncFd) {
    loop {
        match link::read_message(&fd, MAX_REPLY).await {
            Ok(Some((h, payload))) => {
                let mut st = link::lock(&state);
                let Some(l) = st.link(generation) else {
                    return;
                };
                if h.flags & FLAG_REPLY == 0 {
                    tracing::debug!(
                        request = h.request,
                        "VMM sent a request on the GPU socket; ignored"
                    );
                } else if !l.waiters.complete(h.request, payload) {
                    tracing::debug!(
                        request = h.request,
                        "unsolicited reply on the GPU socket; ignored"
                    );
                }
            }
            Ok(None) => return fail(&state, generation, None),
            Err(e) => return fail(&state, generation, Some(&format!("read failed: {e}"))),
        }
    }
}

#[derive(Debug)]
enum RequestError {
    /// No reply within the timeout.
    Timeout,
    /// The link ended first.
    Gone,
}

/// Sends a request and waits (at most `timeout`) for its reply.
async fn request(
    state: &Shared,
    generation: u64,
    code: GpuBackendReq,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, RequestError> {
    let mut rx = {
        let mut st = link::lock(state);
        let l = st.link(generation).ok_or(RequestError::Gone)?;
        let rx = l.waiters.push(code as u32);
        l.outbox.push_request(code as u32, payload);
        l.wake_writer();
        rx
    };
    match reactor::time::timeout(timeout, rx.recv()).await {
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(RequestError::Gone),
        Err(_) => {
            let mut st = link::lock(state);
            if st.link(generation).is_some() {
                st.stats.reply_timeouts += 1;
            }
            tracing::warn!(
                "VMM did not answer {code:?} on the GPU socket within {timeout:?}; going on without it"
            );
            Err(RequestError::Timeout)
        }
    }
}

/// Sends a notification (no reply expected).
fn notify(state: &Shared, generation: u64, code: GpuBackendReq, payload: Vec<u8>) {
    let mut st = link::lock(state);
    if let Some(l) = st.link(generation) {
        l.outbox.push_request(code as u32, payload);
        l.wake_writer();
    }
}

/// Learns what the VMM supports and prefers; every answer is optional.
async fn handshake(state: Shared, generation: u64, timeout: Duration, scanouts: u32) {
    let features = match request(
        &state,
        generation,
        GpuBackendReq::GET_PROTOCOL_FEATURES,
        Vec::new(),
        timeout,
    )
    .await
    {
        Ok(p) => frame::parse::<u64>(&p).unwrap_or(0),
        Err(RequestError::Timeout) => 0,
        Err(RequestError::Gone) => return,
    };
    let accepted = features & GPU_PROTOCOL_F_EDID;
    link::lock(&state).vmm.protocol_features = Some(features);
    notify(
        &state,
        generation,
        GpuBackendReq::SET_PROTOCOL_FEATURES,
        accepted.to_ne_bytes().to_vec(),
    );
    fetch_until_settled(state, generation, timeout, scanouts, true).await;
}

/// Fetches the VMM's display view, again while refreshes were asked for
/// meanwhile, and runs the change callback after each fetch that changed
/// it. `first`: the handshake's fetch, a change only if the guest was
/// already answered without the VMM's view.
async fn fetch_until_settled(
    state: Shared,
    generation: u64,
    timeout: Duration,
    scanouts: u32,
    first: bool,
) {
    let mut first = first;
    loop {
        let before = {
            let st = link::lock(&state);
            (st.vmm.modes.clone(), st.vmm.edid.clone())
        };
        if fetch_display(&state, generation, timeout, scanouts)
            .await
            .is_err()
        {
            return;
        }
        let (changed, again) = {
            let mut st = link::lock(&state);
            if st.link(generation).is_none() {
                return;
            }
            let changed = if first {
                st.refresh.answered_without_vmm && st.vmm.modes.is_some()
            } else {
                st.stats.vmm_refreshes += 1;
                (&st.vmm.modes, &st.vmm.edid) != (&before.0, &before.1)
            };
            if changed {
                st.stats.vmm_changes += 1;
            }
            if first {
                st.first_view = true;
                st.wake_view_waiters();
            }
            let again = mem::take(&mut st.refresh.again);
            st.refresh.running = again;
            (changed.then(|| st.on_change.clone()).flatten(), again)
        };
        if let Some(f) = changed {
            tracing::info!("the VMM's display configuration changed");
            f();
        }
        if !again {
            return;
        }
        first = false;
    }
}

/// One fetch of the VMM's display info and (when it takes `GET_EDID`) of
/// every scanout's EDID into the cache. An answer that does not come in
/// time leaves the cached one; `Err`: the link ended.
async fn fetch_display(
    state: &Shared,
    generation: u64,
    timeout: Duration,
    scanouts: u32,
) -> Result<(), RequestError> {
    match request(
        state,
        generation,
        GpuBackendReq::GET_DISPLAY_INFO,
        Vec::new(),
        timeout,
    )
    .await
    {
        Ok(p) => match parse_display_info(&p) {
            Some(modes) => {
                // Every GET_DISPLAY_INFO of the guest refreshes the view:
                // logged when it is new or changed, not once per command.
                let changed = link::lock(state).vmm.modes.as_ref() != Some(&modes);
                if changed {
                    tracing::info!(?modes, "VMM display info");
                    if let Some(n) = modes.iter().skip(scanouts as usize).position(|m| m.enabled) {
                        tracing::warn!(
                            "the VMM shows scanout {} enabled but this device has {scanouts} \
                             (--outputs must be QEMU's max_outputs)",
                            n + scanouts as usize
                        );
                    }
                } else {
                    tracing::debug!("VMM display info unchanged");
                }
                link::lock(state).vmm.modes = Some(modes);
            }
            None => tracing::warn!(len = p.len(), "malformed GET_DISPLAY_INFO reply; ignored"),
        },
        Err(RequestError::Timeout) => {}
        Err(RequestError::Gone) => return Err(RequestError::Gone),
    }

    // What the handshake accepted: the VMM's features, EDID only.
    let features = link::lock(state).vmm.protocol_features.unwrap_or(0);
    if features & GPU_PROTOCOL_F_EDID == 0 {
        return Ok(());
    }
    for s in 0..scanouts {
        let req = VhostUserGpuEdidRequest { scanout_id: s };
        match request(
            state,
            generation,
            GpuBackendReq::GET_EDID,
            req.as_slice().to_vec(),
            timeout,
        )
        .await
        {
            Ok(p) => {
                let edid = parse_edid(&p);
                let mut st = link::lock(state);
                let slot = s as usize;
                if st.vmm.edid.len() <= slot {
                    st.vmm.edid.resize(slot + 1, None);
                }
                st.vmm.edid[slot] = edid;
            }
            Err(RequestError::Timeout) => {}
            Err(RequestError::Gone) => return Err(RequestError::Gone),
        }
    }
    Ok(())
}

fn parse_display_info(payload: &[u8]) -> Option<Vec<DisplayMode>> {
    let info = frame::parse::<VirtioGpuRespDisplayInfo>(payload)?;
    Some(
        info.pmodes
            .iter()
            .map(|m| DisplayMode {
                rect: Rect::new(m.r.x, m.r.y, m.r.width, m.r.height),
                enabled: m.enabled != 0,
                flags: m.flags,
            })
            .collect(),
    )
}

fn parse_edid(payload: &[u8]) -> Option<Vec<u8>> {
    let resp = frame::parse::<VirtioGpuRespGetEdid>(payload)?;
    let n = (resp.size as usize).min(resp.edid.len());
    Some(resp.edid[..n].to_vec())
}

fn with_header(code: GpuBackendReq, body: &[u8], extra: usize) -> Option<Vec<u8>> {
    let size = body.len().checked_add(extra)?;
    u32::try_from(size).ok()?;
    let mut out = Vec::with_capacity(frame::HEADER_SIZE + body.len());
    let h = Header {
        request: code as u32,
        flags: 0,
        size: size as u32,
    };
    out.extend_from_slice(&h.to_bytes());
    out.extend_from_slice(body);
    Some(out)
}

/// The bytes of one message: the header and fixed part, and the pixels of
/// an `UPDATE` as a second buffer (sent as is, never copied).
fn encode(msg: Outgoing) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    match msg {
        Outgoing::Request { code, payload } => {
            let code = GpuBackendReq::try_from(code).ok()?;
            Some((with_header(code, &payload, 0)?, None))
        }
        Outgoing::Scanout {
            scanout,
            width,
            height,
        } => {
            let body = VhostUserGpuScanout {
                scanout_id: scanout,
                width,
                height,
            };
            Some((
                with_header(GpuBackendReq::SCANOUT, body.as_slice(), 0)?,
                None,
            ))
        }
        Outgoing::Update {
            scanout,
            rect,
            pixels,
        } => {
            let body = VhostUserGpuUpdate {
                scanout_id: scanout,
                x: rect.x,
                y: rect.y,
                width: rect.width,
                height: rect.height,
            };
            let head = with_header(GpuBackendReq::UPDATE, body.as_slice(), pixels.len())?;
            Some((head, Some(pixels)))
        }
        Outgoing::Cursor(CursorEvent::Move { scanout, x, y }) => {
            let pos = cursor_pos(scanout, x, y);
            Some((
                with_header(GpuBackendReq::CURSOR_POS, pos.as_slice(), 0)?,
                None,
            ))
        }
        Outgoing::Cursor(CursorEvent::Update {
            scanout,
            x,
            y,
            hot_x,
            hot_y,
            image,
        }) => {
            let pos = cursor_pos(scanout, x, y);
            let Some(mut image) = image else {
                return Some((
                    with_header(GpuBackendReq::CURSOR_POS_HIDE, pos.as_slice(), 0)?,
                    None,
                ));
            };
            image.resize(CURSOR_BYTES, 0);
            let body = VhostUserGpuCursorUpdate { pos, hot_x, hot_y };
            let mut head =
                with_header(GpuBackendReq::CURSOR_UPDATE, body.as_slice(), CURSOR_BYTES)?;
            head.extend_from_slice(&image);
            Some((head, None))
        }
    }
}

fn cursor_pos(scanout: u32, x: i32, y: i32) -> VhostUserGpuCursorPos {
    // The wire fields are u32; QEMU reads them back as signed positions.
    VhostUserGpuCursorPos {
        scanout_id: scanout,
        x: x as u32,
        y: y as u32,
    }
}

// The layouts QEMU reads (vhost-user-gpu.rst).
const _: () = assert!(mem::size_of::<VhostUserGpuUpdate>() == 20);
const _: () = assert!(mem::size_of::<VirtioGpuRespDisplayInfo>() == 408);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_is_encoded_as_header_struct_then_pixels() {
        let (head, bulk) = encode(Outgoing::Update {
            scanout: 1,
            rect: Rect::new(2, 3, 1, 1),
            pixels: vec![9, 8, 7, 6],
        })
        .unwrap();
        assert_eq!(head.len(), 12 + 20);
        let h = Header::from_bytes(head[..12].try_into().unwrap());
        assert_eq!((h.request, h.flags, h.size), (8, 0, 24));
        assert_eq!(&head[12..16], &1u32.to_ne_bytes());
        assert_eq!(bulk.unwrap(), vec![9, 8, 7, 6]);
    }

    #[test]
    fn cursor_image_is_padded_to_64x64() {
        let (head, bulk) = encode(Outgoing::Cursor(CursorEvent::Update {
            scanout: 0,
            x: 5,
            y: 6,
            hot_x: 1,
            hot_y: 2,
            image: Some(vec![1; 16]),
        }))
        .unwrap();
        assert!(bulk.is_none());
        assert_eq!(head.len(), 12 + 20 + CURSOR_BYTES);
        let h = Header::from_bytes(head[..12].try_into().unwrap());
        assert_eq!((h.request, h.size as usize), (6, 20 + CURSOR_BYTES));
    }
}
