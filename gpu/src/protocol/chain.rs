//! From a descriptor chain to request bytes, and from a response back into
//! the chain.
//!
//! [`gather`] copies the device-readable part once into a bounded `Vec`
//! (so the guest cannot change a request after it was validated) and
//! records where the device-writable part is; [`ResponseArea::write`]
//! fills that part later, possibly on another shard, after the fence.
//!
//! What `virtio-queue` 0.18 already does for a hostile chain, and what is
//! added here:
//! - Loops and over-long chains: its iterator stops after `queue_size`
//!   descriptors (or the indirect table's length) — silently. A `next`
//!   index past the table, an unreadable table entry, a nested or
//!   misaligned indirect table, and a total over 4 GiB also just end the
//!   iteration. Here a chain that ends on a descriptor that still has
//!   `NEXT` set is [`ProtocolError::ChainTruncated`], one that yields
//!   nothing is [`ProtocolError::EmptyChain`], and more than
//!   [`ChainLimits::max_descriptors`] is [`ProtocolError::ChainTooLong`]
//!   (an indirect table may hold 65535 entries whatever the queue size).
//! - Buffer addresses: not checked by the iterator at all. Every buffer is
//!   checked against guest memory here, readable ones with read and
//!   writable ones with write permission.
//! - Order: readable-after-writable is not checked by the iterator
//!   (`Reader` just skips writable ones). Here it is
//!   [`ProtocolError::ReadableAfterWritable`].
//! - Size: the readable total is summed in 64 bits and compared with the
//!   bound before the `Vec` is allocated.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::error::ProtocolError;
use super::header::CtrlHeader;
use super::limits::Limits;
use super::response::Response;

/// Page size assumed when bounding how many descriptors a request of
/// `max_request_len` bytes may legitimately use (Linux gives every page of
/// a vmalloc'd submit buffer its own descriptor).
const GUEST_PAGE: usize = 4096;
/// Descriptors beyond the data pages: header, body, response, slack.
const DESCRIPTOR_SLACK: usize = 64;

/// Bounds on one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLimits {
    /// Largest device-readable part accepted, in bytes.
    pub max_request_len: usize,
    /// Most descriptors followed in one chain (direct plus indirect).
    pub max_descriptors: usize,
}

impl ChainLimits {
    /// Bounds that admit every request valid under `limits`.
    pub fn for_limits(limits: &Limits) -> Self {
        let max_request_len = limits.max_request_len();
        Self {
            max_request_len,
            max_descriptors: max_request_len / GUEST_PAGE + DESCRIPTOR_SLACK,
        }
    }
}

impl Default for ChainLimits {
    fn default() -> Self {
        Self::for_limits(&Limits::default())
    }
}

/// Where the response goes: the chain's device-writable buffers, in order.
/// Holds guest addresses only, so it can travel to another shard and be
/// written when the command completes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseArea {
    segments: Vec<(GuestAddress, u32)>,
    capacity: u64,
}

impl ResponseArea {
    /// Total writable bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Writes `bytes` at the start of the writable part and returns the
    /// used length for the used ring. `ResponseDoesNotFit` when the part
    /// is too small (nothing is written then).
    pub fn write<G: GuestMemory + ?Sized>(
        &self,
        mem: &G,
        bytes: &[u8],
    ) -> Result<u32, ProtocolError> {
        if bytes.len() as u64 > self.capacity {
            return Err(ProtocolError::ResponseDoesNotFit {
                needed: bytes.len(),
                capacity: self.capacity,
            });
        }
        let mut rest = bytes;
        for &(addr, len) in &self.segments {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(len as usize);
            let (now, later) = rest.split_at(n);
            mem.write_slice(now, addr)
                .map_err(|_| ProtocolError::DescriptorOutsideGuestMemory { addr: addr.0, len })?;
            rest = later;
        }
        // capacity <= u32::MAX (checked at gather), so this cannot saturate.
        Ok(u32::try_from(bytes.len()).unwrap_or(u32::MAX))
    }

    /// Encodes `resp` for the request header `hdr_in` and writes it,
    /// checking the size before encoding.
    pub fn write_response<G: GuestMemory + ?Sized>(
        &self,
        mem: &G,
        hdr_in: &CtrlHeader,
        resp: &Response,
    ) -> Result<u32, ProtocolError> {
        let needed = resp.encoded_len();
        if needed as u64 > self.capacity {
            return Err(ProtocolError::ResponseDoesNotFit {
                needed,
                capacity: self.capacity,
            });
        }
        let mut out = Vec::with_capacity(needed);
        resp.encode(hdr_in, &mut out);
        self.write(mem, &out)
    }
}

