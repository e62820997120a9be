//! A synthetic EDID 1.4 base block for a scanout's mode, served by
//! `GET_EDID` so the guest sees the window size as the preferred mode.
//!
//! The preferred (first) detailed timing uses CVT reduced-blanking v1
//! porches at 60 Hz; what a real panel would put there is meaningless for
//! a virtual display, but guests reject EDIDs whose timings do not add up.

/// EDID base block length.
pub const EDID_BLOCK_SIZE: usize = 128;

/// Largest active width/height a detailed timing descriptor can express
/// (12-bit fields).
pub const EDID_MAX_ACTIVE: u32 = 4095;

const REFRESH_HZ: u64 = 60;
/// Lowest pixel clock a detailed timing may carry (edid-decode and
/// several parsers treat less as invalid data).
const MIN_CLOCK_HZ: u64 = 10_000_000;
// CVT reduced blanking (v1) constants.
const H_BLANK: u32 = 160;
const H_FRONT: u32 = 48;
const H_SYNC: u32 = 32;
const V_FRONT: u32 = 3;
const V_BACK_MIN: u32 = 6;
const RB_MIN_VBLANK_NS: u64 = 460_000;
/// Nominal density used to invent a physical size (96 DPI).
const DOTS_PER_METRE_X10: u32 = 37_795; // 96 / 0.0254, times 10

