// SPDX-License-Identifier: GPL-2.0
/*
 * ztest: in-guest tests and benchmark of the zerrow kernel module.
 *
 *   ztest                 run all tests, print "ZTEST PASS|FAIL|SKIP name..."
 *   ztest NAME...         run the named tests
 *   ztest --bench MIB...  benchmark de-anonymization against a memfd copy
 *
 * Every test runs in its own forked process with an alarm, so a crash or a
 * hang is reported as a failure of that test only.  Readers are separate
 * processes that receive the file descriptor over a unix socket
 * (SCM_RIGHTS), exactly as a consumer of zerrow would.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "../include/uapi/zerrow_kmod.h"

#define PAGE 4096UL
#define MIB (1024UL * 1024UL)
#define ALIGN_UP(x, a) (((x) + (a) - 1) & ~((a) - 1))

static char fail_msg[512];

#define CHECK(cond, ...)                                                       \
	do {                                                                   \
		if (!(cond)) {                                                 \
			snprintf(fail_msg, sizeof(fail_msg), __VA_ARGS__);     \
			report_fail(__LINE__);                                 \
			return 1;                                              \
		}                                                              \
	} while (0)

static void report_fail(int line)
{
	/* printed by the test process; the runner prints the verdict */
	fprintf(stdout, "ZTEST INFO line %d: %s\n", line, fail_msg);
	fflush(stdout);
}

/* ---------------------------------------------------------------- helpers */

static uint8_t pat(uint64_t i, uint32_t seed)
{
	return (uint8_t)(i * 131u + (i >> 12) * 7u + seed);
}

static void fill(uint8_t *p, uint64_t len, uint32_t seed)
{
	for (uint64_t i = 0; i < len; i++)
		p[i] = pat(i, seed);
}

/* 0 if equal, else index + 1 of the first mismatch */
static uint64_t verify(const uint8_t *p, uint64_t len, uint32_t seed)
{
	for (uint64_t i = 0; i < len; i++)
		if (p[i] != pat(i, seed))
			return i + 1;
	return 0;
}

static uint64_t verify_base(const uint8_t *p, uint64_t len, uint32_t seed,
			    uint64_t base)
{
	for (uint64_t i = 0; i < len; i++)
		if (p[i] != pat(base + i, seed))
			return i + 1;
	return 0;
}

static int zdev(void)
{
	return open(ZERROW_DEVICE_PATH, O_RDWR | O_CLOEXEC);
}

static int zcreate(int dev)
{
	struct zerrow_create c = { .flags = ZERROW_CREATE_CLOEXEC };
	int r = ioctl(dev, ZERROW_IOC_CREATE, &c);

	if (r < 0)
		return -1;
	return c.fd;
}

static int zappend(int fd, const void *addr, uint64_t len, uint32_t flags,
		   struct zerrow_append *out)
{
	struct zerrow_append a = { .addr = (uint64_t)(uintptr_t)addr, .len = len,
				   .flags = flags };
	int r = ioctl(fd, ZERROW_IOC_APPEND, &a);

	if (out)
		*out = a;
	return r;
}

static int zinfo(int fd, struct zerrow_info *info)
{
	return ioctl(fd, ZERROW_IOC_INFO, info);
}

static void *anon(uint64_t len, int hugepage)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	madvise(p, len, hugepage ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	return p;
}

