//! One frontend connection: the vhost-user message loop and what each
//! message does to the device.
//!
//! It runs on the session's control thread (`Device` calls wait briefly for
//! the owner shard, which a shard thread must never do). Frontend input is
//! checked before it is used: a message that is unknown, malformed (size,
//! descriptors, flags) or out of order ends the session with one log line
//! saying why; the server then resets the device and serves the next
//! frontend. A well-formed request the device refuses (a queue it cannot
//! start, a config range it does not have) is reported to the frontend
//! instead (`REPLY_ACK` status 1, or an empty config) and the session goes on.

use std::fmt;
use std::mem;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost::vhost_user::message::{
    FrontendReq, VhostUserInflight, VhostUserMemory, VhostUserMemoryRegion, VhostUserMsgValidator,
    VhostUserProtocolFeatures, VhostUserSingleMemoryRegion, VhostUserU64, VhostUserVirtioFeatures,
    VhostUserVringAddr, VhostUserVringState,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestAddressSpace};

use super::config_space::{ConfigAccess, ConfigError, ConfigSpace};
use super::frame::{self, FrameError, Header, Message};
use super::inflight::{self, InflightBuffer, InflightRegion};
use super::memory::{MemoryTable, RegionInfo, MAX_REGIONS};
use super::vring::{queue_kind, RingAddrs, Vring, NUM_QUEUES};
use super::Backend;
use crate::device::{DeviceError, QueueResume, QueueSetup, VIRTIO_RING_F_EVENT_IDX};
use crate::protocol::wire::VIRTIO_GPU_EVENT_DISPLAY;

/// Longest wait for commands in flight before a ring stops or the memory
/// table changes (a stalled GPU context must not hang the frontend).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// `SET_VRING_KICK/CALL/ERR` payload: bits 0..=7 index, bit 8 "no fd".
const VRING_INDEX_MASK: u64 = 0xff;
const VRING_NOFD: u64 = 0x100;

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The frontend closed the connection.
    Disconnected,
    /// The backend closed it; the reason names the message and the rule.
    Closed(String),
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEnd::Disconnected => f.write_str("frontend disconnected"),
            SessionEnd::Closed(why) => write!(f, "connection closed: {why}"),
        }
    }
}

/// What went wrong handling one message.
enum Fault {
    /// The frontend broke the protocol: end the session.
    Fatal(String),
    /// Well-formed but refused: tell the frontend, go on.
    Refused(String),
}

fn fatal(why: impl Into<String>) -> Fault {
    Fault::Fatal(why.into())
}

/// A reply payload and the descriptors that go with it.
struct Reply {
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Reply {
    fn bytes<T: ByteValued>(v: &T) -> Option<Reply> {
        Some(Reply {
            payload: v.as_slice().to_vec(),
            fds: Vec::new(),
        })
    }

    fn u64(v: u64) -> Option<Reply> {
        Reply::bytes(&VhostUserU64::new(v))
    }

    /// A `REPLY_ACK` status: 0 success, 1 failure.
    fn status(v: u64) -> Reply {
        Reply {
            payload: v.to_ne_bytes().to_vec(),
            fds: Vec::new(),
        }
    }
}

type Handled = Result<Option<Reply>, Fault>;

/// The protocol features this backend offers.
pub fn offered_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::SHMEM
}

pub(super) struct Session<'a> {
    backend: &'a Backend,
    stream: &'a UnixStream,
    /// Virtio features the driver accepted (`SET_FEATURES`).
    features: u64,
    /// Protocol features acknowledged (`SET_PROTOCOL_FEATURES`).
    protocol: VhostUserProtocolFeatures,
    memory: MemoryTable,
    vrings: [Vring; NUM_QUEUES],
    config: ConfigSpace,
    inflight: Option<Inflight>,
}