/// A chain taken apart.
#[derive(Debug)]
pub struct GatheredChain {
    /// Head descriptor index, for the used ring.
    pub head_index: u16,
    /// The readable bytes, or why they could not be read. An error here
    /// still leaves a usable [`ResponseArea`], so the device can answer
    /// with the error's code.
    pub request: Result<Vec<u8>, ProtocolError>,
    /// Where the response goes.
    pub response: ResponseArea,
}

/// Walks `chain`, copies its readable part and records its writable part.
///
/// `Err` means the chain itself is unusable (truncated, too long, out of
/// order, or a writable buffer outside guest memory): there is nowhere safe
/// to answer, and the device should return it to the used ring with length
/// 0. Errors about the readable part come back inside
/// [`GatheredChain::request`].
pub fn gather<M>(
    chain: DescriptorChain<M>,
    limits: &ChainLimits,
) -> Result<GatheredChain, ProtocolError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut chain = chain;
    let head_index = chain.head_index();
    let descriptors = collect_descriptors(&mut chain, limits.max_descriptors)?;
    let mem = chain.memory();

    let mut readable: Vec<Descriptor> = Vec::new();
    let mut response = ResponseArea::default();
    let mut seen_writable = false;
    for d in descriptors {
        if d.is_write_only() {
            seen_writable = true;
            if d.len() == 0 {
                continue;
            }
            if !mem.check_range(d.addr(), d.len() as usize, Permissions::Write) {
                return Err(ProtocolError::DescriptorOutsideGuestMemory {
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
            response.capacity += u64::from(d.len());
            response.segments.push((d.addr(), d.len()));
        } else {
            if seen_writable {
                return Err(ProtocolError::ReadableAfterWritable);
            }
            readable.push(d);
        }
    }
    let request = read_request(mem, &readable, limits.max_request_len);
    Ok(GatheredChain {
        head_index,
        request,
        response,
    })
}

/// Follows the chain, turning the iterator's silent stops into errors.
fn collect_descriptors<M>(
    chain: &mut DescriptorChain<M>,
    max: usize,
) -> Result<Vec<Descriptor>, ProtocolError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut out = Vec::new();
    for d in chain.by_ref() {
        if out.len() == max {
            return Err(ProtocolError::ChainTooLong { max });
        }
        out.push(d);
    }
    match out.last() {
        None => Err(ProtocolError::EmptyChain),
        Some(last) if last.has_next() => Err(ProtocolError::ChainTruncated),
        Some(_) => Ok(out),
    }
}

/// Copies the readable buffers into one `Vec`, after checking the total
/// against `max` and every buffer against guest memory.
fn read_request<G: GuestMemory + ?Sized>(
    mem: &G,
    readable: &[Descriptor],
    max: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let total: u64 = readable.iter().map(|d| u64::from(d.len())).sum();
    if total > max as u64 {
        return Err(ProtocolError::RequestTooLarge { len: total, max });
    }
    for d in readable {
        if !mem.check_range(d.addr(), d.len() as usize, Permissions::Read) {
            return Err(ProtocolError::DescriptorOutsideGuestMemory {
                addr: d.addr().0,
                len: d.len(),
            });
        }
    }
    // total <= max, a usize.
    let mut buf = vec![0u8; total as usize];
    let mut at = 0usize;
    for d in readable {
        let len = d.len() as usize;
        let dst = buf
            .get_mut(at..at + len)
            .ok_or(ProtocolError::RequestTooLarge { len: total, max })?;
        mem.read_slice(dst, d.addr())
            .map_err(|_| ProtocolError::DescriptorOutsideGuestMemory {
                addr: d.addr().0,
                len: d.len(),
            })?;
        at += len;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire::*;
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestMemoryMmap;

    const MEM_SIZE: usize = 0x10_0000;
    const QUEUE_SIZE: u16 = 16;
    const REQ: u64 = 0x1_0000;
    const RESP: u64 = 0x2_0000;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    fn flush_request() -> Vec<u8> {
        let mut out = Vec::new();
        CtrlHeader {
            kind: VIRTIO_GPU_CMD_RESOURCE_FLUSH,
            flags: VIRTIO_GPU_FLAG_FENCE,
            fence_id: 7,
            ctx_id: 0,
            ring_idx: 0,
        }
        .write(&mut out);
        out.extend_from_slice(&[0u8; 24]);
        out
    }

    #[test]
    fn normal_chain_gathers_split_request_and_writes_response() {
        let mem = memory();
        let req = flush_request();
        mem.write_slice(&req[..24], GuestAddress(REQ)).unwrap();
        mem.write_slice(&req[24..], GuestAddress(REQ + 0x100))
            .unwrap();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let chain = vq
            .build_desc_chain(&[
                desc(REQ, 24, 0, 0),
                desc(REQ + 0x100, 24, 0, 0),
                desc(RESP, 16, WRITE, 0),
                desc(RESP + 0x100, 16, WRITE, 0),
            ])
            .unwrap();
        let g = gather(chain, &ChainLimits::default()).unwrap();
        assert_eq!(g.request.as_deref(), Ok(&req[..]));
        assert_eq!(g.response.capacity(), 32);

        let hdr_in = CtrlHeader::read(&mut crate::protocol::le::ByteReader::new(&req)).unwrap();
        let used = g
            .response
            .write_response(&mem, &hdr_in, &Response::OkNodata)
            .unwrap();
        assert_eq!(used, 24);
        let mut back = [0u8; 24];
        mem.read_slice(&mut back[..16], GuestAddress(RESP)).unwrap();
        mem.read_slice(&mut back[16..], GuestAddress(RESP + 0x100))
            .unwrap();
        let (hdr, resp) = Response::decode(&back).unwrap();
        assert_eq!(resp, Response::OkNodata);
        assert_eq!((hdr.flags, hdr.fence_id), (VIRTIO_GPU_FLAG_FENCE, 7));
    }

    #[test]
    fn readable_buffer_outside_guest_memory_is_reported_with_the_response_area_intact() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let outside = MEM_SIZE as u64 - 8;
        let chain = vq
            .build_desc_chain(&[desc(outside, 48, 0, 0), desc(RESP, 64, WRITE, 0)])
            .unwrap();
        let g = gather(chain, &ChainLimits::default()).unwrap();
        let err = g.request.unwrap_err();
        assert_eq!(
            err,
            ProtocolError::DescriptorOutsideGuestMemory {
                addr: outside,
                len: 48
            }
        );
        assert_eq!(err.response_code(), VIRTIO_GPU_RESP_ERR_UNSPEC);
        assert_eq!(g.response.capacity(), 64);
    }

    #[test]
    fn writable_buffer_outside_guest_memory_makes_the_chain_unusable() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let chain = vq
            .build_desc_chain(&[desc(REQ, 48, 0, 0), desc(0x4000_0000, 64, WRITE, 0)])
            .unwrap();
        let err = gather(chain, &ChainLimits::default()).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::DescriptorOutsideGuestMemory {
                addr: 0x4000_0000,
                len: 64
            }
        );
        assert!(err.is_chain_error());
    }

    #[test]
    fn looping_chain_is_truncated_not_followed_forever() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        // 0 -> 1 -> 0 -> ...: virtio-queue stops after QUEUE_SIZE hops.
        let chain = vq
            .build_multiple_desc_chains(&[desc(REQ, 8, NEXT, 1), desc(REQ + 8, 8, NEXT, 0)])
            .unwrap();
        let err = gather(chain, &ChainLimits::default()).unwrap_err();
        assert_eq!(err, ProtocolError::ChainTruncated);
        assert_eq!(err.response_code(), VIRTIO_GPU_RESP_ERR_UNSPEC);
    }

    #[test]
    fn next_index_past_the_table_is_truncated() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let chain = vq
            .build_multiple_desc_chains(&[desc(REQ, 8, NEXT, QUEUE_SIZE + 3)])
            .unwrap();
        assert_eq!(
            gather(chain, &ChainLimits::default()).unwrap_err(),
            ProtocolError::ChainTruncated
        );
    }

    #[test]
    fn chain_longer_than_the_descriptor_limit_is_too_long() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let descs: Vec<_> = (0..8).map(|i| desc(REQ + i * 8, 8, 0, 0)).collect();
        let chain = vq.build_desc_chain(&descs).unwrap();
        let limits = ChainLimits {
            max_descriptors: 4,
            ..ChainLimits::default()
        };
        let err = gather(chain, &limits).unwrap_err();
        assert_eq!(err, ProtocolError::ChainTooLong { max: 4 });
        assert_eq!(err.response_code(), VIRTIO_GPU_RESP_ERR_UNSPEC);
    }

    #[test]
    fn readable_after_writable_is_rejected() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let chain = vq
            .build_desc_chain(&[
                desc(REQ, 24, 0, 0),
                desc(RESP, 24, WRITE, 0),
                desc(REQ + 24, 24, 0, 0),
            ])
            .unwrap();
        let err = gather(chain, &ChainLimits::default()).unwrap_err();
        assert_eq!(err, ProtocolError::ReadableAfterWritable);
        assert_eq!(err.response_code(), VIRTIO_GPU_RESP_ERR_UNSPEC);

        // An empty writable buffer still marks the end of the readable part.
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let chain = vq
            .build_desc_chain(&[desc(RESP, 0, WRITE, 0), desc(REQ, 24, 0, 0)])
            .unwrap();
        assert_eq!(
            gather(chain, &ChainLimits::default()).unwrap_err(),
            ProtocolError::ReadableAfterWritable
        );
    }

    #[test]
    fn readable_part_above_the_bound_is_refused_before_allocating() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        // 3.75 GiB claimed: far outside guest memory, but the size bound
        // fails first, before any address is looked at or byte allocated.
        let chain = vq
            .build_desc_chain(&[
                desc(REQ, 0x8000_0000, 0, 0),
                desc(REQ, 0x7000_0000, 0, 0),
                desc(RESP, 24, WRITE, 0),
            ])
            .unwrap();
        let g = gather(chain, &ChainLimits::default()).unwrap();
        let err = g.request.unwrap_err();
        assert_eq!(
            err,
            ProtocolError::RequestTooLarge {
                len: 0xf000_0000,
                max: Limits::default().max_request_len()
            }
        );
        assert_eq!(err.response_code(), VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
        assert_eq!(g.response.capacity(), 24);
    }

    #[test]
    fn response_that_does_not_fit_is_not_written() {
        let mem = memory();
        mem.write_slice(&flush_request(), GuestAddress(REQ))
            .unwrap();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let chain = vq
            .build_desc_chain(&[desc(REQ, 48, 0, 0), desc(RESP, 16, WRITE, 0)])
            .unwrap();
        let g = gather(chain, &ChainLimits::default()).unwrap();
        mem.write_slice(&[0xaa; 16], GuestAddress(RESP)).unwrap();
        let err = g
            .response
            .write_response(&mem, &CtrlHeader::default(), &Response::OkNodata)
            .unwrap_err();
        assert_eq!(
            err,
            ProtocolError::ResponseDoesNotFit {
                needed: 24,
                capacity: 16
            }
        );
        assert_eq!(err.response_code(), VIRTIO_GPU_RESP_ERR_UNSPEC);
        let mut back = [0u8; 16];
        mem.read_slice(&mut back, GuestAddress(RESP)).unwrap();
        assert_eq!(back, [0xaa; 16]);
    }

    #[test]
    fn chain_without_writable_part_has_no_room_for_a_response() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let chain = vq.build_desc_chain(&[desc(REQ, 48, 0, 0)]).unwrap();
        let g = gather(chain, &ChainLimits::default()).unwrap();
        assert_eq!(
            g.response.write(&mem, &[0; 24]),
            Err(ProtocolError::ResponseDoesNotFit {
                needed: 24,
                capacity: 0
            })
        );
    }

    #[test]
    fn indirect_chain_gathers_like_a_direct_one() {
        let mem = memory();
        let req = flush_request();
        mem.write_slice(&req, GuestAddress(REQ)).unwrap();
        let table = 0x3_0000u64;
        mem.write_obj(desc(REQ, 48, NEXT, 1), GuestAddress(table))
            .unwrap();
        mem.write_obj(desc(RESP, 64, WRITE, 0), GuestAddress(table + 16))
            .unwrap();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let chain = vq
            .build_desc_chain(&[desc(table, 32, VRING_DESC_F_INDIRECT as u16, 0)])
            .unwrap();
        let g = gather(chain, &ChainLimits::default()).unwrap();
        assert_eq!(g.request.as_deref(), Ok(&req[..]));
        assert_eq!(g.response.capacity(), 64);
    }

    #[test]
    fn head_with_an_invalid_indirect_table_is_an_empty_chain() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        // Table length not a multiple of 16: virtio-queue yields nothing.
        let chain = vq
            .build_desc_chain(&[desc(0x3_0000, 17, VRING_DESC_F_INDIRECT as u16, 0)])
            .unwrap();
        let err = gather(chain, &ChainLimits::default()).unwrap_err();
        assert_eq!(err, ProtocolError::EmptyChain);
        assert_eq!(err.response_code(), VIRTIO_GPU_RESP_ERR_UNSPEC);
    }
}