/* 2 MiB-aligned anonymous memory for THP */
static void *anon_aligned(uint64_t len, int hugepage)
{
	uint64_t total = len + 2 * MIB;
	uint8_t *p = mmap(NULL, total, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *a;

	if (p == MAP_FAILED)
		return NULL;
	a = (uint8_t *)ALIGN_UP((uintptr_t)p, 2 * MIB);
	if (a > p)
		munmap(p, a - p);
	munmap(a + len, (p + total) - (a + len));
	madvise(a, len, hugepage ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	return a;
}

static int send_fd(int sock, int fd, const void *buf, size_t len)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *c;

	memset(cbuf, 0, sizeof(cbuf));
	if (fd >= 0) {
		m.msg_control = cbuf;
		m.msg_controllen = sizeof(cbuf);
		c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	return sendmsg(sock, &m, 0) == (ssize_t)len ? 0 : -1;
}

static int recv_fd(int sock, int *fd, void *buf, size_t len)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
			    .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c;
	ssize_t n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);

	*fd = -1;
	if (n != (ssize_t)len)
		return -1;
	for (c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
			memcpy(fd, CMSG_DATA(c), sizeof(int));
	return 0;
}

/* Run fn(arg) in a child; return its raw wait status. */
static int in_child(int (*fn)(void *), void *arg)
{
	int st;
	pid_t pid = fork();

	if (pid == 0) {
		alarm(60);
		_exit(fn(arg));
	}
	if (pid < 0 || waitpid(pid, &st, 0) != pid)
		return -1;
	return st;
}

static long read_kv(const char *path, const char *key)
{
	char line[256];
	size_t kl = strlen(key);
	long v = -1;
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, kl) && (line[kl] == ' ' || line[kl] == ':')) {
			v = strtol(line + kl + 1 + (line[kl] == ':'), NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

/*
 * Free memory in kB: MemFree plus the pages sitting in the per-cpu free
 * lists (since 6.7 the pcp lists auto-tune and can hold ~100 MB after a burst
 * of frees; MemFree does not count them).
 */
static long free_kb(void)
{
	char line[256];
	long pcp = 0, v;
	FILE *f = fopen("/proc/zoneinfo", "r");

	if (f) {
		while (fgets(line, sizeof(line), f))
			if (sscanf(line, " count: %ld", &v) == 1)
				pcp += v;
		fclose(f);
	}
	return read_kv("/proc/meminfo", "MemFree") + pcp * (long)(PAGE / 1024);
}

static long modparam(const char *name)
{
	char path[128], buf[64];
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/module/zerrow/parameters/%s", name);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fgets(buf, sizeof(buf), f))
		v = strtol(buf, NULL, 10);
	fclose(f);
	return v;
}

/* AnonHugePages (kB) of the vma containing addr, from /proc/self/smaps */
static long thp_kb(void *addr)
{
	char line[512];
	unsigned long lo, hi, a = (unsigned long)addr;
	int in = 0;
	long v = -1;
	FILE *f = fopen("/proc/self/smaps", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = a >= lo && a < hi;
			continue;
		}
		if (in && !strncmp(line, "AnonHugePages:", 14)) {
			v = strtol(line + 14, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

/* ------------------------------------------------------------ the reader */

enum { R_MAP = 1, R_VERIFY, R_BYTE, R_FORKVERIFY, R_UNMAP, R_TOUCH, R_EXIT,
       R_APPEND };

struct rmsg {
	int32_t cmd;
	uint32_t seed;
	uint64_t map_len;
	uint64_t off;
	uint64_t len;
};

struct reader {
	pid_t pid;
	int sock;
};

static void reader_loop(int sock)
{
	uint8_t *map = NULL;
	uint64_t map_len = 0;
	struct rmsg m;
	int fd;

	for (;;) {
		int64_t reply = 0;

		if (recv_fd(sock, &fd, &m, sizeof(m)))
			_exit(0);
		switch (m.cmd) {
		case R_MAP:
			map = mmap(NULL, m.map_len, PROT_READ, MAP_SHARED, fd, 0);
			if (map == MAP_FAILED) {
				reply = -errno;
				map = NULL;
			}
			map_len = m.map_len;
			close(fd);	/* the mapping alone keeps the file */
			break;
		case R_VERIFY:
			/* map_len is the pattern index of the first byte */
			reply = map ? (int64_t)verify_base(map + m.off, m.len, m.seed,
							   m.map_len) : -EINVAL;
			break;
		case R_BYTE:
			reply = map ? map[m.off] : -EINVAL;
			break;
		case R_FORKVERIFY: {
			pid_t pid = fork();
			int st;

			if (pid == 0)
				_exit(verify(map + m.off, m.len, m.seed) ? 1 : 0);
			waitpid(pid, &st, 0);
			reply = WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
			break;
		}
		case R_UNMAP:
			if (map)
				munmap(map, map_len);
			map = NULL;
			break;
		case R_TOUCH: {
			volatile uint8_t s = 0;

			for (uint64_t i = 0; i < map_len; i += PAGE)
				s += map[i];
			reply = s;
			break;
		}
		case R_APPEND: {	/* a non-owner tries to append its memory */
			void *p = anon(PAGE, 0);

			memset(p, 1, PAGE);
			reply = zappend(fd, p, PAGE, 0, NULL) ? -errno : 0;
			close(fd);
			break;
		}
		case R_EXIT:
			_exit(0);
		}
		if (write(sock, &reply, sizeof(reply)) != sizeof(reply))
			_exit(1);
	}
}

static int reader_start(struct reader *r)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv))
		return -1;
	r->pid = fork();
	if (r->pid == 0) {
		close(sv[0]);
		alarm(120);
		reader_loop(sv[1]);
		_exit(0);
	}
	close(sv[1]);
	r->sock = sv[0];
	return r->pid < 0 ? -1 : 0;
}

static int64_t reader_cmd(struct reader *r, int cmd, int fd, uint64_t map_len,
			  uint64_t off, uint64_t len, uint32_t seed)
{
	struct rmsg m = { .cmd = cmd, .seed = seed, .map_len = map_len,
			  .off = off, .len = len };
	int64_t reply;

	if (send_fd(r->sock, fd, &m, sizeof(m)))
		return -9999;
	if (read(r->sock, &reply, sizeof(reply)) != sizeof(reply))
		return -9998;
	return reply;
}

static void reader_stop(struct reader *r)
{
	int st;

	reader_cmd(r, R_EXIT, -1, 0, 0, 0, 0);
	close(r->sock);
	waitpid(r->pid, &st, 0);
}

/* A producer: anonymous memory with a pattern, shared in one append. */
struct prod {
	uint8_t *p;
	int dev;
	int fd;
};

static int prod_share(struct prod *pr, uint64_t len, uint32_t seed,
		      struct zerrow_append *a)
{
	pr->p = anon(len, 0);
	pr->dev = zdev();
	pr->fd = -1;
	if (!pr->p || pr->dev < 0)
		return -1;
	fill(pr->p, len, seed);
	pr->fd = zcreate(pr->dev);
	if (pr->fd < 0)
		return -1;
	return zappend(pr->fd, pr->p, len, 0, a);
}

static void prod_close(struct prod *pr)
{
	close(pr->fd);
	close(pr->dev);
}

/* ------------------------------------------------------------------ tests */

static int t_version(void)
{
	uint32_t v = 0;
	int dev = zdev();

	CHECK(dev >= 0, "open %s: %s", ZERROW_DEVICE_PATH, strerror(errno));
	CHECK(ioctl(dev, ZERROW_IOC_VERSION, &v) == 0, "VERSION: %s", strerror(errno));
	CHECK(v == ZERROW_ABI_VERSION, "abi %u", v);
	CHECK(ioctl(dev, _IO('Z', 0x7f)) < 0 && errno == ENOTTY, "unknown ioctl");
	close(dev);
	return 0;
}

static int t_basic_share(void)
{
	const uint64_t len = 8 * MIB;
	struct reader r;
	struct zerrow_append a;
	struct zerrow_info info;
	struct stat st;
	struct prod pr;
	uint8_t *p;
	int fd;

	CHECK(reader_start(&r) == 0, "reader");
	CHECK(prod_share(&pr, len, 1, &a) == 0, "CREATE/APPEND: %s", strerror(errno));
	p = pr.p;
	fd = pr.fd;
	CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC, "cloexec");
	CHECK(a.offset == 0 && a.exposed_head == 0 && a.exposed_tail == 0,
	      "offset %llu", (unsigned long long)a.offset);
	CHECK(a.pinned_pages == len / PAGE && a.copied_pages == 0, "pinned %llu",
	      (unsigned long long)a.pinned_pages);
	CHECK(a.protect_addr == (uintptr_t)p && a.protect_len == len &&
	      a.protect_offset == 0, "protect range");
	CHECK(ioctl(fd, ZERROW_IOC_SEAL) == 0, "SEAL: %s", strerror(errno));
	CHECK(zinfo(fd, &info) == 0 && info.size == len && info.sealed == 1 &&
	      info.pinned_pages == len / PAGE && info.page_size == PAGE &&
	      info.appends == 1, "INFO");
	CHECK(fstat(fd, &st) == 0 && (uint64_t)st.st_size == len, "fstat size %lld",
	      (long long)st.st_size);
	CHECK(modparam("live_files") >= 1, "live_files counter");
	CHECK(reader_cmd(&r, R_MAP, fd, len, 0, 0, 0) == 0, "reader mmap");
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, 0, len, 1) == 0, "reader sees other data");
	prod_close(&pr);
	/* producer's own memory is still its own and unchanged */
	CHECK(verify(p, len, 1) == 0, "producer memory changed");
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, 0, len, 1) == 0, "after producer close");
	reader_stop(&r);
	return 0;
}