/// The inflight buffer of this session, mapped.
struct Inflight {
    /// Kept so the buffer's fd lives as long as the session uses it.
    _buffer: InflightBuffer,
    region: InflightRegion,
    /// Rings whose region was taken up (resubmitted) in this session: a
    /// later restart of the same ring goes on from where it stopped.
    recovered: [bool; NUM_QUEUES],
}

impl Inflight {
    fn new(buffer: InflightBuffer) -> Result<Inflight, inflight::InflightError> {
        let region = InflightRegion::map(&buffer)?;
        Ok(Inflight {
            _buffer: buffer,
            region,
            recovered: [false; NUM_QUEUES],
        })
    }
}

impl<'a> Session<'a> {
    pub fn new(backend: &'a Backend, stream: &'a UnixStream) -> Self {
        Session {
            backend,
            stream,
            features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            memory: MemoryTable::default(),
            vrings: Default::default(),
            config: {
                backend.config.reset();
                backend.config.clone()
            },
            inflight: None,
        }
    }

    /// Serves messages until the frontend leaves or breaks the protocol.
    pub fn run(&mut self) -> SessionEnd {
        loop {
            let msg = match frame::recv(self.stream) {
                Ok(m) => m,
                Err(FrameError::Closed) => return SessionEnd::Disconnected,
                Err(e) => return SessionEnd::Closed(e.to_string()),
            };
            let header = msg.header;
            let name = request_name(header.request);
            if header.is_reply() {
                return SessionEnd::Closed(format!(
                    "{name}: a request must not carry the reply flag"
                ));
            }
            tracing::debug!(request = %name, size = header.size, fds = msg.fds.len(), "vhost-user");
            let handled = self.handle(msg);
            // Decided after handling: SET_PROTOCOL_FEATURES that turns
            // REPLY_ACK on is itself acknowledged (as rust-vmm's frontend
            // expects; QEMU never asks for that one).
            let ack_wanted =
                header.need_reply() && self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
            let sent = match handled {
                Ok(Some(reply)) => self.send(header, &reply),
                Ok(None) if ack_wanted => self.send(header, &Reply::status(0)),
                Ok(None) => Ok(()),
                Err(Fault::Refused(why)) => {
                    tracing::warn!("vhost-user {name} refused: {why}");
                    if ack_wanted {
                        self.send(header, &Reply::status(1))
                    } else {
                        Ok(())
                    }
                }
                Err(Fault::Fatal(why)) => return SessionEnd::Closed(format!("{name}: {why}")),
            };
            if let Err(e) = sent {
                return SessionEnd::Closed(format!("{name}: cannot write the reply: {e}"));
            }
        }
    }

    fn send(&self, request: Header, reply: &Reply) -> std::io::Result<()> {
        let fds: Vec<_> = reply.fds.iter().map(|f| f.as_fd()).collect();
        frame::send(
            self.stream,
            Header::reply_to(request.request, reply.payload.len()),
            &reply.payload,
            &fds,
        )
    }

