//! virgl command streams, encoded. No library needed: loadgen builds them
//! to drive a virgl backend, and the virgl renderer's tests use them too.

/// `VIRGL_FORMAT_R8G8B8A8_UNORM`.
pub const VIRGL_FORMAT_R8G8B8A8_UNORM: u32 = 67;

const CREATE_OBJECT: u32 = 1;
const SET_FRAMEBUFFER_STATE: u32 = 5;
const CLEAR: u32 = 7;
const RESOURCE_COPY_REGION: u32 = 17;
const OBJECT_SURFACE: u32 = 8;
const PIPE_CLEAR_COLOR0: u32 = 1 << 2;

fn hdr(cmd: u32, obj: u32, len: u32) -> u32 {
    cmd | (obj << 8) | (len << 16)
}

/// A surface object `handle` on `res` (an R8G8B8A8 2D texture), level 0.
fn surface(handle: u32, res: u32) -> [u32; 6] {
    [
        hdr(CREATE_OBJECT, OBJECT_SURFACE, 5),
        handle,
        res,
        VIRGL_FORMAT_R8G8B8A8_UNORM,
        0, // level
        0, // first | last layer << 16
    ]
}

/// Surface `handle` as the only colour buffer.
fn bind(handle: u32) -> [u32; 4] {
    [
        hdr(SET_FRAMEBUFFER_STATE, 0, 3),
        1, // nr_cbufs
        0, // no depth surface
        handle,
    ]
}

fn clear(rgba: [f32; 4]) -> [u32; 9] {
    let depth = 1.0f64.to_bits();
    [
        hdr(CLEAR, 0, 8),
        PIPE_CLEAR_COLOR0,
        rgba[0].to_bits(),
        rgba[1].to_bits(),
        rgba[2].to_bits(),
        rgba[3].to_bits(),
        depth as u32,
        (depth >> 32) as u32,
        0, // stencil
    ]
}

fn bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A 19-dword virgl command stream: a surface on `res` (an R8G8B8A8 2D
/// texture), bound as the only colour buffer, cleared to `rgba`. The
/// smallest real rendering a test or a load generator can submit.
pub fn clear_stream(res: u32, rgba: [f32; 4]) -> Vec<u8> {
    let mut words = Vec::with_capacity(19);
    words.extend(surface(1, res));
    words.extend(bind(1));
    words.extend(clear(rgba));
    bytes(&words)
}

/// A 14-dword stream copying the `width` x `height` top-left rectangle
/// of `src` into `dst` (2D textures of one format, level 0): how a
/// compositor's context uses a client's buffer, in the fewest words.
pub fn copy_stream(dst: u32, src: u32, width: u32, height: u32) -> Vec<u8> {
    bytes(&[
        hdr(RESOURCE_COPY_REGION, 0, 13),
        dst,
        0, // dst level
        0, // dst x, y, z
        0,
        0,
        src,
        0, // src level
        0, // src box x, y, z, w, h, d
        0,
        0,
        width,
        height,
        1,
    ])
}

/// An expensive stream on purpose (loadgen's heavy-context): `rounds`
/// times a full clear of `scratch` (a large R8G8B8A8 texture) and one of
/// `res`, then `res` cleared to `rgba` as [`clear_stream`] does. Moving
/// the framebuffer to another texture makes llvmpipe rasterize the scene
/// it had, so every clear is really done (clears of an unchanged
/// framebuffer would merge into one; two surfaces of one texture are the
/// same framebuffer to GL).
pub fn heavy_clear_stream(res: u32, scratch: u32, rgba: [f32; 4], rounds: usize) -> Vec<u8> {
    let mut words = Vec::with_capacity(25 + rounds * 26);
    words.extend(surface(1, res));
    words.extend(surface(2, scratch));
    for i in 0..rounds {
        let shade = (i % 255) as f32 / 255.0;
        for handle in [2, 1] {
            words.extend(bind(handle));
            words.extend(clear([shade, 0.5, 1.0 - shade, 1.0]));
        }
    }
    words.extend(bind(1));
    words.extend(clear(rgba));
    bytes(&words)
}