static int t_unaligned(void)
{
	const uint64_t buf = 64 * PAGE;
	struct zerrow_append a1, a2, a3;
	struct zerrow_info info;
	struct reader r;
	uint8_t *p;
	int dev, fd;

	CHECK(reader_start(&r) == 0, "reader");
	p = anon(buf, 0);
	memset(p, 0xEE, buf);
	dev = zdev();
	fd = zcreate(dev);
	/* [p+123, p+123+10000): 3 pages */
	fill(p + 123, 10000, 2);
	CHECK(zappend(fd, p + 123, 10000, 0, &a1) == 0, "append1: %s", strerror(errno));
	CHECK(a1.offset == 123, "offset1 %llu", (unsigned long long)a1.offset);
	CHECK(a1.exposed_head == 123 && a1.exposed_tail == 3 * PAGE - 10123,
	      "exposed %llu %llu", (unsigned long long)a1.exposed_head,
	      (unsigned long long)a1.exposed_tail);
	CHECK(a1.pinned_pages == 3, "pinned1 %llu", (unsigned long long)a1.pinned_pages);
	CHECK(a1.protect_addr == (uintptr_t)p + PAGE && a1.protect_len == PAGE &&
	      a1.protect_offset == PAGE, "protect1");
	/* a range inside one page */
	fill(p + 20 * PAGE + 4000, 50, 3);
	CHECK(zappend(fd, p + 20 * PAGE + 4000, 50, 0, &a2) == 0, "append2");
	CHECK(a2.offset == 3 * PAGE + 4000, "offset2 %llu", (unsigned long long)a2.offset);
	CHECK(a2.protect_len == 0 && a2.pinned_pages == 1, "protect2");
	/* a range crossing one page boundary */
	fill(p + 30 * PAGE + 4090, 20, 4);
	CHECK(zappend(fd, p + 30 * PAGE + 4090, 20, 0, &a3) == 0, "append3");
	CHECK(a3.offset == 4 * PAGE + 4090 && a3.pinned_pages == 2, "offset3");
	CHECK(zinfo(fd, &info) == 0 && info.size == 6 * PAGE && info.appends == 3, "size");
	CHECK(reader_cmd(&r, R_MAP, fd, info.size, 0, 0, 0) == 0, "map");
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, a1.offset, 10000, 2) == 0, "data1");
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, a2.offset, 50, 3) == 0, "data2");
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, a3.offset, 20, 4) == 0, "data3");
	/* exposed bytes really are the producer's neighbours */
	CHECK(reader_cmd(&r, R_BYTE, -1, 0, 0, 0, 0) == 0xEE, "exposed head byte");
	/* unprotected edge: producer writes to a neighbour are visible */
	p[10] = 0x11;
	CHECK(reader_cmd(&r, R_BYTE, -1, 0, 10, 0, 0) == 0x11, "neighbour write not shared");
	close(fd);
	close(dev);
	reader_stop(&r);
	return 0;
}

static int t_copy_edges(void)
{
	const uint64_t buf = 16 * PAGE;
	struct zerrow_append a, b;
	struct reader r;
	uint8_t *p;
	int dev, fd;

	CHECK(reader_start(&r) == 0, "reader");
	p = anon(buf, 0);
	memset(p, 0xEE, buf);
	fill(p + 100, 5 * PAGE, 5);	/* pages 0..5, partial 0 and 5 */
	dev = zdev();
	fd = zcreate(dev);
	CHECK(zappend(fd, p + 100, 5 * PAGE, ZERROW_APPEND_COPY_EDGES, &a) == 0,
	      "append: %s", strerror(errno));
	CHECK(a.offset == 100 && a.exposed_head == 0 && a.exposed_tail == 0, "exposed");
	CHECK(a.copied_pages == 2 && a.pinned_pages == 4, "copied %llu pinned %llu",
	      (unsigned long long)a.copied_pages, (unsigned long long)a.pinned_pages);
	CHECK(a.protect_addr == (uintptr_t)p + PAGE && a.protect_len == 4 * PAGE, "protect");
	/* single partial page, copied whole */
	fill(p + 10 * PAGE + 7, 30, 6);
	CHECK(zappend(fd, p + 10 * PAGE + 7, 30, ZERROW_APPEND_COPY_EDGES, &b) == 0, "append b");
	CHECK(b.copied_pages == 1 && b.pinned_pages == 0 && b.exposed_tail == 0 &&
	      b.offset == 6 * PAGE + 7, "single page copy");
	CHECK(modparam("live_copied_pages") >= 3, "copied counter");
	CHECK(reader_cmd(&r, R_MAP, fd, 7 * PAGE, 0, 0, 0) == 0, "map");
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, 100, 5 * PAGE, 5) == 0, "data");
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, b.offset, 30, 6) == 0, "data b");
	CHECK(reader_cmd(&r, R_BYTE, -1, 0, 99, 0, 0) == 0, "head outside not zero");
	CHECK(reader_cmd(&r, R_BYTE, -1, 0, 5 * PAGE + 100, 0, 0) == 0, "tail outside");
	/* producer writes to its edges are not visible, interior writes are */
	p[100] ^= 0xFF;
	p[99] = 0x33;
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, 100, 1, 5) == 0, "copied edge changed");
	CHECK(reader_cmd(&r, R_BYTE, -1, 0, 99, 0, 0) == 0, "neighbour leaked");
	p[100] ^= 0xFF;
	close(fd);
	close(dev);
	reader_stop(&r);
	return 0;
}

static int write_byte(void *addr)
{
	*(volatile uint8_t *)addr = 1;
	return 0;
}

static int t_protect(void)
{
	const uint64_t len = 4 * MIB;
	struct zerrow_append a;
	struct reader r;
	struct prod pr;
	uint8_t *p, *q;
	int fd, st;

	CHECK(reader_start(&r) == 0, "reader");
	CHECK(prod_share(&pr, len, 7, &a) == 0, "append");
	p = pr.p;
	fd = pr.fd;
	CHECK(ioctl(fd, ZERROW_IOC_SEAL) == 0, "seal");
	/* the producer-protection step: remap its own range read-only */
	q = mmap((void *)(uintptr_t)a.protect_addr, a.protect_len, PROT_READ,
		 MAP_SHARED | MAP_FIXED, fd, a.protect_offset);
	CHECK(q == p, "remap: %s", strerror(errno));
	CHECK(verify(p, len, 7) == 0, "producer view after remap");
	CHECK(reader_cmd(&r, R_MAP, fd, len, 0, 0, 0) == 0, "map");
	close(fd);
	/* writes by the producer (or a fork of it) fault */
	st = in_child(write_byte, p + 12345);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV, "write did not SEGV (%x)", st);
	CHECK(mprotect(p, len, PROT_READ | PROT_WRITE) < 0 && errno == EACCES,
	      "mprotect write allowed: %s", strerror(errno));
	/* MADV_DONTNEED is refused on VM_PFNMAP (EINVAL); data stays */
	CHECK(madvise(p, len, MADV_DONTNEED) < 0 && errno == EINVAL, "madvise DONTNEED: %s",
	      strerror(errno));
	CHECK(verify(p, len, 7) == 0, "data gone after DONTNEED");
	/* reuse of the addresses for fresh memory does not touch readers */
	q = mmap(p, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	CHECK(q == p, "re-mmap anon");
	memset(p, 0x5A, len);
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, 0, len, 7) == 0, "reader changed by reuse");
	munmap(p, len);
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, 0, len, 7) == 0, "reader after munmap");
	close(pr.dev);
	reader_stop(&r);
	return 0;
}