    fn handle(&mut self, msg: Message) -> Handled {
        let Message {
            header,
            payload,
            fds,
        } = msg;
        let Ok(req) = FrontendReq::try_from(header.request) else {
            return Err(fatal("unknown request"));
        };
        match req {
            FrontendReq::GET_FEATURES => {
                no_body(&payload, &fds)?;
                let f = self.backend.device.device_features()
                    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
                Ok(Reply::u64(f))
            }
            FrontendReq::SET_FEATURES => {
                let v = u64_body(&payload, &fds)?;
                self.features = v;
                let virtio = v & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
                self.backend
                    .device
                    .set_features(virtio)
                    .map_err(device_fault)?;
                // Without PROTOCOL_FEATURES there is no SET_VRING_ENABLE:
                // every ring is enabled, including one whose kick fd came
                // before the features (it would otherwise never start).
                if !self.protocol_features_negotiated() {
                    for i in 0..NUM_QUEUES {
                        self.vrings[i].enabled = true;
                    }
                }
                // A ring started before the features (its kick fd came
                // first) restarts with the ring features now acked.
                let event_idx = v & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
                for i in 0..NUM_QUEUES {
                    if self.vrings[i].started && self.vrings[i].event_idx != event_idx {
                        self.stop(i)?;
                    }
                    self.maybe_start(i)?;
                }
                Ok(None)
            }
            FrontendReq::GET_PROTOCOL_FEATURES => {
                no_body(&payload, &fds)?;
                Ok(Reply::u64(offered_protocol_features().bits()))
            }
            FrontendReq::SET_PROTOCOL_FEATURES => {
                let v = u64_body(&payload, &fds)?;
                let offered = offered_protocol_features();
                let asked = VhostUserProtocolFeatures::from_bits_truncate(v);
                if v & !offered.bits() != 0 {
                    return Err(fatal(format!(
                        "acknowledges protocol features {:#x} that were not offered",
                        v & !offered.bits()
                    )));
                }
                self.protocol = asked;
                Ok(None)
            }
            FrontendReq::SET_OWNER => {
                no_body(&payload, &fds)?;
                Ok(None)
            }
            FrontendReq::RESET_OWNER | FrontendReq::RESET_DEVICE => {
                no_body(&payload, &fds)?;
                if req == FrontendReq::RESET_DEVICE {
                    self.require(VhostUserProtocolFeatures::RESET_DEVICE)?;
                }
                self.reset_device()?;
                Ok(None)
            }
            FrontendReq::GET_QUEUE_NUM => {
                no_body(&payload, &fds)?;
                Ok(Reply::u64(NUM_QUEUES as u64))
            }
            FrontendReq::GET_MAX_MEM_SLOTS => {
                no_body(&payload, &fds)?;
                self.require(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)?;
                Ok(Reply::u64(MAX_REGIONS as u64))
            }
            FrontendReq::SET_MEM_TABLE => self.set_mem_table(&payload, fds),
            FrontendReq::ADD_MEM_REG => {
                self.require(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)?;
                let region = single_region(&payload)?;
                let fd = one_fd(fds)?;
                self.memory
                    .add(region, fd)
                    .map_err(|e| fatal(e.to_string()))?;
                self.memory_changed()
            }
            FrontendReq::REM_MEM_REG => {
                self.require(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)?;
                let region = single_region(&payload)?;
                // QEMU attaches the region's fd; it is not needed to remove it.
                if fds.len() > 1 {
                    return Err(fatal(format!("{} file descriptors (at most 1)", fds.len())));
                }
                // Commands still using the region finish before it goes.
                self.drain_in_flight("REM_MEM_REG")?;
                self.memory
                    .remove(region)
                    .map_err(|e| fatal(e.to_string()))?;
                self.memory_changed()
            }
            FrontendReq::SET_VRING_NUM => {
                let (i, num) = self.vring_state(&payload, &fds)?;
                let max = self.backend.max_queue_size;
                let size = u16::try_from(num)
                    .ok()
                    .filter(|s| *s > 0 && *s <= max && s.is_power_of_two())
                    .ok_or_else(|| {
                        fatal(format!("ring size {num} (a power of two up to {max})"))
                    })?;
                self.stopped_ring(i)?.size = Some(size);
                self.maybe_start(i)
            }
            FrontendReq::SET_VRING_ADDR => self.set_vring_addr(&payload, &fds),
            FrontendReq::SET_VRING_BASE => {
                let (i, num) = self.vring_state(&payload, &fds)?;
                let base = u16::try_from(num).map_err(|_| {
                    fatal(format!("ring base {num} does not fit a split ring index"))
                })?;
                self.stopped_ring(i)?.base = base;
                self.maybe_start(i)
            }
            FrontendReq::GET_VRING_BASE => {
                let (i, _) = self.vring_state(&payload, &fds)?;
                let base = self.stop(i)?;
                self.vrings[i].kick = None;
                Ok(Reply::bytes(&VhostUserVringState::new(
                    i as u32,
                    u32::from(base),
                )))
            }
            FrontendReq::SET_VRING_KICK => {
                let (i, fd) = vring_fd(&payload, fds)?;
                let Some(fd) = fd else {
                    return Err(fatal("a ring without a kick fd (polling) is not supported"));
                };
                // A new kick fd for a running ring: restart it on the new one.
                self.stop_if_started(i)?;
                let negotiated = self.protocol_features_negotiated();
                let v = &mut self.vrings[i];
                v.kick = Some(fd);
                // Without PROTOCOL_FEATURES there is no SET_VRING_ENABLE:
                // the kick fd enables the ring.
                if !negotiated {
                    v.enabled = true;
                }
                self.maybe_start(i)
            }
            FrontendReq::SET_VRING_CALL => {
                let (i, fd) = vring_fd(&payload, fds)?;
                // Replacing the call fd of a running ring restarts it where
                // it stopped.
                self.stop_if_started(i)?;
                self.vrings[i].call = fd;
                self.maybe_start(i)
            }
            FrontendReq::SET_VRING_ERR => {
                let (i, fd) = vring_fd(&payload, fds)?;
                self.vrings[i].err = fd;
                Ok(None)
            }
            FrontendReq::SET_VRING_ENABLE => {
                let (i, num) = self.vring_state(&payload, &fds)?;
                match num {
                    0 => {
                        self.stop_if_started(i)?;
                        self.vrings[i].enabled = false;
                        Ok(None)
                    }
                    1 => {
                        self.vrings[i].enabled = true;
                        self.maybe_start(i)
                    }
                    n => Err(fatal(format!("enable value {n} (0 or 1)"))),
                }
            }
            FrontendReq::GET_CONFIG => {
                self.require(VhostUserProtocolFeatures::CONFIG)?;
                no_fds(&fds)?;
                let access = ConfigAccess::parse(&payload).map_err(|e| fatal(e.to_string()))?;
                let bytes = match self.config.read(self.backend.device.config(), &access) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        tracing::warn!("vhost-user GET_CONFIG refused: {e}");
                        None
                    }
                };
                Ok(Some(Reply {
                    payload: access.reply(bytes.as_deref()),
                    fds: Vec::new(),
                }))
            }
            FrontendReq::SET_CONFIG => {
                self.require(VhostUserProtocolFeatures::CONFIG)?;
                no_fds(&fds)?;
                let access = ConfigAccess::parse(&payload).map_err(|e| fatal(e.to_string()))?;
                match self.config.write(&access) {
                    Ok(cleared) => {
                        // The guest handled a display event (ours, or the
                        // VMM's own: QEMU raises it and forwards the clear):
                        // look at the VMM's display again.
                        if cleared & VIRTIO_GPU_EVENT_DISPLAY != 0 {
                            self.backend.display.refresh();
                        }
                        Ok(None)
                    }
                    Err(e @ ConfigError::OutOfRange { .. }) => Err(Fault::Refused(e.to_string())),
                    Err(e) => Err(fatal(e.to_string())),
                }
            }
            FrontendReq::SET_BACKEND_REQ_FD => {
                self.require(VhostUserProtocolFeatures::BACKEND_REQ)?;
                if !payload.is_empty() {
                    return Err(fatal(format!(
                        "{}-byte payload (none expected)",
                        payload.len()
                    )));
                }
                let fd = one_fd(fds)?;
                self.backend.blob.attach(fd, self.protocol);
                Ok(None)
            }
            FrontendReq::GPU_SET_SOCKET => {
                if !payload.is_empty() {
                    return Err(fatal(format!(
                        "{}-byte payload (none expected)",
                        payload.len()
                    )));
                }
                let fd = one_fd(fds)?;
                self.backend.display.attach(fd);
                Ok(None)
            }
            FrontendReq::GET_INFLIGHT_FD => {
                self.require(VhostUserProtocolFeatures::INFLIGHT_SHMFD)?;
                no_fds(&fds)?;
                let req = frame::parse::<VhostUserInflight>(&payload)
                    .ok_or_else(|| wrong_size::<VhostUserInflight>(&payload))?;
                let buf = inflight::allocate(&req).map_err(|e| fatal(e.to_string()))?;
                let reply = VhostUserInflight::new(buf.size, 0, buf.num_queues, buf.queue_size);
                let fd = buf.fd.try_clone().map_err(|e| fatal(format!("dup: {e}")))?;
                // A request that expects a reply is never merely refused.
                self.inflight = Some(Inflight::new(buf).map_err(|e| fatal(e.to_string()))?);
                Ok(Some(Reply {
                    payload: reply.as_slice().to_vec(),
                    fds: vec![fd],
                }))
            }
            FrontendReq::SET_INFLIGHT_FD => {
                self.require(VhostUserProtocolFeatures::INFLIGHT_SHMFD)?;
                let req = frame::parse::<VhostUserInflight>(&payload)
                    .ok_or_else(|| wrong_size::<VhostUserInflight>(&payload))?;
                let fd = one_fd(fds)?;
                // A buffer that is short or may shrink is refused (and the
                // one the session had, if any, kept): mapping it could
                // fault the whole daemon.
                let buf = inflight::adopt(&req, fd).map_err(inflight_fault)?;
                self.inflight = Some(Inflight::new(buf).map_err(inflight_fault)?);
                Ok(None)
            }
            FrontendReq::GET_SHMEM_CONFIG => {
                self.require(VhostUserProtocolFeatures::SHMEM)?;
                no_body(&payload, &fds)?;
                Ok(Reply::bytes(&self.backend.blob.shmem_config()))
            }
            other => Err(fatal(format!("{other:?} is not supported by this backend"))),
        }
    }

    fn protocol_features_negotiated(&self) -> bool {
        self.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }

    fn require(&self, f: VhostUserProtocolFeatures) -> Result<(), Fault> {
        if self.protocol.contains(f) {
            Ok(())
        } else {
            Err(fatal(format!(
                "needs protocol feature {f:?}, which was not negotiated"
            )))
        }
    }

    fn set_mem_table(&mut self, payload: &[u8], fds: Vec<OwnedFd>) -> Handled {
        let head_len = mem::size_of::<VhostUserMemory>();
        let region_len = mem::size_of::<VhostUserMemoryRegion>();
        let head = payload
            .get(..head_len)
            .and_then(frame::parse::<VhostUserMemory>)
            .ok_or_else(|| fatal(format!("{}-byte payload", payload.len())))?;
        if !head.is_valid() {
            let n = head.num_regions;
            return Err(fatal(format!(
                "{n} regions (1..={MAX_REGIONS}, padding zero)"
            )));
        }
        let n = head.num_regions as usize;
        if payload.len() != head_len + n * region_len {
            return Err(fatal(format!(
                "{n} regions need {} bytes, got {}",
                head_len + n * region_len,
                payload.len()
            )));
        }
        if fds.len() != n {
            return Err(fatal(format!(
                "{n} regions but {} file descriptors",
                fds.len()
            )));
        }
        let mut regions = Vec::with_capacity(n);
        for (chunk, fd) in payload[head_len..].chunks_exact(region_len).zip(fds) {
            let r = frame::parse::<VhostUserMemoryRegion>(chunk)
                .ok_or_else(|| fatal("memory region layout"))?;
            regions.push((RegionInfo::from_wire(&r), fd));
        }
        // Commands running against the old table finish before it goes.
        self.drain_in_flight("SET_MEM_TABLE")?;
        self.memory
            .replace(regions)
            .map_err(|e| fatal(e.to_string()))?;
        self.memory_changed()
    }

    /// Hands the new table to the device; rings waiting only for memory
    /// start.
    fn memory_changed(&mut self) -> Handled {
        let mem = self
            .memory
            .guest_memory()
            .map_err(|e| fatal(e.to_string()))?;
        self.backend.device.set_memory(mem);
        for i in 0..NUM_QUEUES {
            if self.vrings[i].started {
                // A kick that came while the ring's memory was missing
                // found nothing to read: look at the ring again.
                if let Some(kick) = &self.vrings[i].kick {
                    kick_eventfd(kick);
                }
            } else {
                self.maybe_start(i)?;
            }
        }
        Ok(None)
    }

    fn set_vring_addr(&mut self, payload: &[u8], fds: &[OwnedFd]) -> Handled {
        no_fds(fds)?;
        let a = frame::parse::<VhostUserVringAddr>(payload)
            .ok_or_else(|| wrong_size::<VhostUserVringAddr>(payload))?;
        let i = ring_index(a.index)?;
        if !a.is_valid() {
            return Err(fatal("ring addresses are misaligned or flags unknown"));
        }
        if self.memory.is_empty() {
            return Err(fatal("ring addresses before any memory table"));
        }
        let translate = |va: u64, what: &str| {
            self.memory
                .va_to_gpa(va)
                .ok_or_else(|| fatal(format!("{what} at {va:#x} is in no memory region")))
        };
        let addrs = RingAddrs {
            desc_table: translate(a.descriptor, "descriptor table")?,
            avail_ring: translate(a.available, "avail ring")?,
            used_ring: translate(a.used, "used ring")?,
        };
        // QEMU repeats SET_VRING_ADDR on a running ring (dirty logging
        // toggles); the same addresses change nothing.
        if self.vrings[i].started && self.vrings[i].addrs == Some(addrs) {
            return Ok(None);
        }
        self.stopped_ring(i)?.addrs = Some(addrs);
        self.maybe_start(i)
    }

    /// A `VhostUserVringState` payload: (ring, value).
    fn vring_state(&self, payload: &[u8], fds: &[OwnedFd]) -> Result<(usize, u32), Fault> {
        no_fds(fds)?;
        let s = frame::parse::<VhostUserVringState>(payload)
            .ok_or_else(|| wrong_size::<VhostUserVringState>(payload))?;
        Ok((ring_index(s.index)?, s.num))
    }

    /// The ring, which must not be running (its layout cannot change under
    /// the device).
    fn stopped_ring(&mut self, i: usize) -> Result<&mut Vring, Fault> {
        let v = &mut self.vrings[i];
        if v.started {
            return Err(fatal(format!(
                "ring {i} is running; stop it first (GET_VRING_BASE)"
            )));
        }
        Ok(v)
    }

    /// Starts ring `i` if it now has everything it needs.
    fn maybe_start(&mut self, i: usize) -> Handled {
        if self.memory.is_empty() || !self.vrings[i].ready() {
            return Ok(None);
        }
        let Some(kind) = queue_kind(i as u32) else {
            return Err(fatal(format!("ring {i}")));
        };
        let v = &self.vrings[i];
        let used = v.addrs.map_or(0, |a| a.used_ring);
        let next_used = self.read_used_idx(used)?;
        let event_idx = self.features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let Some(mut setup) = v.setup(next_used, event_idx) else {
            return Ok(None);
        };
        let kick = match &v.kick {
            Some(k) => k
                .try_clone()
                .map_err(|e| fatal(format!("dup kick fd: {e}")))?,
            None => return Ok(None),
        };
        let call = match &v.call {
            Some(c) => c
                .try_clone()
                .map_err(|e| fatal(format!("dup call fd: {e}")))?,
            // No call fd: interrupts go to an eventfd nobody reads.
            None => unread_eventfd().map_err(|e| fatal(format!("eventfd: {e}")))?,
        };
        let resume = self.resume(i, &mut setup)?;
        self.backend
            .device
            .start_queue_with(kind, setup, kick, call, resume)
            .map_err(device_fault)?;
        tracing::debug!(ring = i, ?setup, "ring started");
        self.vrings[i].started = true;
        self.vrings[i].event_idx = event_idx;
        Ok(None)
    }

    /// Inflight tracking for ring `i`, when the session has a buffer. At
    /// the ring's first start in this session the buffer is taken up: the
    /// chains a previous backend left marked are resubmitted and the ring
    /// goes on after them (QEMU sends the used index as the base after a
    /// backend died; the marks say how far the old backend really got).
    fn resume(&mut self, i: usize, setup: &mut QueueSetup) -> Result<Option<QueueResume>, Fault> {
        let Some(st) = self.inflight.as_mut() else {
            return Ok(None);
        };
        let Some(mut log) = st.region.queue(i) else {
            return Ok(None);
        };
        if setup.size > log.desc_num() {
            tracing::warn!(
                ring = i,
                size = setup.size,
                region = log.desc_num(),
                "ring larger than its inflight region: not tracked"
            );
            return Ok(None);
        }
        let mut resubmit = Vec::new();
        if !std::mem::replace(&mut st.recovered[i], true) {
            let rec = log
                .recover(setup.next_used, setup.size)
                .map_err(|e| fatal(format!("ring {i}: {e}")))?;
            if !rec.resubmit.is_empty() || rec.fixed_last_batch {
                tracing::info!(
                    ring = i,
                    commands = rec.resubmit.len(),
                    base = setup.next_avail,
                    next_avail = rec.next_avail,
                    fixed_last_batch = rec.fixed_last_batch,
                    "resubmitting in-flight commands from the inflight region"
                );
            }
            setup.next_avail = rec.next_avail;
            resubmit = rec.resubmit;
        }
        Ok(Some(QueueResume {
            log: Box::new(log),
            resubmit,
        }))
    }

    /// The used ring's `idx` (vhost-user carries only the avail index; the
    /// used one is wherever the device last left it in guest memory).
    fn read_used_idx(&self, used_ring: u64) -> Result<u16, Fault> {
        let mem = self.backend.device.memory().memory();
        mem.read_obj::<u16>(GuestAddress(used_ring.wrapping_add(2)))
            .map(u16::from_le)
            .map_err(|e| fatal(format!("used ring at {used_ring:#x} unreadable: {e}")))
    }

    /// Stops ring `i` if it runs; returns its next avail index.
    ///
    /// The device stops taking chains at once and lets the ones it took
    /// complete (bounded by [`DRAIN_TIMEOUT`]) before it detaches the ring:
    /// the index returned then counts only chains the guest gets back, and
    /// nothing is written to the ring afterwards.
    fn stop(&mut self, i: usize) -> Result<u16, Fault> {
        if !self.vrings[i].started {
            return Ok(self.vrings[i].base);
        }
        let kind = queue_kind(i as u32).ok_or_else(|| fatal(format!("ring {i}")))?;
        self.vrings[i].started = false;
        if let Some(base) = self
            .backend
            .device
            .stop_queue(kind, DRAIN_TIMEOUT)
            .map_err(device_fault)?
        {
            self.vrings[i].base = base;
        }
        Ok(self.vrings[i].base)
    }

    /// Waits until every command taken from a running ring has completed,
    /// at most [`DRAIN_TIMEOUT`] (before guest memory is replaced).
    fn drain_in_flight(&self, why: &str) -> Result<(), Fault> {
        if !self.vrings.iter().any(|v| v.started) {
            return Ok(());
        }
        if !self
            .backend
            .device
            .drain(DRAIN_TIMEOUT)
            .map_err(device_fault)?
        {
            tracing::warn!(
                "{why}: commands still in flight after {DRAIN_TIMEOUT:?}; going on without them"
            );
        }
        Ok(())
    }

    fn stop_if_started(&mut self, i: usize) -> Result<(), Fault> {
        if self.vrings[i].started {
            self.stop(i)?;
        }
        Ok(())
    }

    /// `RESET_DEVICE` (and the deprecated `RESET_OWNER`): rings stop and are
    /// forgotten, the device drops everything the guest created. Memory and
    /// negotiated protocol features stay (the frontend keeps ownership).
    fn reset_device(&mut self) -> Result<(), Fault> {
        self.backend.device.reset().map_err(device_fault)?;
        self.vrings = Default::default();
        self.config.reset();
        self.inflight = None;
        Ok(())
    }
}

