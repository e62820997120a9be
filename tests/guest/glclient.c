/*
 * glclient: the GL client of the real-guest 3D tests (tests/tests/guest3d.rs)
 * and of `bench guest3d`. A small GLES2 program on EGL/GBM, run inside the
 * guest on Mesa's virgl driver, that checks what the other clients (kmscube,
 * glmark2, weston) cannot: the colour of every frame, read back.
 *
 * Each frame: glClear to a colour that is a function of (client id, frame),
 * one triangle in a second such colour, glFinish (timed), eglSwapBuffers.
 * Every 16th frame it reads back one pixel of the clear colour and one of
 * the triangle (glReadPixels) and counts a readback error if either is not
 * exactly what was drawn.
 *
 *   glclient --kms [--head H]   on /dev/dri/card0: modesets head H and
 *                               page-flips every frame (waits for the flip)
 *   glclient --offscreen        on /dev/dri/renderD128, no display
 *   glclient --lease N          the container manager: as DRM master of
 *                               card0 it leases connector i + CRTC i + its
 *                               primary plane (drmModeCreateLease) to a
 *                               child process per head i < N, each a --kms
 *                               client on its lease fd, and waits for them
 *
 * Options: --id C (the colours' client id; with --lease, head i gets C + i),
 * --seconds S (default 10), --size WxH (offscreen, default 640x480),
 * --heavy N (a fragment shader with an N-step loop: an expensive client),
 * --hold S (KMS: keep the last frame on screen S seconds after reporting,
 * default 0), --ready FILE (create FILE once 32 frames are done: the guest's
 * init knows the client is in its render loop). SIGTERM ends the run as
 * --seconds does: the next frame is the last, then the report, exit 0.
 *
 * On the serial console (one write per line, so clients do not interleave):
 *   GLCLIENT-HASH id=C head=H WxH fnv=X   the last frame as the guest read
 *                                          it back (RGB, top row first):
 *                                          the host compares the screendump
 *   GLCLIENT-JSON {...}                   frames, fps, glFinish p50/p99 (us),
 *                                          longest frame gap (ms), readbacks
 *                                          and readback errors, flip errors
 *   GLCLIENT-FAILED why                   and exit status 1
 * A readback error also prints GLCLIENT-BADPIXEL with what was read.
 *
 * Built on the host (dynamic: the guest has the host's Mesa):
 *   gcc -O2 -I/usr/include/libdrm glclient.c -ldrm -lgbm -lEGL -lGLESv2
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <EGL/egl.h>
#include <EGL/eglext.h>
#include <GLES2/gl2.h>
#include <gbm.h>
#include <xf86drm.h>
#include <xf86drmMode.h>

#define MAX_FRAMES 200000
#define MAX_HEADS 16

static int client_id;
static int head;
static double seconds = 10;
static int width = 640, height = 480;
static int heavy;
static double hold;
static const char *ready_file;
static volatile sig_atomic_t stop_asked;

static void on_term(int sig)
{
	(void)sig;
	stop_asked = 1;
}

/* One line to the console in one write. */
static void say(const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	ssize_t w = write(1, buf, n);
	(void)w;
}

