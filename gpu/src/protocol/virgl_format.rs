//! What a `RESOURCE_CREATE_3D` format costs in host memory: the bytes one
//! texel of each virgl format (`enum virgl_formats`, gallium's numbering,
//! which virtio-gpu's 2D formats share) takes, as an upper bound.
//!
//! Used to charge 3D resources to the guest's memory budget, so it errs
//! high: every format of at most 4 bytes a texel is charged 4 (8-bit,
//! 16-bit, packed, YUV and depth formats alike), 3-channel formats are
//! charged as the 4-channel ones drivers store them as, and block-compressed
//! formats (DXT/S3TC, RGTC, LATC, ETC, BPTC, ASTC: 8 or 16 bytes per block
//! of 16 or more texels) 1 byte.

/// Formats are numbered below this (`VIRGL_FORMAT_MAX`); virglrenderer
/// refuses the rest, and so does the decoder.
pub const VIRGL_FORMAT_MAX: u32 = 313;

/// Bytes one texel of `format` takes at most; `None` for a number that is
/// not a virgl format.
pub fn bytes_per_texel(format: u32) -> Option<u64> {
    let bytes = match format {
        VIRGL_FORMAT_MAX.. => return None,
        // R64G64B64A64_FLOAT.
        27 => 32,
        // R64G64B64_FLOAT (stored as four channels).
        26 => 32,
        // Four 32-bit channels (FLOAT, UNORM, USCALED, SNORM, SSCALED,
        // FIXED, UINT, SINT, X32 variants), and R64G64_FLOAT.
        25 | 31 | 35 | 39 | 43 | 47 | 90 | 196 | 200 | 239..=241 => 16,
        // Three 32-bit channels (stored as four).
        30 | 34 | 38 | 42 | 46 | 89 | 195 | 199 => 16,
        // Two 32-bit channels, R64_FLOAT, Z32_FLOAT_S8X24 and X32_S8X24.
        24 | 29 | 33 | 37 | 41 | 45 | 88 | 126 | 138 | 161 | 194 | 198 | 220 | 224 | 246 | 251
        | 252 => 8,
        // Four 16-bit channels (and X16 variants).
        51 | 55 | 59 | 63 | 94 | 188 | 192 | 234..=238 => 8,
        // Three 16-bit channels (stored as four).
        50 | 54 | 58 | 62 | 93 | 187 | 191 => 8,
        // Block-compressed: DXT1-5 (sRGB too), RGTC, LATC, ETC1, BPTC,
        // ETC2, ASTC.
        105..=116 | 143..=146 | 226 | 255..=258 | 269..=306 => 1,
        _ => 4,
    };
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_widest_formats_are_charged_their_size_and_the_rest_at_most_4() {
        assert_eq!(bytes_per_texel(2), Some(4)); // B8G8R8X8_UNORM
        assert_eq!(bytes_per_texel(67), Some(4)); // R8G8B8A8_UNORM
        assert_eq!(bytes_per_texel(31), Some(16)); // R32G32B32A32_FLOAT
        assert_eq!(bytes_per_texel(27), Some(32)); // R64G64B64A64_FLOAT
        assert_eq!(bytes_per_texel(94), Some(8)); // R16G16B16A16_FLOAT
        assert_eq!(bytes_per_texel(108), Some(1)); // DXT5_RGBA
        assert_eq!(bytes_per_texel(VIRGL_FORMAT_MAX - 1), Some(4)); // R8_SRGB
        assert_eq!(bytes_per_texel(VIRGL_FORMAT_MAX), None);
        assert_eq!(bytes_per_texel(u32::MAX), None);
        assert!((0..VIRGL_FORMAT_MAX).all(|f| bytes_per_texel(f).is_some_and(|b| b <= 32)));
    }
}
