//! virgl command streams, encoded. No library needed: loadgen builds them
//! to drive a virgl backend, and the virgl renderer's tests use them too.

/// `VIRGL_FORMAT_R8G8B8A8_UNORM`.
pub const VIRGL_FORMAT_R8G8B8A8_UNORM: u32 = 67;

/// A 19-dword virgl command stream: a surface on `res` (an R8G8B8A8 2D
/// texture), bound as the only colour buffer, cleared to `rgba`. The
/// smallest real rendering a test or a load generator can submit.
pub fn clear_stream(res: u32, rgba: [f32; 4]) -> Vec<u8> {
    const CREATE_OBJECT: u32 = 1;
    const SET_FRAMEBUFFER_STATE: u32 = 5;
    const CLEAR: u32 = 7;
    const OBJECT_SURFACE: u32 = 8;
    const PIPE_CLEAR_COLOR0: u32 = 1 << 2;
    let hdr = |cmd: u32, obj: u32, len: u32| cmd | (obj << 8) | (len << 16);
    let depth = 1.0f64.to_bits();
    let words = [
        hdr(CREATE_OBJECT, OBJECT_SURFACE, 5),
        1, // surface handle
        res,
        VIRGL_FORMAT_R8G8B8A8_UNORM,
        0, // level
        0, // first | last layer << 16
        hdr(SET_FRAMEBUFFER_STATE, 0, 3),
        1, // nr_cbufs
        0, // no depth surface
        1, // cbuf 0: the surface
        hdr(CLEAR, 0, 8),
        PIPE_CLEAR_COLOR0,
        rgba[0].to_bits(),
        rgba[1].to_bits(),
        rgba[2].to_bits(),
        rgba[3].to_bits(),
        depth as u32,
        (depth >> 32) as u32,
        0, // stencil
    ];
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}
