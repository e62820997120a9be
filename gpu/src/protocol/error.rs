//! The one error type of the protocol layer: one variant per rule checked,
//! each mapped to the `VIRTIO_GPU_RESP_ERR_*` the guest receives.
//!
//! It is a leaf (it imports nothing else from `protocol`) so the device,
//! renderers and fences can all return it without import cycles. Variants
//! are grouped by who checks them: the chain reader, the stateless decoder,
//! the device (stateful rules), and the guest-side response decoder.

use std::fmt;

use super::wire::{
    VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
    VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY, VIRTIO_GPU_RESP_ERR_UNSPEC,
};

/// Why a request (or, on the guest side, a response) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    // ---- Descriptor chain (chain.rs) ----
    /// The chain yielded no descriptor at all (bad head index, unreadable
    /// descriptor table, or an invalid indirect table at the head).
    EmptyChain,
    /// The chain stopped on a descriptor that still had `NEXT` set: a loop
    /// longer than the queue, a `next` index past the table, an unreadable
    /// or malformed indirect table, or more than 4 GiB in total.
    ChainTruncated,
    /// More descriptors than the device accepts in one chain.
    ChainTooLong {
        /// The limit.
        max: usize,
    },
    /// A device-readable descriptor came after a device-writable one
    /// (virtio 1.3 §2.7.4.2 forbids it).
    ReadableAfterWritable,
    /// A descriptor's buffer is not inside guest memory.
    DescriptorOutsideGuestMemory {
        /// Buffer start.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// The device-readable part is larger than any valid request.
    RequestTooLarge {
        /// Readable bytes in the chain.
        len: u64,
        /// Largest request accepted (header + max submit).
        max: usize,
    },
    /// The device-writable part cannot hold the response.
    ResponseDoesNotFit {
        /// Response size.
        needed: usize,
        /// Writable bytes in the chain.
        capacity: u64,
    },

    // ---- Header and framing (stateless decode) ----
    /// The readable part ends before the struct its type needs.
    ShortCommand {
        /// Bytes the request needs so far.
        needed: usize,
        /// Bytes the request has.
        got: usize,
    },
    /// `hdr.type` is not a virtio-gpu command.
    UnknownCommandType(u32),
    /// A cursor command arrived on the control queue.
    CursorCommandOnControlQueue(u32),
    /// A control command arrived on the cursor queue.
    ControlCommandOnCursorQueue(u32),
    /// The command needs a feature bit the driver did not negotiate.
    FeatureNotNegotiated {
        /// Command type.
        command: u32,
        /// `VIRTIO_GPU_F_*` bit number.
        feature: u32,
    },
    /// `hdr.flags` has bits this protocol version does not define.
    UnknownHeaderFlags(u32),
    /// `FLAG_INFO_RING_IDX` without `VIRTIO_GPU_F_CONTEXT_INIT`.
    RingIdxWithoutContextInit,
    /// `ring_idx` above 63, or past the rings the renderer keeps per
    /// context (`RendererInfo::max_rings`, checked by the device).
    RingIdxOutOfRange(u8),

    // ---- Field values (stateless decode) ----
    /// A create command named resource id 0.
    ResourceIdZero,
    /// A context command named context id 0.
    ContextIdZero,
    /// Scanout id not below `num_scanouts`.
    ScanoutIdOutOfRange {
        /// Requested scanout.
        id: u32,
        /// Scanouts the device has.
        num: u32,
    },
    /// Not one of `VIRTIO_GPU_FORMAT_*`.
    UnknownFormat(u32),
    /// Width or height zero where an image is described.
    ZeroSize {
        /// Width given.
        width: u32,
        /// Height given.
        height: u32,
    },
    /// Width or height above the device's limit.
    DimensionTooLarge {
        /// Width given.
        width: u32,
        /// Height given.
        height: u32,
        /// The limit.
        max: u32,
    },
    /// `x + width` or `y + height` overflows 32 bits.
    RectOverflow {
        /// Rect x.
        x: u32,
        /// Rect y.
        y: u32,
        /// Rect width.
        width: u32,
        /// Rect height.
        height: u32,
    },
    /// A scanout was pointed at a resource with an empty rectangle.
    ScanoutRectEmpty,
    /// `SET_SCANOUT_BLOB`: the rectangle is not inside the framebuffer it
    /// describes.
    ScanoutRectOutsideFramebuffer {
        /// Rect right edge (saturated).
        right: u32,
        /// Rect bottom edge (saturated).
        bottom: u32,
        /// Framebuffer width.
        fb_width: u32,
        /// Framebuffer height.
        fb_height: u32,
    },
    /// `SET_SCANOUT_BLOB`: plane 0 stride shorter than one row of pixels.
    StrideTooSmall {
        /// Stride given.
        stride: u32,
        /// `width * 4`.
        min: u64,
    },
    /// A 3D box's end overflows 32 bits.
    BoxOverflow,
    /// `RESOURCE_CREATE_3D` target is not a gallium texture target (0-8).
    UnknownTarget(u32),
    /// `RESOURCE_CREATE_3D` width, height, depth or array size above what
    /// its target allows (`Limits`; 1 where the target has no such axis).
    Resource3dTooLarge {
        /// Target given.
        target: u32,
        /// Width, height, depth, array size given.
        extent: [u32; 4],
        /// The target's limits, in the same order.
        max: [u32; 4],
    },
    /// `RESOURCE_CREATE_3D` with more mip levels than its size has.
    TooManyMipLevels {
        /// `last_level` given.
        last_level: u32,
        /// The largest for this size.
        max: u32,
    },
    /// `RESOURCE_CREATE_3D` with more samples than the device allows.
    TooManySamples {
        /// `nr_samples` given.
        nr_samples: u32,
        /// The limit.
        max: u32,
    },
    /// `nr_entries` above the device's limit.
    TooManyBackingEntries {
        /// Entries requested.
        n: u32,
        /// The limit.
        max: u32,
    },
    /// A backing entry of length 0.
    ZeroLengthBackingEntry {
        /// Entry index.
        index: usize,
    },
    /// A backing entry whose `addr + length` overflows 64 bits.
    BackingEntryOverflows {
        /// Entry index.
        index: usize,
    },
    /// `capset_index` not below `num_capsets`.
    CapsetIndexOutOfRange {
        /// Index given.
        index: u32,
        /// Capsets the device has.
        num: u32,
    },
    /// `blob_mem` is not GUEST, HOST3D or HOST3D_GUEST.
    BlobMemInvalid(u32),
    /// HOST3D blob memory without `VIRTIO_GPU_F_VIRGL`.
    BlobMemRequiresVirgl(u32),
    /// `blob_flags` has undefined bits.
    BlobFlagsInvalid(u32),
    /// A blob of size 0.
    BlobSizeZero,
    /// Guest pages given for a host-only (HOST3D) blob.
    BlobEntriesOnHostBlob {
        /// Entries given.
        nr_entries: u32,
    },
    /// The guest pages given cover less than the blob's size.
    BlobBackingSmallerThanSize {
        /// Blob size.
        size: u64,
        /// Sum of entry lengths.
        backing: u64,
    },
    /// `nlen` longer than the debug name field.
    DebugNameTooLong {
        /// Length given.
        nlen: u32,
        /// The limit.
        max: u32,
    },
    /// A capset id in `context_init` without `VIRTIO_GPU_F_CONTEXT_INIT`.
    ContextInitWithoutFeature(u32),
    /// `context_init` bits above the capset id, which are reserved.
    ContextInitReservedBits(u32),
    /// `SUBMIT_3D` size above the device's limit.
    SubmitTooLarge {
        /// Size given.
        size: u32,
        /// The limit.
        max: u32,
    },
    /// `SUBMIT_3D` size larger than the bytes that follow it.
    SubmitSizeExceedsChain {
        /// Size given.
        size: u32,
        /// Bytes present after the struct.
        available: usize,
    },

    // ---- Stateful rules (checked by the device) ----
    /// No resource has this id.
    UnknownResource(u32),
    /// A resource with this id already exists.
    ResourceIdInUse(u32),
    /// No context has this id.
    UnknownContext(u32),
    /// A context with this id already exists.
    ContextIdInUse(u32),
    /// The resource is not attached to the context using it.
    ResourceNotInContext {
        /// Resource id.
        resource: u32,
        /// Context id.
        ctx: u32,
    },
    /// A rectangle or box reaches outside the resource.
    RectOutsideResource,
    /// A transfer reads or writes past the end of the backing store.
    TransferBeyondBacking {
        /// Bytes the transfer touches, from the start of the backing.
        needed: u64,
        /// Backing size.
        backing: u64,
    },
    /// The resource has no backing store.
    NoBacking(u32),
    /// Backing is already attached.
    BackingAlreadyAttached(u32),
    /// A backing entry is not inside guest memory.
    BackingBeyondGuestMemory {
        /// Entry address.
        addr: u64,
        /// Entry length.
        length: u32,
    },
    /// `SET_SCANOUT_BLOB` layout reaches past the blob.
    ScanoutBeyondBlob {
        /// Bytes the layout needs.
        needed: u64,
        /// Blob size.
        blob_size: u64,
    },
    /// A blob command named a resource that is not a blob.
    NotABlob(u32),
    /// `MAP_BLOB` of a blob created without `USE_MAPPABLE` or not host memory.
    BlobNotMappable(u32),
    /// `MAP_BLOB` of a blob that is already mapped.
    BlobAlreadyMapped(u32),
    /// `UNMAP_BLOB` of a blob that is not mapped.
    BlobNotMapped(u32),
    /// Map/unmap without a host visible memory region.
    NoHostVisibleRegion,
    /// The mapping would not fit in the host visible memory region.
    MapOutsideHostVisibleRegion {
        /// Offset requested.
        offset: u64,
        /// Blob size.
        size: u64,
    },
    /// `MAP_BLOB` at an offset that is not a multiple of the page size.
    MapOffsetUnaligned {
        /// Offset requested.
        offset: u64,
    },
    /// `MAP_BLOB` over a range another blob holds in the host visible
    /// region (mapped, or being mapped).
    MapOverlapsMappedBlob {
        /// Offset requested.
        offset: u64,
        /// Blob size.
        size: u64,
        /// Where the blob already there starts.
        mapped_offset: u64,
        /// Its size.
        mapped_size: u64,
    },
    /// The device has no capset with this id and version.
    UnsupportedCapset {
        /// Capset id.
        id: u32,
        /// Version.
        version: u32,
    },
    /// A cursor image resource that is not 64x64.
    CursorNot64x64 {
        /// Resource width.
        width: u32,
        /// Resource height.
        height: u32,
    },
    /// The device cannot allocate what the request needs.
    OutOfMemory {
        /// Bytes requested.
        requested: u64,
    },
    /// The renderer refused the command (its own error code).
    RendererFailed(i32),
    /// The render worker process hosting this context (or resource) died or
    /// missed its watchdog deadline: the object is lost.
    RenderWorkerLost(u32),
    /// A resource lives on one render worker; a context on another worker
    /// cannot use it (docs/decisions/0005-render-workers.md).
    ResourceOnOtherWorker {
        /// The resource.
        resource: u32,
        /// The context that asked for it.
        ctx: u32,
    },

    // ---- Response decoding (guest side, loadgen) ----
    /// A response shorter than its type needs.
    ShortResponse {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// `hdr.type` is not a virtio-gpu response.
    UnknownResponseType(u32),
    /// `resp_edid.size` above 1024.
    EdidSizeOutOfRange(u32),
}

impl ProtocolError {
    /// The `VIRTIO_GPU_RESP_ERR_*` the device answers with.
    ///
    /// Malformed or unknown requests get `ERR_UNSPEC` (as QEMU and crosvm
    /// do); a known request with a bad value gets the most specific code.
    pub fn response_code(&self) -> u32 {
        use ProtocolError::*;
        match self {
            EmptyChain
            | ChainTruncated
            | ChainTooLong { .. }
            | ReadableAfterWritable
            | DescriptorOutsideGuestMemory { .. }
            | ResponseDoesNotFit { .. }
            | ShortCommand { .. }
            | UnknownCommandType(_)
            | CursorCommandOnControlQueue(_)
            | ControlCommandOnCursorQueue(_)
            | FeatureNotNegotiated { .. }
            | BackingAlreadyAttached(_)
            | NoHostVisibleRegion
            | RendererFailed(_)
            | RenderWorkerLost(_)
            | ShortResponse { .. }
            | UnknownResponseType(_)
            | EdidSizeOutOfRange(_) => VIRTIO_GPU_RESP_ERR_UNSPEC,

            OutOfMemory { .. } => VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY,

            ScanoutIdOutOfRange { .. } => VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,

            ResourceIdZero
            | UnknownResource(_)
            | ResourceIdInUse(_)
            | ResourceNotInContext { .. }
            | ResourceOnOtherWorker { .. } => VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,

            ContextIdZero | UnknownContext(_) | ContextIdInUse(_) => {
                VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID
            }

            RequestTooLarge { .. }
            | UnknownHeaderFlags(_)
            | RingIdxWithoutContextInit
            | RingIdxOutOfRange(_)
            | UnknownFormat(_)
            | ZeroSize { .. }
            | DimensionTooLarge { .. }
            | RectOverflow { .. }
            | ScanoutRectEmpty
            | ScanoutRectOutsideFramebuffer { .. }
            | StrideTooSmall { .. }
            | BoxOverflow
            | UnknownTarget(_)
            | Resource3dTooLarge { .. }
            | TooManyMipLevels { .. }
            | TooManySamples { .. }
            | TooManyBackingEntries { .. }
            | ZeroLengthBackingEntry { .. }
            | BackingEntryOverflows { .. }
            | CapsetIndexOutOfRange { .. }
            | BlobMemInvalid(_)
            | BlobMemRequiresVirgl(_)
            | BlobFlagsInvalid(_)
            | BlobSizeZero
            | BlobEntriesOnHostBlob { .. }
            | BlobBackingSmallerThanSize { .. }
            | DebugNameTooLong { .. }
            | ContextInitWithoutFeature(_)
            | ContextInitReservedBits(_)
            | SubmitTooLarge { .. }
            | SubmitSizeExceedsChain { .. }
            | RectOutsideResource
            | TransferBeyondBacking { .. }
            | NoBacking(_)
            | BackingBeyondGuestMemory { .. }
            | ScanoutBeyondBlob { .. }
            | NotABlob(_)
            | BlobNotMappable(_)
            | BlobAlreadyMapped(_)
            | BlobNotMapped(_)
            | MapOutsideHostVisibleRegion { .. }
            | MapOffsetUnaligned { .. }
            | MapOverlapsMappedBlob { .. }
            | UnsupportedCapset { .. }
            | CursorNot64x64 { .. } => VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
        }
    }

    /// True when the error came from the descriptor chain itself rather
    /// than from its contents: the device may have nowhere to write a
    /// response and should complete the chain with a used length of 0.
    pub fn is_chain_error(&self) -> bool {
        use ProtocolError::*;
        matches!(
            self,
            EmptyChain
                | ChainTruncated
                | ChainTooLong { .. }
                | ReadableAfterWritable
                | DescriptorOutsideGuestMemory { .. }
                | RequestTooLarge { .. }
                | ResponseDoesNotFit { .. }
        )
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ProtocolError::*;
        match self {
            EmptyChain => write!(f, "descriptor chain has no descriptor"),
            ChainTruncated => write!(f, "descriptor chain truncated (loop, bad next index or > 4 GiB)"),
            ChainTooLong { max } => write!(f, "descriptor chain longer than {max} descriptors"),
            ReadableAfterWritable => write!(f, "device-readable descriptor after a device-writable one"),
            DescriptorOutsideGuestMemory { addr, len } => {
                write!(f, "descriptor buffer {addr:#x}+{len} is outside guest memory")
            }
            RequestTooLarge { len, max } => write!(f, "request of {len} bytes exceeds {max}"),
            ResponseDoesNotFit { needed, capacity } => {
                write!(f, "response of {needed} bytes does not fit in {capacity} writable bytes")
            }
            ShortCommand { needed, got } => write!(f, "request needs {needed} bytes, has {got}"),
            UnknownCommandType(t) => write!(f, "unknown command type {t:#06x}"),
            CursorCommandOnControlQueue(t) => write!(f, "cursor command {t:#06x} on the control queue"),
            ControlCommandOnCursorQueue(t) => write!(f, "control command {t:#06x} on the cursor queue"),
            FeatureNotNegotiated { command, feature } => {
                write!(f, "command {command:#06x} needs feature bit {feature}, not negotiated")
            }
            UnknownHeaderFlags(v) => write!(f, "unknown header flags {v:#x}"),
            RingIdxWithoutContextInit => write!(f, "INFO_RING_IDX set but CONTEXT_INIT not negotiated"),
            RingIdxOutOfRange(i) => write!(f, "ring_idx {i} out of range"),
            ResourceIdZero => write!(f, "resource id 0 is reserved"),
            ContextIdZero => write!(f, "context id 0 is reserved"),
            ScanoutIdOutOfRange { id, num } => write!(f, "scanout {id} out of range (device has {num})"),
            UnknownFormat(v) => write!(f, "unknown format {v}"),
            ZeroSize { width, height } => write!(f, "zero size {width}x{height}"),
            DimensionTooLarge { width, height, max } => {
                write!(f, "size {width}x{height} exceeds the limit {max}")
            }
            RectOverflow { x, y, width, height } => {
                write!(f, "rectangle {width}x{height}+{x}+{y} overflows 32 bits")
            }
            ScanoutRectEmpty => write!(f, "scanout rectangle is empty"),
            ScanoutRectOutsideFramebuffer { right, bottom, fb_width, fb_height } => write!(
                f,
                "scanout rectangle to ({right},{bottom}) outside the {fb_width}x{fb_height} framebuffer"
            ),
            StrideTooSmall { stride, min } => write!(f, "stride {stride} below one row ({min} bytes)"),
            BoxOverflow => write!(f, "3D box overflows 32 bits"),
            UnknownTarget(t) => write!(f, "unknown texture target {t}"),
            Resource3dTooLarge { target, extent, max } => write!(
                f,
                "target {target}: extent {extent:?} (width, height, depth, layers) exceeds {max:?}"
            ),
            TooManyMipLevels { last_level, max } => {
                write!(f, "last_level {last_level} above {max} for this size")
            }
            TooManySamples { nr_samples, max } => write!(f, "{nr_samples} samples exceed {max}"),
            TooManyBackingEntries { n, max } => write!(f, "{n} backing entries exceed the limit {max}"),
            ZeroLengthBackingEntry { index } => write!(f, "backing entry {index} has length 0"),
            BackingEntryOverflows { index } => write!(f, "backing entry {index} wraps the address space"),
            CapsetIndexOutOfRange { index, num } => {
                write!(f, "capset index {index} out of range (device has {num})")
            }
            BlobMemInvalid(v) => write!(f, "invalid blob_mem {v}"),
            BlobMemRequiresVirgl(v) => write!(f, "blob_mem {v} needs VIRTIO_GPU_F_VIRGL"),
            BlobFlagsInvalid(v) => write!(f, "invalid blob_flags {v:#x}"),
            BlobSizeZero => write!(f, "blob size 0"),
            BlobEntriesOnHostBlob { nr_entries } => {
                write!(f, "{nr_entries} guest pages given for a host-only blob")
            }
            BlobBackingSmallerThanSize { size, backing } => {
                write!(f, "blob of {size} bytes backed by only {backing} bytes")
            }
            DebugNameTooLong { nlen, max } => write!(f, "debug name length {nlen} exceeds {max}"),
            ContextInitWithoutFeature(v) => {
                write!(f, "context_init {v:#x} set but CONTEXT_INIT not negotiated")
            }
            ContextInitReservedBits(v) => write!(f, "context_init {v:#x} has reserved bits set"),
            SubmitTooLarge { size, max } => write!(f, "submit of {size} bytes exceeds {max}"),
            SubmitSizeExceedsChain { size, available } => {
                write!(f, "submit size {size} but only {available} bytes follow")
            }
            UnknownResource(id) => write!(f, "unknown resource {id}"),
            ResourceIdInUse(id) => write!(f, "resource id {id} already in use"),
            UnknownContext(id) => write!(f, "unknown context {id}"),
            ContextIdInUse(id) => write!(f, "context id {id} already in use"),
            ResourceNotInContext { resource, ctx } => {
                write!(f, "resource {resource} not attached to context {ctx}")
            }
            RectOutsideResource => write!(f, "rectangle outside the resource"),
            TransferBeyondBacking { needed, backing } => {
                write!(f, "transfer needs {needed} bytes of a {backing}-byte backing")
            }
            NoBacking(id) => write!(f, "resource {id} has no backing"),
            BackingAlreadyAttached(id) => write!(f, "resource {id} already has backing"),
            BackingBeyondGuestMemory { addr, length } => {
                write!(f, "backing {addr:#x}+{length} outside guest memory")
            }
            ScanoutBeyondBlob { needed, blob_size } => {
                write!(f, "scanout layout needs {needed} bytes of a {blob_size}-byte blob")
            }
            NotABlob(id) => write!(f, "resource {id} is not a blob"),
            BlobNotMappable(id) => write!(f, "blob {id} is not mappable"),
            BlobAlreadyMapped(id) => write!(f, "blob {id} is already mapped"),
            BlobNotMapped(id) => write!(f, "blob {id} is not mapped"),
            NoHostVisibleRegion => write!(f, "no host visible memory region"),
            MapOutsideHostVisibleRegion { offset, size } => {
                write!(f, "mapping {offset:#x}+{size} outside the host visible region")
            }
            MapOffsetUnaligned { offset } => {
                write!(f, "mapping offset {offset:#x} is not page aligned")
            }
            MapOverlapsMappedBlob {
                offset,
                size,
                mapped_offset,
                mapped_size,
            } => write!(
                f,
                "mapping {offset:#x}+{size} overlaps the blob mapped at {mapped_offset:#x}+{mapped_size}"
            ),
            UnsupportedCapset { id, version } => write!(f, "unsupported capset {id} version {version}"),
            CursorNot64x64 { width, height } => write!(f, "cursor resource is {width}x{height}, not 64x64"),
            OutOfMemory { requested } => write!(f, "out of memory allocating {requested} bytes"),
            RendererFailed(code) => write!(f, "renderer failed with {code}"),
            RenderWorkerLost(id) => write!(f, "the render worker of {id} was lost"),
            ResourceOnOtherWorker { resource, ctx } => write!(
                f,
                "resource {resource} lives on another render worker than context {ctx}"
            ),
            ShortResponse { needed, got } => write!(f, "response needs {needed} bytes, has {got}"),
            UnknownResponseType(t) => write!(f, "unknown response type {t:#06x}"),
            EdidSizeOutOfRange(n) => write!(f, "EDID size {n} above 1024"),
        }
    }
}

impl std::error::Error for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stateful rules are checked by the device, not the decoder; their
    /// codes are pinned here so a refactor cannot silently change what the
    /// guest sees.
    #[test]
    fn stateful_rules_map_to_the_documented_codes() {
        use ProtocolError::*;
        let table = [
            (UnknownResource(7), VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
            (ResourceIdInUse(7), VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
            (
                ResourceNotInContext {
                    resource: 1,
                    ctx: 2,
                },
                VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
            ),
            (UnknownContext(3), VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID),
            (ContextIdInUse(3), VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID),
            (RectOutsideResource, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
            (
                TransferBeyondBacking {
                    needed: 2,
                    backing: 1,
                },
                VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
            ),
            (NoBacking(1), VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
            (BackingAlreadyAttached(1), VIRTIO_GPU_RESP_ERR_UNSPEC),
            (
                BackingBeyondGuestMemory { addr: 0, length: 1 },
                VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
            ),
            (
                ScanoutBeyondBlob {
                    needed: 2,
                    blob_size: 1,
                },
                VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
            ),
            (NotABlob(1), VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
            (BlobNotMappable(1), VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
            (BlobAlreadyMapped(1), VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
            (BlobNotMapped(1), VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
            (NoHostVisibleRegion, VIRTIO_GPU_RESP_ERR_UNSPEC),
            (
                MapOutsideHostVisibleRegion { offset: 0, size: 1 },
                VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
            ),
            (
                MapOffsetUnaligned { offset: 1 },
                VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
            ),
            (
                MapOverlapsMappedBlob {
                    offset: 0,
                    size: 1,
                    mapped_offset: 0,
                    mapped_size: 1,
                },
                VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
            ),
            (
                UnsupportedCapset { id: 9, version: 0 },
                VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
            ),
            (
                CursorNot64x64 {
                    width: 1,
                    height: 1,
                },
                VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
            ),
            (
                OutOfMemory { requested: 1 },
                VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY,
            ),
            (RendererFailed(-1), VIRTIO_GPU_RESP_ERR_UNSPEC),
            (RenderWorkerLost(1), VIRTIO_GPU_RESP_ERR_UNSPEC),
            (
                ResourceOnOtherWorker {
                    resource: 1,
                    ctx: 2,
                },
                VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
            ),
        ];
        for (err, code) in table {
            assert_eq!(err.response_code(), code, "{err}");
            assert!(!err.is_chain_error());
        }
    }

    #[test]
    fn display_names_the_values() {
        let e = ProtocolError::TooManyBackingEntries {
            n: 20000,
            max: 16384,
        };
        assert_eq!(
            e.to_string(),
            "20000 backing entries exceed the limit 16384"
        );
    }
}