static int t_unprotected_semantics(void)
{
	const uint64_t len = MIB;
	struct reader r;
	struct prod pr;
	uint8_t *p;
	int st;
	pid_t pid;

	CHECK(reader_start(&r) == 0, "reader");
	CHECK(prod_share(&pr, len, 8, NULL) == 0, "append");
	p = pr.p;
	CHECK(reader_cmd(&r, R_MAP, pr.fd, len, 0, 0, 0) == 0, "map");
	/* a child forked after pinning gets its own copy of pinned pages */
	pid = fork();
	if (pid == 0) {
		memset(p, 0, len);
		_exit(0);
	}
	waitpid(pid, &st, 0);
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, 0, len, 8) == 0, "forked child's write leaked");
	/* without the remap, the producer's own writes are shared */
	p[777] ^= 0xFF;
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, 777, 1, 8) != 0, "producer write not seen");
	p[777] ^= 0xFF;
	/* free: the producer unmapping its range does not affect readers */
	munmap(p, len);
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, 0, len, 8) == 0, "after producer munmap");
	prod_close(&pr);
	reader_stop(&r);
	return 0;
}

/* producer in a child process; it exits or gets killed while the reader lives */
static int t_producer_gone_common(int kill_it)
{
	const uint64_t len = 16 * MIB;
	struct reader r;
	int sv[2], st;
	pid_t pid;

	CHECK(reader_start(&r) == 0, "reader");
	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0, "socketpair");
	pid = fork();
	if (pid == 0) {
		uint8_t *p = anon(len, 0);
		int dev = zdev(), fd = zcreate(dev);
		char c = 0;

		fill(p, len, 9);
		if (zappend(fd, p, len, 0, NULL) || ioctl(fd, ZERROW_IOC_SEAL))
			_exit(2);
		send_fd(sv[1], fd, &c, 1);
		if (kill_it)
			for (;;)
				pause();
		_exit(0);
	}
	{
		char c;
		int fd;

		CHECK(recv_fd(sv[0], &fd, &c, 1) == 0 && fd >= 0, "receive fd");
		CHECK(reader_cmd(&r, R_MAP, fd, len, 0, 0, 0) == 0, "map");
		close(fd);
	}
	if (kill_it)
		kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	CHECK(kill_it ? (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) :
	      (WIFEXITED(st) && WEXITSTATUS(st) == 0), "producer status %x", st);
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, 0, len, 9) == 0, "data after producer gone");
	CHECK(reader_cmd(&r, R_FORKVERIFY, -1, 0, 0, len, 9) == 0, "reader fork");
	reader_stop(&r);
	return 0;
}

/* A child forked before the append shares the pages COW; its writes stay its own. */
static int t_fork_before_append(void)
{
	const uint64_t len = 2 * MIB;
	struct reader r;
	struct prod pr;
	int go[2], done[2], st;
	pid_t pid;
	char c;

	CHECK(reader_start(&r) == 0, "reader");
	CHECK(pipe(go) == 0 && pipe(done) == 0, "pipe");
	pr.p = anon(len, 0);
	fill(pr.p, len, 13);
	pid = fork();
	if (pid == 0) {	/* shares every page with the parent until someone writes */
		if (read(go[0], &c, 1) != 1)
			_exit(2);
		memset(pr.p, 0, len);
		_exit(write(done[1], "d", 1) == 1 ? 0 : 3);
	}
	pr.dev = zdev();
	pr.fd = zcreate(pr.dev);
	CHECK(zappend(pr.fd, pr.p, len, 0, NULL) == 0, "append");
	CHECK(reader_cmd(&r, R_MAP, pr.fd, len, 0, 0, 0) == 0, "map");
	CHECK(write(go[1], "g", 1) == 1 && read(done[0], &c, 1) == 1, "child ran");
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %x", st);
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, 0, len, 13) == 0, "child's write reached readers");
	CHECK(verify(pr.p, len, 13) == 0, "child's write reached the producer");
	prod_close(&pr);
	reader_stop(&r);
	return 0;
}

static int t_producer_exit(void)
{
	return t_producer_gone_common(0);
}

static int t_producer_killed(void)
{
	return t_producer_gone_common(1);
}

static int t_reader_fork(void)
{
	const uint64_t len = 2 * MIB + 3 * PAGE;
	struct reader r;
	struct prod pr;

	CHECK(reader_start(&r) == 0, "reader");
	CHECK(prod_share(&pr, len, 10, NULL) == 0, "append");
	CHECK(reader_cmd(&r, R_MAP, pr.fd, len, 0, 0, 0) == 0, "map");
	/* child before the parent faulted anything, then after */
	CHECK(reader_cmd(&r, R_FORKVERIFY, -1, 0, 0, len, 10) == 0, "fork verify 1");
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, 0, len, 10) == 0, "parent verify");
	CHECK(reader_cmd(&r, R_FORKVERIFY, -1, 0, 0, len, 10) == 0, "fork verify 2");
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, 0, len, 10) == 0, "parent verify 2");
	prod_close(&pr);
	munmap(pr.p, len);
	reader_stop(&r);
	return 0;
}

static int read_byte(void *addr)
{
	volatile uint8_t v = *(volatile uint8_t *)addr;

	(void)v;
	return 0;
}

static int t_readonly(void)
{
	const uint64_t len = 64 * PAGE;
	struct prod pr;
	uint8_t *m;
	int fd, st;

	CHECK(prod_share(&pr, len, 12, NULL) == 0, "append");
	fd = pr.fd;
	errno = 0;
	CHECK(mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED &&
	      errno == EACCES, "shared PROT_WRITE mmap: %s", strerror(errno));
	errno = 0;
	CHECK(mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0) == MAP_FAILED &&
	      errno == EACCES, "private PROT_WRITE mmap: %s", strerror(errno));
	m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
	CHECK(m != MAP_FAILED, "private PROT_READ mmap: %s", strerror(errno));
	CHECK(mprotect(m, len, PROT_READ | PROT_WRITE) < 0 && errno == EACCES,
	      "mprotect private");
	munmap(m, len);
	m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(m != MAP_FAILED, "shared PROT_READ mmap: %s", strerror(errno));
	CHECK(mprotect(m, len, PROT_READ | PROT_WRITE) < 0 && errno == EACCES,
	      "mprotect shared: %s", strerror(errno));
	CHECK(mprotect(m + PAGE, PAGE, PROT_NONE) == 0 &&
	      mprotect(m + PAGE, PAGE, PROT_READ) == 0, "mprotect read back");
	st = in_child(write_byte, m + 5);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV, "write to mapping: %x", st);
	st = in_child(read_byte, m + 5);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "read mapping: %x", st);
	/* the pfnmap cannot be pinned/gup'ed: O_DIRECT-like users get EFAULT */
	{
		int fd2 = zcreate(pr.dev);

		errno = 0;
		CHECK(zappend(fd2, m, PAGE, 0, NULL) < 0 && errno == EACCES,
		      "re-append of a zerrow mapping: %s", strerror(errno));
		close(fd2);
	}
	{	/* gup-based access (process_vm_readv pins the remote pages) fails */
		char buf[16];
		struct iovec lo = { buf, sizeof(buf) }, re = { m, sizeof(buf) };

		errno = 0;
		CHECK(process_vm_readv(getpid(), &lo, 1, &re, 1, 0) < 0 && errno == EFAULT,
		      "process_vm_readv of a zerrow mapping: %s", strerror(errno));
	}
	{	/* copy_from_user access: a pipe write from the mapping */
		int pp[2];
		char c;

		CHECK(pipe(pp) == 0, "pipe");
		CHECK(write(pp[1], m + 5, 1) == 1 && read(pp[0], &c, 1) == 1 &&
		      (uint8_t)c == pat(5, 12), "copy_from_user of mapping");
		close(pp[0]);
		close(pp[1]);
	}
	munmap(m, len);
	prod_close(&pr);
	munmap(pr.p, len);
	return 0;
}