/// The 128-byte EDID 1.4 base block for a `width` x `height` display.
///
/// Dimensions above 4095 are clamped (the descriptor cannot say more), and
/// for very large modes the refresh rate drops below 60 Hz so the pixel
/// clock fits its 16-bit field. Never panics; the checksum is always valid.
pub fn edid_for(width: u32, height: u32) -> [u8; EDID_BLOCK_SIZE] {
    let t = Timing::for_mode(width, height);
    let mut e = [0u8; EDID_BLOCK_SIZE];

    // Header.
    e[0..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "GPU" (three 5-bit letters, A = 1, big endian).
    let mfg: u16 = (7 << 10) | (16 << 5) | 21;
    e[8..10].copy_from_slice(&mfg.to_be_bytes());
    e[10..12].copy_from_slice(&1u16.to_le_bytes()); // product code
    e[16] = 0; // week: unspecified
    e[17] = 35; // model year 2025 (1990 + 35)
    e[18] = 1; // EDID version 1
    e[19] = 4; // revision 4
    e[20] = 0xa0; // digital input, 8 bits per colour, interface undefined
    e[21] = cm_from_mm(t.width_mm);
    e[22] = cm_from_mm(t.height_mm);
    e[23] = 120; // gamma 2.2
    e[24] = 0x06; // RGB 4:4:4, sRGB default colour space, preferred timing is native
    write_srgb_chromaticity(&mut e[25..35]);
    // 35..38: no established timings. 38..54: unused standard timings.
    for slot in e[38..54].chunks_exact_mut(2) {
        slot.copy_from_slice(&[0x01, 0x01]);
    }
    t.write_detailed_timing(&mut e[54..72]);
    t.write_range_limits(&mut e[72..90]);
    write_name(&mut e[90..108], b"gpu-reactor");
    e[108..126].copy_from_slice(&[0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // dummy
    e[126] = 0; // no extension blocks
    let sum = e[..127].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

struct Timing {
    h_active: u32,
    h_blank: u32,
    v_active: u32,
    v_sync: u32,
    v_blank: u32,
    clock_10khz: u32,
    width_mm: u32,
    height_mm: u32,
}

impl Timing {
    fn for_mode(width: u32, height: u32) -> Self {
        let h_active = width.clamp(1, EDID_MAX_ACTIVE);
        let v_active = height.clamp(1, EDID_MAX_ACTIVE);
        let v_sync = cvt_vsync_for_aspect(h_active, v_active);
        // CVT-RB: enough blank lines to cover 460 µs at the estimated line period.
        let frame_ns = 1_000_000_000 / REFRESH_HZ;
        let line_ns = ((frame_ns - RB_MIN_VBLANK_NS) / u64::from(v_active)).max(1);
        let vbi_lines = (RB_MIN_VBLANK_NS / line_ns + 1).min(u64::from(u16::MAX)) as u32;
        let mut v_blank = vbi_lines
            .max(V_FRONT + v_sync + V_BACK_MIN)
            .min(EDID_MAX_ACTIVE);
        let mut h_blank = H_BLANK;
        // Tiny modes: widen the blanking (horizontal first) until the
        // pixel clock reaches 10 MHz at 60 Hz.
        let min_pixels = MIN_CLOCK_HZ.div_ceil(REFRESH_HZ);
        let total = |a: u32, b: u32| u64::from(a) * u64::from(b);
        if total(h_active + h_blank, v_active + v_blank) < min_pixels {
            let want = min_pixels.div_ceil(u64::from(v_active + v_blank)) as u32;
            h_blank = want
                .saturating_sub(h_active)
                .clamp(H_BLANK, EDID_MAX_ACTIVE);
        }
        if total(h_active + h_blank, v_active + v_blank) < min_pixels {
            let want = min_pixels.div_ceil(u64::from(h_active + h_blank)) as u32;
            v_blank = want
                .saturating_sub(v_active)
                .clamp(v_blank, EDID_MAX_ACTIVE);
        }
        let h_total = u64::from(h_active + h_blank);
        let v_total = u64::from(v_active + v_blank);
        let clock_hz = h_total * v_total * REFRESH_HZ;
        let clock_10khz = clock_hz.div_ceil(10_000).clamp(1, u64::from(u16::MAX)) as u32;
        Self {
            h_active,
            h_blank,
            v_active,
            v_sync,
            v_blank,
            clock_10khz,
            width_mm: mm_at_96_dpi(h_active),
            height_mm: mm_at_96_dpi(v_active),
        }
    }

    fn h_total(&self) -> u32 {
        self.h_active + self.h_blank
    }

    fn v_total(&self) -> u32 {
        self.v_active + self.v_blank
    }

    /// Detailed timing descriptor (18 bytes).
    fn write_detailed_timing(&self, d: &mut [u8]) {
        let hi = |v: u32| ((v >> 8) & 0x0f) as u8;
        d[0..2].copy_from_slice(&(self.clock_10khz as u16).to_le_bytes());
        d[2] = self.h_active as u8;
        d[3] = self.h_blank as u8;
        d[4] = (hi(self.h_active) << 4) | hi(self.h_blank);
        d[5] = self.v_active as u8;
        d[6] = self.v_blank as u8;
        d[7] = (hi(self.v_active) << 4) | hi(self.v_blank);
        d[8] = H_FRONT as u8;
        d[9] = H_SYNC as u8;
        d[10] = (((V_FRONT & 0x0f) << 4) | (self.v_sync & 0x0f)) as u8;
        d[11] = ((((H_FRONT >> 8) & 3) << 6)
            | (((H_SYNC >> 8) & 3) << 4)
            | (((V_FRONT >> 4) & 3) << 2)
            | ((self.v_sync >> 4) & 3)) as u8;
        d[12] = self.width_mm as u8;
        d[13] = self.height_mm as u8;
        d[14] = (hi(self.width_mm) << 4) | hi(self.height_mm);
        d[15] = 0; // no borders
        d[16] = 0;
        // Digital separate sync, +hsync, -vsync (the CVT-RB polarities).
        d[17] = 0x18 | 0x02;
    }

    /// Display range limits descriptor that contains the preferred mode.
    fn write_range_limits(&self, d: &mut [u8]) {
        let clock_hz = u64::from(self.clock_10khz) * 10_000;
        let line_hz = clock_hz / u64::from(self.h_total());
        let frame_hz = line_hz / u64::from(self.v_total());
        let v_min = frame_hz.clamp(1, 50);
        let v_max = (frame_hz + 1).clamp(75, 255);
        let h_khz_lo = line_hz / 1000;
        let h_khz_hi = line_hz.div_ceil(1000);
        let h_min = h_khz_lo.clamp(1, 30);
        let mut offsets = 0u8;
        let mut h_max = h_khz_hi.max(80);
        if h_max > 255 {
            offsets |= 0x08; // max horizontal rate is stored minus 255
            h_max = (h_max - 255).min(255);
        }
        let max_clock_10mhz = u64::from(self.clock_10khz).div_ceil(1000).clamp(1, 255);
        d[0..5].copy_from_slice(&[0, 0, 0, 0xfd, offsets]);
        d[5] = v_min as u8;
        d[6] = v_max as u8;
        d[7] = h_min as u8;
        d[8] = h_max as u8;
        d[9] = max_clock_10mhz as u8;
        d[10] = 0x01; // range limits only, no timing formula
        d[11] = 0x0a;
        d[12..18].fill(0x20);
    }
}

/// CVT vertical sync width by aspect ratio (4:3, 16:9, 16:10, 5:4, 15:9;
/// 10 lines for anything else).
fn cvt_vsync_for_aspect(w: u32, h: u32) -> u32 {
    let (w, h) = (u64::from(w), u64::from(h));
    let is = |a: u64, b: u64| w * b == h * a;
    if is(4, 3) {
        4
    } else if is(16, 9) {
        5
    } else if is(16, 10) {
        6
    } else if is(5, 4) || is(15, 9) {
        7
    } else {
        10
    }
}

fn mm_at_96_dpi(px: u32) -> u32 {
    // mm = px / (dots per metre) * 1000
    ((u64::from(px) * 10_000_000 / u64::from(DOTS_PER_METRE_X10)).div_ceil(1000) as u32)
        .clamp(1, EDID_MAX_ACTIVE)
}

fn cm_from_mm(mm: u32) -> u8 {
    mm.div_ceil(10).clamp(1, 255) as u8
}

/// sRGB primaries and D65 white as 10-bit binary fractions.
fn write_srgb_chromaticity(c: &mut [u8]) {
    // Rx, Ry, Gx, Gy, Bx, By, Wx, Wy
    let v: [u32; 8] = [655, 338, 307, 614, 154, 61, 320, 337];
    let lo = |a: u32, b: u32, cc: u32, dd: u32| {
        (((a & 3) << 6) | ((b & 3) << 4) | ((cc & 3) << 2) | (dd & 3)) as u8
    };
    c[0] = lo(v[0], v[1], v[2], v[3]);
    c[1] = lo(v[4], v[5], v[6], v[7]);
    for (dst, x) in c[2..10].iter_mut().zip(v) {
        *dst = (x >> 2) as u8;
    }
}

/// Display product name descriptor: up to 13 bytes, `\n`, space padded.
fn write_name(d: &mut [u8], name: &[u8]) {
    d[0..5].copy_from_slice(&[0, 0, 0, 0xfc, 0]);
    let n = name.len().min(13);
    d[5..5 + n].copy_from_slice(&name[..n]);
    if n < 13 {
        d[5 + n] = 0x0a;
        d[6 + n..18].fill(0x20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dtd_mode(e: &[u8; 128]) -> (u32, u32, u32) {
        let d = &e[54..72];
        let clock = u32::from(u16::from_le_bytes([d[0], d[1]]));
        let h = u32::from(d[2]) | (u32::from(d[4] >> 4) << 8);
        let v = u32::from(d[5]) | (u32::from(d[7] >> 4) << 8);
        (h, v, clock)
    }

    #[test]
    fn edid_checksum_makes_the_block_sum_to_zero() {
        for (w, h) in [
            (1280, 800),
            (1024, 768),
            (1920, 1080),
            (3840, 2160),
            (1, 1),
            (16384, 16384),
        ] {
            let e = edid_for(w, h);
            assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "{w}x{h}");
        }
    }

    #[test]
    fn edid_is_version_1_4_with_the_fixed_header() {
        let e = edid_for(1280, 800);
        assert_eq!(&e[0..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        assert_eq!((e[18], e[19]), (1, 4));
        assert_eq!(e[126], 0);
    }

    #[test]
    fn edid_preferred_timing_is_the_requested_mode_at_about_60_hz() {
        let e = edid_for(1280, 800);
        let (h, v, clock) = dtd_mode(&e);
        assert_eq!((h, v), (1280, 800));
        // CVT-RB 1280x800: 1440 x 823 total, 71.11 MHz at exactly 60 Hz.
        assert_eq!(clock, 7111);
        let d = &e[54..72];
        let hblank = u32::from(d[3]) | (u32::from(d[4] & 0xf) << 8);
        let vblank = u32::from(d[6]) | (u32::from(d[7] & 0xf) << 8);
        let hz = f64::from(clock) * 10_000.0 / f64::from((h + hblank) * (v + vblank));
        assert!((59.9..60.1).contains(&hz), "{hz}");
    }

    #[test]
    fn edid_clamps_modes_larger_than_a_timing_descriptor_can_express() {
        let e = edid_for(16384, 9000);
        let (h, v, clock) = dtd_mode(&e);
        assert_eq!((h, v), (4095, 4095));
        assert_eq!(clock, 65535);
    }

    #[test]
    fn edid_of_a_tiny_mode_keeps_a_pixel_clock_of_at_least_10_mhz() {
        for (w, h) in [(1, 1), (16, 16), (64, 48)] {
            let e = edid_for(w, h);
            let (hh, vv, clock) = dtd_mode(&e);
            assert_eq!((hh, vv), (w, h));
            assert!(clock >= 1000, "{w}x{h}: {clock}");
        }
    }

    #[test]
    fn edid_carries_the_product_name() {
        let e = edid_for(640, 480);
        assert_eq!(&e[90..95], &[0, 0, 0, 0xfc, 0]);
        assert_eq!(&e[95..107], b"gpu-reactor\n");
    }
}