fn request_name(code: u32) -> String {
    match FrontendReq::try_from(code) {
        Ok(r) => format!("{r:?}"),
        Err(()) => format!("request {code}"),
    }
}

fn device_fault(e: DeviceError) -> Fault {
    match e {
        DeviceError::Queue(why) => Fault::Refused(why),
        DeviceError::Stopped => fatal("the device has stopped"),
    }
}

/// A malformed inflight request ends the session; a buffer this backend
/// will not map is refused (the session goes on without it).
fn inflight_fault(e: inflight::InflightError) -> Fault {
    if e.is_unusable_buffer() {
        Fault::Refused(e.to_string())
    } else {
        fatal(e.to_string())
    }
}

fn wrong_size<T>(payload: &[u8]) -> Fault {
    fatal(format!(
        "{}-byte payload ({} expected)",
        payload.len(),
        mem::size_of::<T>()
    ))
}

fn no_fds(fds: &[OwnedFd]) -> Result<(), Fault> {
    if fds.is_empty() {
        Ok(())
    } else {
        Err(fatal(format!("{} unexpected file descriptors", fds.len())))
    }
}

fn no_body(payload: &[u8], fds: &[OwnedFd]) -> Result<(), Fault> {
    no_fds(fds)?;
    if payload.is_empty() {
        Ok(())
    } else {
        Err(fatal(format!(
            "{}-byte payload (none expected)",
            payload.len()
        )))
    }
}