static int t_sigbus(void)
{
	const uint64_t len = 8 * PAGE;
	struct prod pr;
	uint8_t *m;
	int fd, st;

	CHECK(prod_share(&pr, len, 12, NULL) == 0, "append");
	fd = pr.fd;
	m = mmap(NULL, len + 4 * PAGE, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(m != MAP_FAILED, "mmap beyond end: %s", strerror(errno));
	st = in_child(read_byte, m + len - PAGE + 5);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "last byte: %x", st);
	st = in_child(read_byte, m + len);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGBUS, "past end: %x", st);
	st = in_child(read_byte, m + len + 3 * PAGE);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGBUS, "far past end: %x", st);
	/* mapping at an offset past the end is allowed, touching it is not */
	munmap(m, len + 4 * PAGE);
	m = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, len);
	CHECK(m != MAP_FAILED, "mmap at end");
	st = in_child(read_byte, m);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGBUS, "offset past end: %x", st);
	munmap(m, PAGE);
	/* appending after the mapping was made makes the pages appear */
	m = mmap(NULL, 2 * len, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(zappend(fd, pr.p, len, 0, NULL) == 0, "append 2");
	st = in_child(read_byte, m + len + 5);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "grown file: %x", st);
	munmap(m, 2 * len);
	prod_close(&pr);
	munmap(pr.p, len);
	return 0;
}

static int t_thp(void)
{
	const uint64_t len = 8 * MIB;
	struct zerrow_append a;
	struct reader r;
	uint8_t *p, *q;
	long kb;
	int dev, fd;

	CHECK(reader_start(&r) == 0, "reader");
	p = anon_aligned(len, 1);
	CHECK(p, "mmap");
	fill(p, len, 11);
	kb = thp_kb(p);
	printf("ZTEST INFO thp: AnonHugePages %ld kB of %lu kB\n", kb, len / 1024);
	CHECK(kb > 0, "no THP (AnonHugePages %ld)", kb);
	dev = zdev();
	fd = zcreate(dev);
	/* an unaligned range inside the huge pages, then the whole thing */
	CHECK(zappend(fd, p + 3 * MIB + 17, 2 * MIB, 0, &a) == 0, "append part");
	CHECK(a.offset == 17 && a.pinned_pages == 2 * MIB / PAGE + 1, "part");
	CHECK(zappend(fd, p, len, 0, &a) == 0, "append all");
	CHECK(a.offset == 2 * MIB + PAGE, "offset %llu", (unsigned long long)a.offset);
	CHECK(reader_cmd(&r, R_MAP, fd, a.offset + len, 0, 0, 0) == 0, "map");
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, a.offset, len, 11) == 0, "data all");
	/* the pattern index of the part starts at 3 MiB + 17 */
	CHECK(reader_cmd(&r, R_VERIFY, -1, 3 * MIB + 17, 17, 2 * MIB, 11) == 0, "data part");
	/* protect: remap the huge-page range read-only (splits the pmds) */
	q = mmap((void *)(uintptr_t)a.protect_addr, a.protect_len, PROT_READ,
		 MAP_SHARED | MAP_FIXED, fd, a.protect_offset);
	CHECK(q == p, "remap");
	CHECK(verify(p, len, 11) == 0, "producer view");
	munmap(p, len);
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, a.offset, len, 11) == 0, "data after unmap");
	close(fd);
	close(dev);
	reader_stop(&r);
	return 0;
}

static int t_errors(void)
{
	const uint64_t len = 16 * PAGE;
	struct reader r;
	uint8_t *p, *ro, *sh;
	int dev, fd;

	CHECK(reader_start(&r) == 0, "reader");
	p = anon(len, 0);
	memset(p, 1, len);
	dev = zdev();
	fd = zcreate(dev);
	CHECK(fd >= 0, "create");
	errno = 0;
	CHECK(zappend(fd, p, 0, 0, NULL) < 0 && errno == EINVAL, "len 0");
	CHECK(zappend(fd, p, PAGE, 0x80, NULL) < 0 && errno == EINVAL, "bad flags");
	{
		struct zerrow_create c = { .flags = 0x80 };

		CHECK(ioctl(dev, ZERROW_IOC_CREATE, &c) < 0 && errno == EINVAL, "create flags");
	}
	CHECK(zappend(fd, (void *)-4096L, PAGE, 0, NULL) < 0 &&
	      (errno == EFAULT || errno == EINVAL), "kernel address");
	ro = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	errno = 0;
	CHECK(zappend(fd, ro, len, 0, NULL) < 0 && errno == EACCES,
	      "read-only range: %s", strerror(errno));
	/* a hole in the middle */
	munmap(p + 4 * PAGE, PAGE);
	errno = 0;
	CHECK(zappend(fd, p, len, 0, NULL) < 0 && errno == EFAULT,
	      "range with a hole: %s", strerror(errno));
	sh = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	errno = 0;
	CHECK(zappend(fd, sh, len, 0, NULL) < 0 && errno == EOPNOTSUPP,
	      "shared memory: %s", strerror(errno));
	CHECK(zappend(fd, p, PAGE, 0, NULL) == 0, "append ok");
	CHECK(ioctl(fd, ZERROW_IOC_INFO, NULL) < 0 && errno == EFAULT, "info NULL");
	/* another process holding the fd cannot append or seal */
	CHECK(reader_cmd(&r, R_APPEND, fd, 0, 0, 0, 0) == -EPERM, "non-owner append");
	CHECK(ioctl(fd, ZERROW_IOC_SEAL) == 0, "seal");
	CHECK(ioctl(fd, ZERROW_IOC_SEAL) == 0, "seal twice");
	errno = 0;
	CHECK(zappend(fd, p, PAGE, 0, NULL) < 0 && errno == EPERM, "append after seal");
	CHECK(ioctl(dev, ZERROW_IOC_APPEND, NULL) < 0 && errno == ENOTTY, "append on dev");
	CHECK(ioctl(fd, ZERROW_IOC_CREATE, NULL) < 0 && errno == ENOTTY, "create on file");
	CHECK(read(fd, &r, 1) < 0, "read() is not supported");
	close(fd);
	close(dev);
	reader_stop(&r);
	return 0;
}

