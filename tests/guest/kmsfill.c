/*
 * kmsfill: the multi-head guest program of tests/tests/qemu_e2e.rs.
 *
 * fbdev emulation only drives the first head, so this one uses DRM/KMS
 * directly (raw ioctls, headers from libdrm-dev, no library): for every
 * connector of /dev/dri/card0, in order (virtio_gpu creates connector i,
 * CRTC i and scanout i together), it creates a dumb buffer, fills it with
 * that head's pattern, adds it as an XRGB8888 framebuffer, sets CRTC i to
 * show it on connector i and marks it dirty (DIRTYFB), which the driver turns
 * into SET_SCANOUT + TRANSFER_TO_HOST_2D + RESOURCE_FLUSH for scanout i.
 *
 * Mode of head i: the connector's first (preferred) mode when it has one;
 * a connector the VMM reports as disconnected has none, and gets a fixed
 * 1024x768 mode (KMS lets a DRM master light up a disconnected connector).
 *
 * Pattern of head h, a function of (h, x, y) only so the host can compute
 * every pixel:
 *
 *     red   = (x + 64 * h) & 0xff
 *     green = (y ^ (h * 0x55)) & 0xff
 *     blue  = ((x >> 8) | ((y >> 8) << 4)) ^ (0xa5 + 0x3c * h)
 *
 * Prints "KMSFILL-HEAD <h> <w>x<h>" per head, then "KMSFILL-READY <n>" on
 * stdout (the serial console), and stays alive (holding the DRM master and
 * the framebuffers) for argv[1] seconds (default 60) while the host takes
 * its screendumps. Any failure prints "KMSFILL-FAILED <why>".
 *
 * Built on the host: gcc -static -O2 -I/usr/include/libdrm kmsfill.c
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <drm.h>
#include <drm_fourcc.h>
#include <drm_mode.h>

#define MAX_HEADS 16

static int fail(const char *what)
{
	printf("KMSFILL-FAILED %s: %s\n", what, strerror(errno));
	return 1;
}

static uint32_t pattern(uint32_t h, uint32_t x, uint32_t y)
{
	uint32_t r = (x + 64 * h) & 0xff;
	uint32_t g = (y ^ (h * 0x55)) & 0xff;
	uint32_t b = (((x >> 8) | ((y >> 8) << 4)) ^ (0xa5 + 0x3c * h)) & 0xff;
	return 0xff000000u | (r << 16) | (g << 8) | b;
}

/* A 1024x768 mode with plausible timings (the values only need to pass
 * the kernel's basic mode checks; virtio_gpu shows hdisplay x vdisplay). */
static struct drm_mode_modeinfo fixed_mode(void)
{
	struct drm_mode_modeinfo m;
	memset(&m, 0, sizeof(m));
	m.clock = 65000;
	m.hdisplay = 1024;
	m.hsync_start = 1048;
	m.hsync_end = 1184;
	m.htotal = 1344;
	m.vdisplay = 768;
	m.vsync_start = 771;
	m.vsync_end = 777;
	m.vtotal = 806;
	m.vrefresh = 60;
	m.flags = DRM_MODE_FLAG_NHSYNC | DRM_MODE_FLAG_NVSYNC;
	m.type = DRM_MODE_TYPE_USERDEF;
	snprintf(m.name, sizeof(m.name), "1024x768");
	return m;
}

