/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * zerrow_kmod.h - userspace API of the zerrow de-anonymization module.
 *
 * /dev/zerrow turns ranges of a process's private anonymous memory into the
 * pages of a read-only file without copying them.  The file descriptor can
 * be passed to other processes (SCM_RIGHTS) which mmap it read-only.
 *
 *   dev = open("/dev/zerrow", O_RDWR | O_CLOEXEC);
 *   fd  = ioctl(dev, ZERROW_IOC_CREATE, &create);     // new, empty file
 *   ioctl(fd, ZERROW_IOC_APPEND, &append);            // pin + append pages
 *   ioctl(fd, ZERROW_IOC_SEAL);                       // no more appends
 *   ioctl(fd, ZERROW_IOC_INFO, &info);                // size, counters
 *
 * See docs/KERNEL_MODULE.md for the semantics and the safety rules.
 */
#ifndef _UAPI_ZERROW_KMOD_H
#define _UAPI_ZERROW_KMOD_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/ioctl.h>
#else
#include <linux/types.h>
#include <sys/ioctl.h>
#endif

#define ZERROW_DEVICE_PATH "/dev/zerrow"
#define ZERROW_ABI_VERSION 1

/* ZERROW_IOC_CREATE flags */
#define ZERROW_CREATE_CLOEXEC   (1U << 0)	/* new fd gets FD_CLOEXEC */
#define ZERROW_CREATE_FLAGS_ALL (ZERROW_CREATE_CLOEXEC)

struct zerrow_create {
	__u32 flags;		/* in: ZERROW_CREATE_* */
	__s32 fd;		/* out: the new file descriptor */
};

/* ZERROW_IOC_APPEND flags */
/*
 * Copy the partially covered first/last page of the range into fresh,
 * zero-filled kernel pages instead of pinning the producer's page.  Readers
 * then see no unrelated producer bytes (exposed_head == exposed_tail == 0)
 * and the producer cannot change the range's edge bytes afterwards.  At most
 * two pages are copied per append.
 */
#define ZERROW_APPEND_COPY_EDGES (1U << 0)
#define ZERROW_APPEND_FLAGS_ALL  (ZERROW_APPEND_COPY_EDGES)

struct zerrow_append {
	__u64 addr;		/* in: start of the range in the caller's memory */
	__u64 len;		/* in: length in bytes, > 0 */
	__u32 flags;		/* in: ZERROW_APPEND_* */
	__u32 reserved;		/* in: must be 0 */
	__u64 offset;		/* out: file offset where byte `addr` lands;
				 *      offset % page_size == addr % page_size */
	__u64 exposed_head;	/* out: bytes before addr in the first file page
				 *      that hold unrelated producer memory */
	__u64 exposed_tail;	/* out: same after addr+len in the last page */
	__u64 protect_addr;	/* out: page-aligned part of the range made of
				 *      whole pinned pages, which the producer may
				 *      remap read-only onto the file (see docs) */
	__u64 protect_len;	/* out: its length (0 if none) */
	__u64 protect_offset;	/* out: file offset of protect_addr */
	__u64 pinned_pages;	/* out: producer pages pinned by this append */
	__u64 copied_pages;	/* out: edge pages copied by this append */
};

struct zerrow_info {
	__u64 size;		/* bytes in the file (whole pages) */
	__u64 pinned_pages;	/* producer pages held by the file */
	__u64 copied_pages;	/* kernel pages holding copied edges */
	__u32 sealed;		/* 1 after ZERROW_IOC_SEAL */
	__u32 page_size;	/* PAGE_SIZE of the kernel */
	__u64 appends;		/* number of successful appends */
};

#define ZERROW_IOC_MAGIC 'Z'
/* on /dev/zerrow */
#define ZERROW_IOC_VERSION _IOR(ZERROW_IOC_MAGIC, 0x00, __u32)
#define ZERROW_IOC_CREATE  _IOWR(ZERROW_IOC_MAGIC, 0x01, struct zerrow_create)
/* on a file returned by ZERROW_IOC_CREATE */
#define ZERROW_IOC_APPEND  _IOWR(ZERROW_IOC_MAGIC, 0x02, struct zerrow_append)
#define ZERROW_IOC_SEAL    _IO(ZERROW_IOC_MAGIC, 0x03)
#define ZERROW_IOC_INFO    _IOR(ZERROW_IOC_MAGIC, 0x04, struct zerrow_info)

#endif /* _UAPI_ZERROW_KMOD_H */