static int fail(const char *what)
{
	say("GLCLIENT-FAILED id=%d %s (errno %s, egl 0x%x, gl 0x%x)", client_id, what,
	    strerror(errno), eglGetError(), glGetError());
	return 1;
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* The frame's colours: exact in 8 bits (k / 255.0 rounds back to k). */
static void clear_rgb(int f, uint8_t c[3])
{
	c[0] = (uint8_t)(f * 7 + client_id * 50);
	c[1] = (uint8_t)(f * 13 + 80);
	c[2] = (uint8_t)(client_id * 37 + f * 3 + 1);
}

static void tri_rgb(int f, uint8_t c[3])
{
	c[0] = (uint8_t)(255 - f * 5);
	c[1] = (uint8_t)(client_id * 91 + 17);
	c[2] = (uint8_t)(f * 11 + 128);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------------ GL */

static GLuint program, u_color;

static GLuint shader(GLenum type, const char *src)
{
	GLuint s = glCreateShader(type);
	glShaderSource(s, 1, &src, NULL);
	glCompileShader(s);
	GLint ok = 0;
	glGetShaderiv(s, GL_COMPILE_STATUS, &ok);
	if (!ok) {
		char log[1024] = "";
		glGetShaderInfoLog(s, sizeof(log), NULL, log);
		say("GLCLIENT-FAILED id=%d shader: %s", client_id, log);
		exit(1);
	}
	return s;
}

static void gl_setup(void)
{
	static const char vs[] = "attribute vec2 pos;\n"
				 "void main() { gl_Position = vec4(pos, 0.0, 1.0); }\n";
	char fs[1024];
	if (heavy > 0)
		snprintf(fs, sizeof(fs),
			 "precision highp float;\n"
			 "uniform vec4 color;\n"
			 "void main() {\n"
			 "  float acc = gl_FragCoord.x * 1e-3;\n"
			 "  for (int i = 0; i < %d; i++) acc = fract(sin(acc * 12.9898 + float(i)) * 43758.5453);\n"
			 "  gl_FragColor = acc > 2.0 ? vec4(1.0) : color;\n"
			 "}\n",
			 heavy);
	else
		snprintf(fs, sizeof(fs), "precision mediump float;\n"
					 "uniform vec4 color;\n"
					 "void main() { gl_FragColor = color; }\n");
	program = glCreateProgram();
	glAttachShader(program, shader(GL_VERTEX_SHADER, vs));
	glAttachShader(program, shader(GL_FRAGMENT_SHADER, fs));
	glBindAttribLocation(program, 0, "pos");
	glLinkProgram(program);
	GLint ok = 0;
	glGetProgramiv(program, GL_LINK_STATUS, &ok);
	if (!ok) {
		say("GLCLIENT-FAILED id=%d link", client_id);
		exit(1);
	}
	glUseProgram(program);
	u_color = glGetUniformLocation(program, "color");
	/* Not symmetric in y: a flipped scanout shows. */
	static const GLfloat tri[] = {-0.5f, -0.5f, 0.5f, -0.5f, 0.0f, 0.6f};
	glVertexAttribPointer(0, 2, GL_FLOAT, GL_FALSE, 0, tri);
	glEnableVertexAttribArray(0);
	glViewport(0, 0, width, height);
}

static void draw(int f)
{
	uint8_t c[3], t[3];
	clear_rgb(f, c);
	tri_rgb(f, t);
	glClearColor(c[0] / 255.0f, c[1] / 255.0f, c[2] / 255.0f, 1.0f);
	glClear(GL_COLOR_BUFFER_BIT);
	glUniform4f(u_color, t[0] / 255.0f, t[1] / 255.0f, t[2] / 255.0f, 1.0f);
	glDrawArrays(GL_TRIANGLES, 0, 3);
}

/* 1 if the pixel at GL (x, y) is `want`. */
static int pixel_is(int f, const char *what, int x, int y, const uint8_t want[3])
{
	uint8_t got[4] = {0};
	glReadPixels(x, y, 1, 1, GL_RGBA, GL_UNSIGNED_BYTE, got);
	if (got[0] == want[0] && got[1] == want[1] && got[2] == want[2])
		return 1;
	say("GLCLIENT-BADPIXEL id=%d frame=%d %s (%d,%d) got %02x%02x%02x want %02x%02x%02x",
	    client_id, f, what, x, y, got[0], got[1], got[2], want[0], want[1], want[2]);
	return 0;
}

/* FNV-1a of the frame's RGB, top row first (the screendump's order). */
static uint64_t frame_hash(void)
{
	size_t row = (size_t)width * 4;
	uint8_t *px = malloc(row * height);
	if (!px)
		return 0;
	glPixelStorei(GL_PACK_ALIGNMENT, 1);
	glReadPixels(0, 0, width, height, GL_RGBA, GL_UNSIGNED_BYTE, px);
	uint64_t h = 0xcbf29ce484222325ull;
	for (int y = height - 1; y >= 0; y--)
		for (int x = 0; x < width; x++)
			for (int k = 0; k < 3; k++) {
				h ^= px[(size_t)y * row + (size_t)x * 4 + k];
				h *= 0x100000001b3ull;
			}
	free(px);
	return h;
}

/* ----------------------------------------------------------------- EGL */

static EGLDisplay dpy;
static EGLSurface surf;

static int egl_setup(struct gbm_device *gbm, struct gbm_surface *gs)
{
	dpy = eglGetPlatformDisplay(EGL_PLATFORM_GBM_KHR, gbm, NULL);
	if (dpy == EGL_NO_DISPLAY || !eglInitialize(dpy, NULL, NULL))
		return fail("eglInitialize");
	if (!eglBindAPI(EGL_OPENGL_ES_API))
		return fail("eglBindAPI");
	static const EGLint attrs[] = {EGL_SURFACE_TYPE, EGL_WINDOW_BIT, EGL_RED_SIZE, 8,
				       EGL_GREEN_SIZE, 8, EGL_BLUE_SIZE, 8,
				       EGL_RENDERABLE_TYPE, EGL_OPENGL_ES2_BIT, EGL_NONE};
	EGLConfig cfgs[64];
	EGLint n = 0;
	if (!eglChooseConfig(dpy, attrs, cfgs, 64, &n) || n == 0)
		return fail("eglChooseConfig");
	EGLConfig cfg = NULL;
	for (int i = 0; i < n; i++) {
		EGLint id = 0;
		eglGetConfigAttrib(dpy, cfgs[i], EGL_NATIVE_VISUAL_ID, &id);
		if (id == GBM_FORMAT_XRGB8888) {
			cfg = cfgs[i];
			break;
		}
	}
	if (!cfg)
		return fail("no XRGB8888 EGL config");
	static const EGLint ctx_attrs[] = {EGL_CONTEXT_CLIENT_VERSION, 2, EGL_NONE};
	EGLContext ctx = eglCreateContext(dpy, cfg, EGL_NO_CONTEXT, ctx_attrs);
	if (ctx == EGL_NO_CONTEXT)
		return fail("eglCreateContext");
	surf = eglCreatePlatformWindowSurface(dpy, cfg, gs, NULL);
	if (surf == EGL_NO_SURFACE)
		return fail("eglCreateWindowSurface");
	if (!eglMakeCurrent(dpy, surf, surf, ctx))
		return fail("eglMakeCurrent");
	/* Each swap shows one frame; no waiting for a vblank in EGL. */
	eglSwapInterval(dpy, 0);
	return 0;
}

/* ----------------------------------------------------------------- KMS */

struct kms {
	int fd;
	uint32_t conn, crtc;
	drmModeModeInfo mode;
	struct gbm_bo *shown;
	uint32_t shown_fb;
	int flip_pending;
};

static uint32_t bo_fb(struct kms *k, struct gbm_bo *bo)
{
	uint32_t *cached = gbm_bo_get_user_data(bo);
	if (cached)
		return *cached;
	uint32_t handles[4] = {gbm_bo_get_handle(bo).u32}, pitches[4] = {gbm_bo_get_stride(bo)},
		 offsets[4] = {0}, fb = 0;
	if (drmModeAddFB2(k->fd, gbm_bo_get_width(bo), gbm_bo_get_height(bo),
			  GBM_FORMAT_XRGB8888, handles, pitches, offsets, &fb, 0))
		return 0;
	uint32_t *keep = malloc(sizeof(*keep));
	*keep = fb;
	gbm_bo_set_user_data(bo, keep, NULL);
	return fb;
}

static void on_flip(int fd, unsigned seq, unsigned s, unsigned us, void *data)
{
	(void)fd, (void)seq, (void)s, (void)us;
	((struct kms *)data)->flip_pending = 0;
}

/* Waits (at most 2 s) for the pending flip; 0 when it came. */
static int wait_flip(struct kms *k)
{
	drmEventContext ev = {.version = 2, .page_flip_handler = on_flip};
	double until = now() + 2.0;
	while (k->flip_pending) {
		struct pollfd p = {.fd = k->fd, .events = POLLIN};
		int left = (int)((until - now()) * 1000);
		if (left <= 0)
			return -1;
		int r = poll(&p, 1, left);
		if (r < 0 && errno == EINTR)
			continue; /* SIGTERM: the run ends after this frame */
		if (r <= 0)
			return -1;
		drmHandleEvent(k->fd, &ev);
	}
	return 0;
}

static int kms_find(struct kms *k, int want_head, int leased)
{
	drmModeRes *res = drmModeGetResources(k->fd);
	if (!res)
		return fail("drmModeGetResources");
	/* A lessee sees only its connector and CRTC: index 0. */
	int idx = leased ? 0 : want_head;
	if (idx >= res->count_connectors || idx >= res->count_crtcs) {
		errno = ENOENT;
		return fail("no such head");
	}
	drmModeConnector *c = drmModeGetConnector(k->fd, res->connectors[idx]);
	if (!c)
		return fail("drmModeGetConnector");
	k->conn = c->connector_id;
	k->crtc = res->crtcs[idx];
	if (c->count_modes > 0) {
		k->mode = c->modes[0];
	} else {
		/* A disconnected head: a fixed mode, as kmsfill does. */
		memset(&k->mode, 0, sizeof(k->mode));
		k->mode.hdisplay = 1024, k->mode.vdisplay = 768, k->mode.clock = 65000;
		k->mode.hsync_start = 1048, k->mode.hsync_end = 1184, k->mode.htotal = 1344;
		k->mode.vsync_start = 771, k->mode.vsync_end = 777, k->mode.vtotal = 806;
		k->mode.vrefresh = 60;
		snprintf(k->mode.name, sizeof(k->mode.name), "1024x768");
	}
	drmModeFreeConnector(c);
	drmModeFreeResources(res);
	width = k->mode.hdisplay;
	height = k->mode.vdisplay;
	return 0;
}

/* Shows the front buffer: SetCrtc the first time, a page flip after. */
static int kms_show(struct kms *k, struct gbm_surface *gs, int *flip_errors)
{
	struct gbm_bo *bo = gbm_surface_lock_front_buffer(gs);
	if (!bo)
		return fail("gbm_surface_lock_front_buffer");
	uint32_t fb = bo_fb(k, bo);
	if (!fb)
		return fail("drmModeAddFB2");
	if (!k->shown) {
		if (drmModeSetCrtc(k->fd, k->crtc, fb, 0, 0, &k->conn, 1, &k->mode))
			return fail("drmModeSetCrtc");
	} else {
		k->flip_pending = 1;
		if (drmModePageFlip(k->fd, k->crtc, fb, DRM_MODE_PAGE_FLIP_EVENT, k)) {
			(*flip_errors)++;
			k->flip_pending = 0;
		} else if (wait_flip(k)) {
			(*flip_errors)++;
			k->flip_pending = 0;
		}
		gbm_surface_release_buffer(gs, k->shown);
	}
	k->shown = bo;
	k->shown_fb = fb;
	return 0;
}

/* ----------------------------------------------------------------- run */

static uint64_t finish_us[MAX_FRAMES];

static int run(int fd, int kms_mode, int leased)
{
	struct kms k = {.fd = fd};
	if (kms_mode && kms_find(&k, head, leased))
		return 1;
	struct gbm_device *gbm = gbm_create_device(fd);
	if (!gbm)
		return fail("gbm_create_device");
	uint32_t use = GBM_BO_USE_RENDERING | (kms_mode ? GBM_BO_USE_SCANOUT : 0);
	struct gbm_surface *gs =
		gbm_surface_create(gbm, width, height, GBM_FORMAT_XRGB8888, use);
	if (!gs)
		return fail("gbm_surface_create");
	if (egl_setup(gbm, gs))
		return 1;
	gl_setup();

	int frames = 0, readbacks = 0, bad = 0, flip_errors = 0;
	uint64_t hash = 0;
	double start = now(), last = start, max_gap = 0;
	for (;;) {
		int f = frames;
		int final = now() - start >= seconds || frames + 1 >= MAX_FRAMES || stop_asked;
		draw(f);
		double t0 = now();
		glFinish();
		double t1 = now();
		finish_us[frames] = (uint64_t)((t1 - t0) * 1e6);
		if (f % 16 == 0 || final) {
			uint8_t c[3], t[3];
			clear_rgb(f, c);
			tri_rgb(f, t);
			readbacks++;
			/* GL's origin is the bottom left: (1,1) is clear colour,
			 * the centre a little low is inside the triangle. */
			int ok = pixel_is(f, "clear", 1, 1, c) &
				 pixel_is(f, "triangle", width / 2, height * 45 / 100, t);
			bad += !ok;
		}
		if (final && kms_mode)
			hash = frame_hash();
		if (!eglSwapBuffers(dpy, surf))
			return fail("eglSwapBuffers");
		if (kms_mode) {
			if (kms_show(&k, gs, &flip_errors))
				return 1;
		} else {
			struct gbm_bo *bo = gbm_surface_lock_front_buffer(gs);
			if (bo)
				gbm_surface_release_buffer(gs, bo);
		}
		frames++;
		if (frames == 32 && ready_file) {
			int r = open(ready_file, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
			if (r >= 0)
				close(r);
		}
		double t = now();
		if (frames > 1 && t - last > max_gap)
			max_gap = t - last;
		last = t;
		if (final)
			break;
	}
	double elapsed = now() - start;
	qsort(finish_us, frames, sizeof(finish_us[0]), cmp_u64);
	uint64_t p50 = finish_us[frames / 2];
	uint64_t p99 = finish_us[(frames * 99) / 100 < frames ? (frames * 99) / 100 : frames - 1];
	if (kms_mode)
		say("GLCLIENT-HASH id=%d head=%d %dx%d fnv=%016llx", client_id, head, width, height,
		    (unsigned long long)hash);
	say("GLCLIENT-JSON {\"id\":%d,\"mode\":\"%s\",\"head\":%d,\"width\":%d,\"height\":%d,"
	    "\"heavy\":%d,\"frames\":%d,\"seconds\":%.3f,\"fps\":%.1f,\"finish_p50_us\":%llu,"
	    "\"finish_p99_us\":%llu,\"max_gap_ms\":%.1f,\"readbacks\":%d,\"readback_errors\":%d,"
	    "\"flip_errors\":%d}",
	    client_id, kms_mode ? "kms" : "offscreen", kms_mode ? head : -1, width, height, heavy,
	    frames, elapsed, frames / elapsed, (unsigned long long)p50, (unsigned long long)p99,
	    max_gap * 1e3, readbacks, bad, flip_errors);
	if (kms_mode && hold > 0)
		usleep((useconds_t)(hold * 1e6));
	return 0;
}

/* The container manager: leases head i to child i. */
static int lease_heads(int n)
{
	int fd = open("/dev/dri/card0", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return fail("open /dev/dri/card0");
	drmSetClientCap(fd, DRM_CLIENT_CAP_UNIVERSAL_PLANES, 1);
	drmModeRes *res = drmModeGetResources(fd);
	drmModePlaneRes *planes = drmModeGetPlaneResources(fd);
	if (!res || !planes)
		return fail("drmModeGetResources");
	if (n > res->count_connectors || n > res->count_crtcs || n > MAX_HEADS) {
		errno = ENOENT;
		return fail("fewer heads than leases asked for");
	}
	pid_t kids[MAX_HEADS];
	for (int i = 0; i < n; i++) {
		uint32_t objs[3] = {res->connectors[i], res->crtcs[i], 0};
		int nobj = 2;
		/* The CRTC's primary plane: the one that can only be on it. */
		for (uint32_t p = 0; p < planes->count_planes; p++) {
			drmModePlane *pl = drmModeGetPlane(fd, planes->planes[p]);
			if (pl && pl->possible_crtcs == (1u << i)) {
				objs[nobj++] = pl->plane_id;
				drmModeFreePlane(pl);
				break;
			}
			drmModeFreePlane(pl);
		}
		uint32_t lessee = 0;
		int lfd = drmModeCreateLease(fd, objs, nobj, O_CLOEXEC, &lessee);
		if (lfd < 0)
			return fail("drmModeCreateLease");
		say("GLCLIENT-LEASE head=%d lessee=%u objects=%d", i, lessee, nobj);
		pid_t pid = fork();
		if (pid < 0)
			return fail("fork");
		if (pid == 0) {
			close(fd);
			client_id += i;
			head = i;
			_exit(run(lfd, 1, 1));
		}
		close(lfd);
		kids[i] = pid;
	}
	int failed = 0;
	for (int i = 0; i < n; i++) {
		int st = 0;
		if (waitpid(kids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			failed++;
	}
	close(fd);
	return failed ? 1 : 0;
}

int main(int argc, char **argv)
{
	int mode = 0, leases = 0; /* 1 kms, 2 offscreen, 3 lease */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--kms"))
			mode = 1;
		else if (!strcmp(a, "--offscreen"))
			mode = 2;
		else if (!strcmp(a, "--lease") && v)
			mode = 3, leases = atoi(v), i++;
		else if (!strcmp(a, "--head") && v)
			head = atoi(v), i++;
		else if (!strcmp(a, "--id") && v)
			client_id = atoi(v), i++;
		else if (!strcmp(a, "--seconds") && v)
			seconds = atof(v), i++;
		else if (!strcmp(a, "--hold") && v)
			hold = atof(v), i++;
		else if (!strcmp(a, "--ready") && v)
			ready_file = v, i++;
		else if (!strcmp(a, "--heavy") && v)
			heavy = atoi(v), i++;
		else if (!strcmp(a, "--size") && v && sscanf(v, "%dx%d", &width, &height) == 2)
			i++;
		else {
			say("GLCLIENT-FAILED bad argument %s", a);
			return 2;
		}
	}
	if (width <= 0 || height <= 0 || width > 4096 || height > 4096 || seconds < 0) {
		say("GLCLIENT-FAILED bad size or duration");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, on_term);
	switch (mode) {
	case 1: {
		int fd = open("/dev/dri/card0", O_RDWR | O_CLOEXEC);
		if (fd < 0)
			return fail("open /dev/dri/card0");
		return run(fd, 1, 0);
	}
	case 2: {
		int fd = open("/dev/dri/renderD128", O_RDWR | O_CLOEXEC);
		if (fd < 0)
			return fail("open /dev/dri/renderD128");
		return run(fd, 0, 0);
	}
	case 3:
		return lease_heads(leases);
	default:
		say("GLCLIENT-FAILED say --kms, --offscreen or --lease N");
		return 2;
	}
}
