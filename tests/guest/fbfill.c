/*
 * fbfill: the guest program of tests/tests/qemu_e2e.rs.
 *
 * Fills /dev/fb0 (the virtio_gpu driver's fbdev emulation) with a pattern
 * that is a function of (x, y) only, so the host can compute every pixel:
 *
 *     red   = x & 0xff
 *     green = y & 0xff
 *     blue  = ((x >> 8) | ((y >> 8) << 4)) ^ 0xa5
 *
 * The kernel's deferred I/O turns the writes into TRANSFER_TO_HOST_2D +
 * RESOURCE_FLUSH for the backend. Then it prints "FBFILL-READY" with the
 * geometry on stdout (the serial console) and stays alive for the number of
 * seconds given as argv[1] (default 60) while the host takes its
 * screendump; the host then stops the VM.
 *
 * It also prints the DRM connector state of /dev/dri/card0 (raw ioctls,
 * headers from libdrm-dev, no library): "connector N: connected WxH".
 *
 * Built on the host: gcc -static -O2 -I/usr/include/libdrm fbfill.c
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fb.h>
#include <linux/kd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <drm.h>
#include <drm_mode.h>

static void drm_report(void)
{
	int fd = open("/dev/dri/card0", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		printf("fbfill: /dev/dri/card0: %s\n", strerror(errno));
		return;
	}
	uint32_t conns[8];
	struct drm_mode_card_res res;
	memset(&res, 0, sizeof(res));
	if (ioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &res) != 0) {
		printf("fbfill: GETRESOURCES: %s\n", strerror(errno));
		close(fd);
		return;
	}
	if (res.count_connectors > 8)
		res.count_connectors = 8;
	uint32_t n = res.count_connectors;
	memset(&res, 0, sizeof(res));
	res.count_connectors = n;
	res.connector_id_ptr = (uint64_t)(uintptr_t)conns;
	if (ioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &res) != 0) {
		printf("fbfill: GETRESOURCES: %s\n", strerror(errno));
		close(fd);
		return;
	}
	for (uint32_t i = 0; i < n && i < res.count_connectors; i++) {
		struct drm_mode_modeinfo modes[64];
		struct drm_mode_get_connector c;
		memset(&c, 0, sizeof(c));
		c.connector_id = conns[i];
		if (ioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &c) != 0)
			continue;
		uint32_t nm = c.count_modes > 64 ? 64 : c.count_modes;
		memset(&c, 0, sizeof(c));
		c.connector_id = conns[i];
		c.count_modes = nm;
		c.modes_ptr = (uint64_t)(uintptr_t)modes;
		if (ioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &c) != 0)
			continue;
		printf("fbfill: connector %u: %s, %u modes, first %ux%u\n", c.connector_id,
		       c.connection == 1 ? "connected" : "not connected", c.count_modes,
		       nm ? modes[0].hdisplay : 0, nm ? modes[0].vdisplay : 0);
	}
	close(fd);
}

static uint32_t channel(uint32_t v, const struct fb_bitfield *f)
{
	/* 8-bit value into a channel of f->length bits at f->offset */
	if (f->length < 8)
		v >>= 8 - f->length;
	return v << f->offset;
}

int main(int argc, char **argv)
{
	int hold = argc > 1 ? atoi(argv[1]) : 60;
	setvbuf(stdout, NULL, _IONBF, 0);

	/* Keep the framebuffer console from drawing over the pattern. */
	int tty = open("/dev/tty0", O_RDWR | O_CLOEXEC);
	if (tty >= 0) {
		if (ioctl(tty, KDSETMODE, KD_GRAPHICS) != 0)
			printf("fbfill: KDSETMODE: %s\n", strerror(errno));
	}

	drm_report();

	int fd = open("/dev/fb0", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		printf("FBFILL-FAILED open /dev/fb0: %s\n", strerror(errno));
		return 1;
	}
	struct fb_var_screeninfo var;
	struct fb_fix_screeninfo fix;
	if (ioctl(fd, FBIOGET_VSCREENINFO, &var) != 0 || ioctl(fd, FBIOGET_FSCREENINFO, &fix) != 0) {
		printf("FBFILL-FAILED FBIOGET_*SCREENINFO: %s\n", strerror(errno));
		return 1;
	}
	if (var.bits_per_pixel != 32) {
		printf("FBFILL-FAILED bits_per_pixel %u (want 32)\n", var.bits_per_pixel);
		return 1;
	}
	size_t len = (size_t)fix.line_length * var.yres_virtual;
	if (fix.smem_len && len > fix.smem_len)
		len = fix.smem_len;
	uint8_t *fb = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (fb == MAP_FAILED) {
		printf("FBFILL-FAILED mmap: %s\n", strerror(errno));
		return 1;
	}
	printf("fbfill: %s %ux%u (virtual %ux%u) bpp %u stride %u "
	       "r %u/%u g %u/%u b %u/%u\n",
	       fix.id, var.xres, var.yres, var.xres_virtual, var.yres_virtual, var.bits_per_pixel,
	       fix.line_length, var.red.offset, var.red.length, var.green.offset,
	       var.green.length, var.blue.offset, var.blue.length);

	for (uint32_t y = 0; y < var.yres; y++) {
		uint32_t *row = (uint32_t *)(fb + (size_t)(y + var.yoffset) * fix.line_length);
		for (uint32_t x = 0; x < var.xres; x++) {
			uint32_t r = x & 0xff;
			uint32_t g = y & 0xff;
			uint32_t b = ((x >> 8) | ((y >> 8) << 4)) ^ 0xa5;
			uint32_t px = channel(r, &var.red) | channel(g, &var.green) |
				      channel(b, &var.blue);
			if (var.transp.length)
				px |= channel(0xff, &var.transp);
			row[x + var.xoffset] = px;
		}
	}
	/* Flush the deferred I/O now rather than on its timer. */
	if (fsync(fd) != 0)
		printf("fbfill: fsync: %s\n", strerror(errno));
	sleep(1);
	printf("FBFILL-READY %ux%u\n", var.xres, var.yres);
	sleep(hold);
	printf("fbfill: done\n");
	return 0;
}