int main(int argc, char **argv)
{
	int hold = argc > 1 ? atoi(argv[1]) : 60;
	setvbuf(stdout, NULL, _IONBF, 0);

	/* Keep the framebuffer console from drawing over the patterns. */
	int tty = open("/dev/tty0", O_RDWR | O_CLOEXEC);
	if (tty >= 0 && ioctl(tty, KDSETMODE, KD_GRAPHICS) != 0)
		printf("kmsfill: KDSETMODE: %s\n", strerror(errno));

	int fd = open("/dev/dri/card0", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return fail("open /dev/dri/card0");
	/* The first opener is master already; asking again is harmless. */
	if (ioctl(fd, DRM_IOCTL_SET_MASTER, 0) != 0)
		printf("kmsfill: SET_MASTER: %s\n", strerror(errno));

	uint32_t crtcs[MAX_HEADS], conns[MAX_HEADS];
	struct drm_mode_card_res res;
	memset(&res, 0, sizeof(res));
	if (ioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &res) != 0)
		return fail("GETRESOURCES");
	uint32_t ncrtc = res.count_crtcs < MAX_HEADS ? res.count_crtcs : MAX_HEADS;
	uint32_t nconn = res.count_connectors < MAX_HEADS ? res.count_connectors : MAX_HEADS;
	memset(&res, 0, sizeof(res));
	res.count_crtcs = ncrtc;
	res.crtc_id_ptr = (uint64_t)(uintptr_t)crtcs;
	res.count_connectors = nconn;
	res.connector_id_ptr = (uint64_t)(uintptr_t)conns;
	if (ioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &res) != 0)
		return fail("GETRESOURCES (ids)");
	uint32_t heads = ncrtc < nconn ? ncrtc : nconn;
	printf("kmsfill: %u CRTCs, %u connectors\n", ncrtc, nconn);
	if (heads == 0) {
		printf("KMSFILL-FAILED no CRTC/connector pairs\n");
		return 1;
	}

	for (uint32_t h = 0; h < heads; h++) {
		struct drm_mode_modeinfo modes[64];
		struct drm_mode_get_connector c;
		memset(&c, 0, sizeof(c));
		c.connector_id = conns[h];
		if (ioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &c) != 0)
			return fail("GETCONNECTOR");
		uint32_t nm = c.count_modes > 64 ? 64 : c.count_modes;
		memset(&c, 0, sizeof(c));
		c.connector_id = conns[h];
		c.count_modes = nm;
		c.modes_ptr = (uint64_t)(uintptr_t)modes;
		if (ioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &c) != 0)
			return fail("GETCONNECTOR (modes)");
		struct drm_mode_modeinfo mode = nm ? modes[0] : fixed_mode();
		printf("kmsfill: head %u connector %u %s, %u modes, using %ux%u\n", h,
		       conns[h], c.connection == 1 ? "connected" : "not connected", nm,
		       mode.hdisplay, mode.vdisplay);
		uint32_t w = mode.hdisplay, ht = mode.vdisplay;

		struct drm_mode_create_dumb dumb;
		memset(&dumb, 0, sizeof(dumb));
		dumb.width = w;
		dumb.height = ht;
		dumb.bpp = 32;
		if (ioctl(fd, DRM_IOCTL_MODE_CREATE_DUMB, &dumb) != 0)
			return fail("CREATE_DUMB");

		struct drm_mode_map_dumb map;
		memset(&map, 0, sizeof(map));
		map.handle = dumb.handle;
		if (ioctl(fd, DRM_IOCTL_MODE_MAP_DUMB, &map) != 0)
			return fail("MAP_DUMB");
		uint8_t *px = mmap(NULL, dumb.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
				   map.offset);
		if (px == MAP_FAILED)
			return fail("mmap dumb buffer");
		for (uint32_t y = 0; y < ht; y++) {
			uint32_t *row = (uint32_t *)(px + (size_t)y * dumb.pitch);
			for (uint32_t x = 0; x < w; x++)
				row[x] = pattern(h, x, y);
		}

		struct drm_mode_fb_cmd2 fb;
		memset(&fb, 0, sizeof(fb));
		fb.width = w;
		fb.height = ht;
		fb.pixel_format = DRM_FORMAT_XRGB8888;
		fb.handles[0] = dumb.handle;
		fb.pitches[0] = dumb.pitch;
		if (ioctl(fd, DRM_IOCTL_MODE_ADDFB2, &fb) != 0)
			return fail("ADDFB2");

		struct drm_mode_crtc crtc;
		memset(&crtc, 0, sizeof(crtc));
		crtc.crtc_id = crtcs[h];
		crtc.fb_id = fb.fb_id;
		crtc.set_connectors_ptr = (uint64_t)(uintptr_t)&conns[h];
		crtc.count_connectors = 1;
		crtc.mode = mode;
		crtc.mode_valid = 1;
		if (ioctl(fd, DRM_IOCTL_MODE_SETCRTC, &crtc) != 0)
			return fail("SETCRTC");

		/* The whole framebuffer is damaged: flush it to the host. */
		struct drm_mode_fb_dirty_cmd dirty;
		memset(&dirty, 0, sizeof(dirty));
		dirty.fb_id = fb.fb_id;
		if (ioctl(fd, DRM_IOCTL_MODE_DIRTYFB, &dirty) != 0)
			printf("kmsfill: DIRTYFB: %s\n", strerror(errno));
		printf("KMSFILL-HEAD %u %ux%u\n", h, w, ht);
	}
	sleep(1);
	printf("KMSFILL-READY %u\n", heads);
	sleep(hold);
	printf("kmsfill: done\n");
	return 0;
}