static int memlock_child(void *arg)
{
	struct rlimit rl = { 64 * 1024, 64 * 1024 };
	uint8_t *p = anon(2 * MIB, 0);
	int dev, fd;
	long pin0;

	(void)arg;
	memset(p, 1, 2 * MIB);
	if (setrlimit(RLIMIT_MEMLOCK, &rl) || setgid(65534) || setuid(65534))
		return 10;
	if (getuid() != 65534)
		return 11;
	dev = zdev();
	if (dev < 0)
		return 12;
	fd = zcreate(dev);
	if (fd < 0)
		return 13;
	pin0 = read_kv("/proc/self/status", "VmPin");
	errno = 0;
	if (zappend(fd, p, MIB, 0, NULL) == 0 || errno != ENOMEM)
		return 14;
	if (zappend(fd, p, 32 * 1024, 0, NULL) != 0)
		return 15;
	if (read_kv("/proc/self/status", "VmPin") != pin0 + 32)
		return 16;
	if (zappend(fd, p, 32 * 1024, 0, NULL) != 0)	/* exactly at the limit */
		return 17;
	errno = 0;
	if (zappend(fd, p, PAGE, 0, NULL) == 0 || errno != ENOMEM)
		return 18;
	close(fd);	/* release uncharges */
	if (read_kv("/proc/self/status", "VmPin") != pin0)
		return 19;
	fd = zcreate(dev);
	if (zappend(fd, p, 64 * 1024, 0, NULL) != 0)
		return 20;
	close(fd);
	return 0;
}

static int t_memlock(void)
{
	int st = in_child(memlock_child, NULL);

	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "memlock child status %d (%x)",
	      WIFEXITED(st) ? WEXITSTATUS(st) : -1, st);
	return 0;
}

static int t_memory_back(void)
{
	const uint64_t len = 256 * MIB;
	long free0, free1, free2;
	struct reader r;
	int sv[2], st, fd;
	pid_t pid;
	char c;

	CHECK(reader_start(&r) == 0, "reader");
	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0, "socketpair");
	free0 = free_kb();
	pid = fork();
	if (pid == 0) {
		uint8_t *p = anon(len, 0);
		int dev = zdev(), zfd = zcreate(dev);

		memset(p, 0x42, len);
		if (zappend(zfd, p, len, 0, NULL))
			_exit(2);
		send_fd(sv[1], zfd, &c, 1);
		_exit(0);
	}
	CHECK(recv_fd(sv[0], &fd, &c, 1) == 0 && fd >= 0, "receive");
	waitpid(pid, &st, 0);
	CHECK(reader_cmd(&r, R_MAP, fd, len, 0, 0, 0) == 0, "map");
	close(fd);
	CHECK(reader_cmd(&r, R_TOUCH, -1, 0, 0, 0, 0) >= 0, "touch");
	free1 = free_kb();
	CHECK(modparam("live_pinned_pages") >= (long)(len / PAGE), "pinned counter");
	reader_stop(&r);	/* last mapping goes: pins released, memory freed */
	free2 = free_kb();
	printf("ZTEST INFO memory: free (MemFree + pcp) %ld -> %ld (held) -> %ld kB (released)\n",
	       free0, free1, free2);
	CHECK(free0 - free1 > (long)(len / 1024) * 9 / 10, "memory was not held");
	CHECK(free0 - free2 < 16 * 1024, "memory not back: %ld kB missing", free0 - free2);
	return 0;
}

static int t_many_files(void)
{
	uint8_t *p = anon(MIB, 0);
	int dev = zdev();

	memset(p, 3, MIB);
	for (int i = 0; i < 200; i++) {
		int fd = zcreate(dev);
		uint8_t *m;

		CHECK(fd >= 0, "create %d", i);
		CHECK(zappend(fd, p + (i % 16) * PAGE, 64 * PAGE, 0, NULL) == 0, "append %d", i);
		m = mmap(NULL, 64 * PAGE, PROT_READ, MAP_SHARED, fd, 0);
		CHECK(m != MAP_FAILED && m[PAGE] == 3, "map %d", i);
		if (i % 2)
			munmap(m, 64 * PAGE);	/* else: leaked until exit */
		close(fd);
	}
	close(dev);
	return 0;
}

/* Threads append concurrently while another process faults the growing file. */
#define CC_THREADS 4
#define CC_RANGES 32
#define CC_LEN (64 * 1024 + 100)

struct cc_arg {
	int fd;
	int idx;
	uint64_t offsets[CC_RANGES];
	int err;
};

static void *cc_thread(void *p)
{
	struct cc_arg *a = p;

	for (int i = 0; i < CC_RANGES; i++) {
		uint8_t *buf = anon(CC_LEN + PAGE, 0);
		struct zerrow_append r;

		fill(buf + 7 * a->idx, CC_LEN, a->idx * CC_RANGES + i);
		if (zappend(a->fd, buf + 7 * a->idx, CC_LEN, i % 2 ? ZERROW_APPEND_COPY_EDGES : 0, &r)) {
			a->err = errno;
			return NULL;
		}
		a->offsets[i] = r.offset;
		munmap(buf, CC_LEN + PAGE);	/* readers keep the pages */
	}
	return NULL;
}

static int cc_toucher(int fd, uint64_t final)
{
	uint8_t *m = mmap(NULL, final, PROT_READ, MAP_SHARED, fd, 0);
	struct zerrow_info info;
	volatile uint8_t s = 0;
	uint64_t seen = 0;

	if (m == MAP_FAILED)
		return 2;
	while (seen < final) {
		if (zinfo(fd, &info))
			return 3;
		for (uint64_t o = seen; o < info.size; o += PAGE)
			s += m[o];
		seen = info.size;
	}
	return 0;
}