fn u64_body(payload: &[u8], fds: &[OwnedFd]) -> Result<u64, Fault> {
    no_fds(fds)?;
    frame::parse::<u64>(payload).ok_or_else(|| wrong_size::<u64>(payload))
}

fn one_fd(fds: Vec<OwnedFd>) -> Result<OwnedFd, Fault> {
    let n = fds.len();
    let mut it = fds.into_iter();
    match (it.next(), n) {
        (Some(fd), 1) => Ok(fd),
        _ => Err(fatal(format!("{n} file descriptors (exactly 1 expected)"))),
    }
}

fn ring_index(index: u32) -> Result<usize, Fault> {
    if (index as usize) < NUM_QUEUES {
        Ok(index as usize)
    } else {
        Err(fatal(format!("ring {index} (the GPU has {NUM_QUEUES})")))
    }
}

fn single_region(payload: &[u8]) -> Result<RegionInfo, Fault> {
    let r = frame::parse::<VhostUserSingleMemoryRegion>(payload)
        .ok_or_else(|| wrong_size::<VhostUserSingleMemoryRegion>(payload))?;
    Ok(RegionInfo::from_wire(&r))
}

/// `SET_VRING_KICK/CALL/ERR`: the ring and its fd (`None` with the no-fd bit).
fn vring_fd(payload: &[u8], fds: Vec<OwnedFd>) -> Result<(usize, Option<OwnedFd>), Fault> {
    let v = frame::parse::<u64>(payload).ok_or_else(|| wrong_size::<u64>(payload))?;
    if v & !(VRING_INDEX_MASK | VRING_NOFD) != 0 {
        return Err(fatal(format!("reserved bits set in {v:#x}")));
    }
    let i = ring_index((v & VRING_INDEX_MASK) as u32)?;
    if v & VRING_NOFD != 0 {
        no_fds(&fds)?;
        return Ok((i, None));
    }
    Ok((i, Some(one_fd(fds)?)))
}

/// Signals an eventfd (a full or closed one needs no further signal).
fn kick_eventfd(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local to an fd we own.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

fn unread_eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: no pointers; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