static int t_concurrent(void)
{
	const uint64_t per = ALIGN_UP(CC_LEN + 7 * CC_THREADS, PAGE) + PAGE;
	const uint64_t final_max = (uint64_t)CC_THREADS * CC_RANGES * per;
	struct cc_arg args[CC_THREADS];
	pthread_t th[CC_THREADS];
	struct zerrow_info info;
	struct reader r;
	int dev = zdev(), fd = zcreate(dev), st;
	pid_t toucher;

	CHECK(fd >= 0, "create");
	CHECK(reader_start(&r) == 0, "reader");
	/* the toucher faults pages while they are being appended */
	toucher = fork();
	if (toucher == 0) {
		alarm(60);
		for (;;) {
			struct zerrow_info i;

			if (zinfo(fd, &i) == 0 && i.size > 0)
				break;
		}
		_exit(cc_toucher(fd, final_max) == 0 ? 0 : 1);
	}
	for (int t = 0; t < CC_THREADS; t++) {
		args[t] = (struct cc_arg){ .fd = fd, .idx = t };
		pthread_create(&th[t], NULL, cc_thread, &args[t]);
	}
	for (int t = 0; t < CC_THREADS; t++) {
		pthread_join(th[t], NULL);
		CHECK(args[t].err == 0, "thread %d: %s", t, strerror(args[t].err));
	}
	CHECK(zinfo(fd, &info) == 0 && info.appends == CC_THREADS * CC_RANGES, "appends");
	/* pad the file to the toucher's target so it finishes */
	while (info.size < final_max) {
		uint8_t *pad = anon(PAGE, 0);

		memset(pad, 0, PAGE);
		CHECK(zappend(fd, pad, PAGE, 0, NULL) == 0, "pad");
		munmap(pad, PAGE);
		info.size += PAGE;
	}
	waitpid(toucher, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "toucher %x", st);
	CHECK(zinfo(fd, &info) == 0, "info");
	CHECK(reader_cmd(&r, R_MAP, fd, info.size, 0, 0, 0) == 0, "map");
	for (int t = 0; t < CC_THREADS; t++)
		for (int i = 0; i < CC_RANGES; i++)
			CHECK(reader_cmd(&r, R_VERIFY, -1, 0, args[t].offsets[i], CC_LEN,
					 t * CC_RANGES + i) == 0, "range %d/%d", t, i);
	close(fd);
	close(dev);
	reader_stop(&r);
	return 0;
}

/* SIGKILL a producer in the middle of big appends: nothing may leak. */
static int t_kill_during_append(void)
{
	const uint64_t len = 128 * MIB;
	int sv[2], st;
	pid_t pid;
	char c;

	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0, "socketpair");
	pid = fork();
	if (pid == 0) {
		uint8_t *p = anon(len, 0);
		int dev = zdev();

		memset(p, 1, len);
		if (write(sv[1], "r", 1) != 1)
			_exit(2);
		for (;;) {
			int fd = zcreate(dev);

			zappend(fd, p, len, 0, NULL);
			close(fd);
		}
	}
	CHECK(read(sv[0], &c, 1) == 1, "child ready");
	usleep(30 * 1000);
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "status %x", st);
	for (int i = 0; i < 50 && modparam("live_files"); i++)
		usleep(10 * 1000);	/* the killed task's files are released on exit */
	CHECK(modparam("live_files") == 0 && modparam("live_pinned_pages") == 0,
	      "leaked: files %ld pinned %ld", modparam("live_files"),
	      modparam("live_pinned_pages"));
	return 0;
}

/* memcg: the pages stay charged to the producer's cgroup while readers hold them. */
#define CG "/sys/fs/cgroup"
#define TEST_SKIP 77

static int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY), ok;

	if (fd < 0)
		return -1;
	ok = write(fd, s, strlen(s)) == (ssize_t)strlen(s);
	close(fd);
	return ok ? 0 : -1;
}

static long read_long(const char *path)
{
	char buf[64] = "";
	int fd = open(path, O_RDONLY);
	long v = -1;

	if (fd >= 0) {
		if (read(fd, buf, sizeof(buf) - 1) > 0)
			v = strtol(buf, NULL, 10);
		close(fd);
	}
	return v;
}

static int t_memcg(void)
{
	const uint64_t len = 64 * MIB;
	long held, after;
	struct reader r;
	int sv[2], st, fd;
	char c, pid_s[32];
	pid_t pid;

	if (access(CG "/cgroup.controllers", F_OK) != 0) {
		mkdir(CG, 0755);
		if (mount("none", CG, "cgroup2", 0, NULL) != 0)
			return TEST_SKIP;
	}
	if (write_str(CG "/cgroup.subtree_control", "+memory") != 0 ||
	    (mkdir(CG "/zprod", 0755) != 0 && errno != EEXIST))
		return TEST_SKIP;
	CHECK(reader_start(&r) == 0, "reader");
	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0, "socketpair");
	pid = fork();
	if (pid == 0) {
		uint8_t *p;
		int dev, zfd;

		snprintf(pid_s, sizeof(pid_s), "%d", getpid());
		if (write_str(CG "/zprod/cgroup.procs", pid_s))
			_exit(2);
		p = anon(len, 0);
		dev = zdev();
		zfd = zcreate(dev);
		fill(p, len, 14);
		if (zappend(zfd, p, len, 0, NULL))
			_exit(3);
		send_fd(sv[1], zfd, &c, 1);
		_exit(0);
	}
	CHECK(recv_fd(sv[0], &fd, &c, 1) == 0 && fd >= 0, "receive");
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "producer %x", st);
	CHECK(reader_cmd(&r, R_MAP, fd, len, 0, 0, 0) == 0, "map");
	close(fd);
	CHECK(reader_cmd(&r, R_VERIFY, -1, 0, 0, len, 14) == 0, "data");
	held = read_long(CG "/zprod/memory.current");
	reader_stop(&r);
	after = read_long(CG "/zprod/memory.current");
	printf("ZTEST INFO memcg: producer cgroup memory.current %ld kB while a reader "
	       "holds the file (producer exited), %ld kB after release\n", held / 1024, after / 1024);
	rmdir(CG "/zprod");
	CHECK(held >= (long)len, "pages not charged to the producer's cgroup: %ld", held);
	CHECK(after < (long)(len / 8), "charge not returned: %ld", after);
	return 0;
}

/* Final global checks; run last. */
static int t_balance(void)
{
	long acq, rel;
	int fd = open("/proc/sys/vm/stat_refresh", O_WRONLY);

	/* fold the per-cpu vmstat differentials into the global counters */
	if (fd >= 0) {
		if (write(fd, "1", 1) < 0)
			printf("ZTEST INFO stat_refresh: %s\n", strerror(errno));
		close(fd);
	}
	acq = read_kv("/proc/vmstat", "nr_foll_pin_acquired");
	rel = read_kv("/proc/vmstat", "nr_foll_pin_released");

	printf("ZTEST INFO pins: acquired %ld released %ld; live files %ld pinned %ld copied %ld\n",
	       acq, rel, modparam("live_files"), modparam("live_pinned_pages"),
	       modparam("live_copied_pages"));
	CHECK(acq >= 0 && acq == rel, "pin counters unbalanced: %ld != %ld", acq, rel);
	CHECK(modparam("live_files") == 0, "live files %ld", modparam("live_files"));
	CHECK(modparam("live_pinned_pages") == 0, "live pinned");
	CHECK(modparam("live_copied_pages") == 0, "live copied");
	CHECK(read_kv("/proc/self/status", "VmPin") == 0, "VmPin");
	return 0;
}

struct test {
	const char *name;
	int (*fn)(void);
};

static const struct test tests[] = {
	{ "version", t_version },
	{ "basic_share", t_basic_share },
	{ "unaligned", t_unaligned },
	{ "copy_edges", t_copy_edges },
	{ "protect", t_protect },
	{ "unprotected_semantics", t_unprotected_semantics },
	{ "fork_before_append", t_fork_before_append },
	{ "producer_exit", t_producer_exit },
	{ "producer_killed", t_producer_killed },
	{ "reader_fork", t_reader_fork },
	{ "readonly", t_readonly },
	{ "sigbus", t_sigbus },
	{ "thp", t_thp },
	{ "errors", t_errors },
	{ "memlock", t_memlock },
	{ "memory_back", t_memory_back },
	{ "many_files", t_many_files },
	{ "concurrent", t_concurrent },
	{ "kill_during_append", t_kill_during_append },
	{ "memcg", t_memcg },
	{ "balance", t_balance },
	{ NULL, NULL },
};

static int run_test(const struct test *t)
{
	int st;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		alarm(120);
		_exit(t->fn());
	}
	waitpid(pid, &st, 0);
	/* reap stragglers (readers of a failed test) */
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
		printf("ZTEST PASS %s\n", t->name);
		fflush(stdout);
		return 0;
	}
	if (WIFEXITED(st) && WEXITSTATUS(st) == TEST_SKIP) {
		printf("ZTEST SKIP %s: not supported by this kernel\n", t->name);
		fflush(stdout);
		return 0;
	}
	if (WIFSIGNALED(st))
		printf("ZTEST FAIL %s: killed by signal %d\n", t->name, WTERMSIG(st));
	else
		printf("ZTEST FAIL %s: exit %d (see INFO above)\n", t->name, WEXITSTATUS(st));
	fflush(stdout);
	return 1;
}

/* ------------------------------------------------------------- benchmark */

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

#define REPS 5

static void set_fault_around(int pages)
{
	FILE *f = fopen("/sys/module/zerrow/parameters/fault_around", "w");

	if (f) {
		fprintf(f, "%d\n", pages);
		fclose(f);
	}
}

static double median(double *v, int n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return v[n / 2];
}

/* Seconds for one read per page of a fresh read-only mapping of fd. */
static double reader_pass(int fd, uint64_t len)
{
	uint8_t *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	volatile uint8_t s = 0;
	double t0 = now();

	for (uint64_t i = 0; i < len; i += PAGE)
		s += m[i];
	t0 = now() - t0;
	munmap(m, len);
	return t0;
}

static void bench_one(uint64_t mib, int thp)
{
	const uint64_t len = mib * MIB;
	double t_de[REPS], t_dep[REPS], t_cp[REPS], t_rd_de[REPS], t_rd_cp[REPS], t_close[REPS];
	double t_rd_de512[REPS];
	int dev = zdev();
	long kb = 0;

	for (int rep = 0; rep < REPS; rep++) {
		uint8_t *p = anon_aligned(len, thp);
		struct zerrow_append a;
		double t0, t1, t2;
		uint8_t *m, *q;
		int fd, mfd;

		memset(p, 0x5A, len);	/* pages already faulted in */
		if (rep == 0)
			kb = thp_kb(p);

		/* de-anonymize: create + append + seal */
		t0 = now();
		fd = zcreate(dev);
		if (fd < 0 || zappend(fd, p, len, 0, &a) || ioctl(fd, ZERROW_IOC_SEAL)) {
			printf("ZBENCH ERROR append: %s\n", strerror(errno));
			return;
		}
		t1 = now();
		/* + producer protection (remap read-only) */
		q = mmap(p, len, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
		t2 = now();
		if (q != p) {
			printf("ZBENCH ERROR remap\n");
			return;
		}
		t_de[rep] = t1 - t0;
		t_dep[rep] = t2 - t0;
		/* a reader's first pass over the mapping (page faults) */
		t_rd_de[rep] = reader_pass(fd, len);
		/* the same with 512 pages mapped per fault */
		set_fault_around(512);
		t_rd_de512[rep] = reader_pass(fd, len);
		set_fault_around(16);
		munmap(p, len);
		t0 = now();
		close(fd);	/* last reference: unpin */
		t_close[rep] = now() - t0;

		/* the alternative: copy into a fresh memfd */
		p = anon_aligned(len, thp);
		memset(p, 0x5A, len);
		t0 = now();
		mfd = memfd_create("zcopy", MFD_CLOEXEC);
		if (mfd < 0 || ftruncate(mfd, len)) {
			printf("ZBENCH ERROR memfd\n");
			return;
		}
		m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
		memcpy(m, p, len);
		t_cp[rep] = now() - t0;
		munmap(m, len);
		t_rd_cp[rep] = reader_pass(mfd, len);
		close(mfd);
		munmap(p, len);
	}
	close(dev);
	{
		double de = median(t_de, REPS), dep = median(t_dep, REPS);
		double cp = median(t_cp, REPS), rdd = median(t_rd_de, REPS);
		double rdc = median(t_rd_cp, REPS), cl = median(t_close, REPS);
		double rd512 = median(t_rd_de512, REPS);

		printf("ZBENCH size_mib=%lu pages=%s anon_huge_kb=%ld deanon_ms=%.3f "
		       "deanon_protect_ms=%.3f copy_ms=%.3f ratio=%.1f ratio_protect=%.1f "
		       "reader_fault_deanon_ms=%.3f reader_fault512_deanon_ms=%.3f "
		       "reader_fault_memfd_ms=%.3f release_ms=%.3f\n",
		       mib, thp ? "thp" : "4k", kb, de * 1e3, dep * 1e3, cp * 1e3, cp / de,
		       cp / dep, rdd * 1e3, rd512 * 1e3, rdc * 1e3, cl * 1e3);
		fflush(stdout);
	}
}

int main(int argc, char **argv)
{
	int failed = 0, ran = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 1 && !strcmp(argv[1], "--bench")) {
		for (int i = 2; i < argc; i++) {
			bench_one(strtoul(argv[i], NULL, 10), 0);
			bench_one(strtoul(argv[i], NULL, 10), 1);
		}
		printf("ZBENCH DONE\n");
		return 0;
	}
	for (const struct test *t = tests; t->name; t++) {
		int want = argc == 1;

		for (int i = 1; i < argc; i++)
			want |= !strcmp(argv[i], t->name);
		if (!want)
			continue;
		ran++;
		failed += run_test(t);
	}
	printf("ZTEST SUMMARY ran=%d failed=%d\n", ran, failed);
	return failed ? 1 : 0;
}
