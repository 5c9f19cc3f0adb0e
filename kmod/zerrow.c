// SPDX-License-Identifier: GPL-2.0
/*
 * zerrow: turn ranges of a process's private anonymous memory into the pages
 * of a read-only file that other processes can mmap, without copying.
 *
 * Route (exported symbols only):
 *   - APPEND pins the producer's pages with pin_user_pages_fast(FOLL_WRITE |
 *     FOLL_LONGTERM), charges them to the producer's mm->pinned_vm against
 *     RLIMIT_MEMLOCK (like RDMA umem), and stores them in the file object;
 *   - readers mmap the file read-only; the mapping is VM_PFNMAP and the
 *     fault handler inserts the pinned pages' pfns with vmf_insert_pfn, so
 *     the pages are never added to the readers' rss, rmap or gup paths;
 *   - the pins are dropped (unpin_user_pages) once, in ->release, which runs
 *     when the last fd and the last mapping (vma->vm_file) are gone.
 *
 * See docs/KERNEL_MODULE.md.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/highmem.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/mount.h>
#include <linux/pseudo_fs.h>
#include <linux/version.h>
#include <linux/rwsem.h>
#include <linux/mutex.h>
#include <linux/capability.h>

#include "include/uapi/zerrow_kmod.h"

#define ZERROW_FS_MAGIC 0x7a65726fU	/* "zero" */
#define ZERROW_PIN_BATCH 65536UL	/* pages per pin_user_pages_fast call */
#define ZERROW_PAGE_OWNED 1UL		/* tag bit: page was allocated here */

/* Global counters, read-only module parameters (for tests and monitoring). */
static atomic_long_t zerrow_live_files = ATOMIC_LONG_INIT(0);
static atomic_long_t zerrow_live_pinned = ATOMIC_LONG_INIT(0);
static atomic_long_t zerrow_live_copied = ATOMIC_LONG_INIT(0);

static int zerrow_param_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%ld\n", atomic_long_read(kp->arg));
}

static const struct kernel_param_ops zerrow_counter_ops = {
	.get = zerrow_param_get,
};

module_param_cb(live_files, &zerrow_counter_ops, &zerrow_live_files, 0444);
MODULE_PARM_DESC(live_files, "zerrow files not yet released");
module_param_cb(live_pinned_pages, &zerrow_counter_ops, &zerrow_live_pinned, 0444);
MODULE_PARM_DESC(live_pinned_pages, "producer pages pinned by live files");
module_param_cb(live_copied_pages, &zerrow_counter_ops, &zerrow_live_copied, 0444);
MODULE_PARM_DESC(live_copied_pages, "edge pages copied by live files");

/* Pages mapped per reader fault (the faulting one and the following ones). */
static unsigned int fault_around = 16;
module_param(fault_around, uint, 0644);
MODULE_PARM_DESC(fault_around, "pages mapped per fault, 1..512 (default 16)");

struct zerrow_file {
	/* Protects pages, npages and cap against faults (read side). */
	struct rw_semaphore lock;
	/* Serializes APPEND and SEAL. */
	struct mutex append_lock;
	/* Page i of the file; bit 0 set = page allocated here (copied edge). */
	unsigned long *pages;
	unsigned long npages;
	unsigned long cap;
	unsigned long pinned;
	unsigned long copied;
	unsigned long appends;
	bool sealed;
	/* Creator's mm: the only one allowed to append; pinned_vm is charged. */
	struct mm_struct *mm;
	u64 charged;
	struct inode *inode;
};

static struct vfsmount *zerrow_mnt;

static inline struct page *zf_page(unsigned long v)
{
	return (struct page *)(v & ~ZERROW_PAGE_OWNED);
}

static inline void zf_vm_flags_set(struct vm_area_struct *vma, unsigned long set,
				   unsigned long clear)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_mod(vma, set, clear);
#else
	vma->vm_flags = (vma->vm_flags | set) & ~clear;
#endif
}

/* Drop the pages [first, first + n) of a page table: unpin or free. */
static void zf_release_pages(unsigned long *pages, unsigned long n)
{
	unsigned long i = 0;

	while (i < n) {
		unsigned long run = 0;

		if (pages[i] & ZERROW_PAGE_OWNED) {
			__free_page(zf_page(pages[i]));
			atomic_long_dec(&zerrow_live_copied);
			i++;
			continue;
		}
		while (i + run < n && !(pages[i + run] & ZERROW_PAGE_OWNED))
			run++;
		unpin_user_pages((struct page **)&pages[i], run);
		atomic_long_sub(run, &zerrow_live_pinned);
		i += run;
	}
}

/* RLIMIT_MEMLOCK check on mm->pinned_vm, as drivers/infiniband/core/umem.c. */
static int zf_charge(struct zerrow_file *zf, unsigned long npages)
{
	unsigned long limit = rlimit(RLIMIT_MEMLOCK) >> PAGE_SHIFT;
	u64 pinned = atomic64_add_return(npages, &zf->mm->pinned_vm);

	if (pinned > limit && !capable(CAP_IPC_LOCK)) {
		atomic64_sub(npages, &zf->mm->pinned_vm);
		return -ENOMEM;
	}
	zf->charged += npages;
	return 0;
}

static void zf_uncharge(struct zerrow_file *zf, unsigned long npages)
{
	atomic64_sub(npages, &zf->mm->pinned_vm);
	zf->charged -= npages;
}

/*
 * The whole range must be mapped (EFAULT), writable (EACCES) and private
 * anonymous memory (EOPNOTSUPP): only then does remapping the producer's
 * range onto the file leave no other writable path to the pages.
 */
static int zf_check_vmas(struct mm_struct *mm, unsigned long start,
			 unsigned long end)
{
	struct vm_area_struct *vma;
	unsigned long cur = start;
	int ret = 0;

	if (mmap_read_lock_killable(mm))
		return -EINTR;
	while (cur < end) {
		vma = find_vma(mm, cur);
		if (!vma || vma->vm_start > cur) {
			ret = -EFAULT;
			break;
		}
		if (!(vma->vm_flags & VM_WRITE)) {
			ret = -EACCES;
			break;
		}
		if (!vma_is_anonymous(vma) ||
		    (vma->vm_flags & (VM_SHARED | VM_IO | VM_PFNMAP | VM_MIXEDMAP))) {
			ret = -EOPNOTSUPP;
			break;
		}
		cur = vma->vm_end;
	}
	mmap_read_unlock(mm);
	return ret;
}

/* Copy user bytes [from, to) (within one page) into a new zeroed page. */
static struct page *zf_copy_edge(unsigned long from, unsigned long to)
{
	struct page *page;
	void *kaddr;
	unsigned long left;

	page = alloc_page(GFP_HIGHUSER | __GFP_ZERO | __GFP_ACCOUNT);
	if (!page)
		return ERR_PTR(-ENOMEM);
	kaddr = kmap_local_page(page);
	left = copy_from_user(kaddr + offset_in_page(from),
			      (const void __user *)from, to - from);
	kunmap_local(kaddr);
	if (left) {
		__free_page(page);
		return ERR_PTR(-EFAULT);
	}
	flush_dcache_page(page);
	return page;
}

static int zf_reserve(struct zerrow_file *zf, unsigned long n)
{
	unsigned long need = zf->npages + n, cap;
	unsigned long *np, *old;

	if (need < zf->npages)
		return -EOVERFLOW;
	if (need <= zf->cap)
		return 0;
	cap = max3(need, zf->cap * 2, 64UL);
	np = kvmalloc_array(cap, sizeof(*np), GFP_KERNEL_ACCOUNT);
	if (!np)
		return -ENOMEM;
	down_write(&zf->lock);
	if (zf->npages)
		memcpy(np, zf->pages, zf->npages * sizeof(*np));
	old = zf->pages;
	zf->pages = np;
	zf->cap = cap;
	up_write(&zf->lock);
	kvfree(old);
	return 0;
}

static long zf_append(struct zerrow_file *zf, struct zerrow_append __user *uarg)
{
	struct zerrow_append a;
	unsigned long addr, end_byte, start, end, n, npin, done = 0, base;
	unsigned long pin_start, *slots;
	bool copy_head = false, copy_tail = false;
	struct page *page;
	long ret;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if ((a.flags & ~ZERROW_APPEND_FLAGS_ALL) || a.reserved)
		return -EINVAL;
	if (!a.len || a.addr + a.len < a.addr)
		return -EINVAL;
	if (current->mm != zf->mm || READ_ONCE(zf->sealed))
		return -EPERM;	/* rechecked under append_lock */
	if (a.addr + a.len > TASK_SIZE)
		return -EFAULT;

	addr = a.addr;
	end_byte = a.addr + a.len;
	start = addr & PAGE_MASK;
	end = PAGE_ALIGN(end_byte);
	n = (end - start) >> PAGE_SHIFT;
	if (a.flags & ZERROW_APPEND_COPY_EDGES) {
		/* first page not wholly inside [addr, end_byte) */
		copy_head = addr != start || end_byte < start + PAGE_SIZE;
		/* last page not wholly inside, and distinct from the first */
		copy_tail = n > 1 && end_byte != end;
	}
	npin = n - copy_head - copy_tail;
	pin_start = start + (copy_head ? PAGE_SIZE : 0);

	ret = zf_check_vmas(current->mm, start, end);
	if (ret)
		return ret;

	mutex_lock(&zf->append_lock);
	if (zf->sealed) {
		ret = -EPERM;
		goto out_unlock;
	}
	/* charge first: an over-limit caller must not make us allocate */
	ret = zf_charge(zf, n);
	if (ret)
		goto out_unlock;
	ret = zf_reserve(zf, n);
	if (ret)
		goto out_uncharge;

	/* Slots past npages are invisible to faults; fill them unlocked. */
	base = zf->npages;
	slots = zf->pages + base;
	if (copy_head) {
		page = zf_copy_edge(addr, min(end_byte, start + PAGE_SIZE));
		if (IS_ERR(page)) {
			ret = PTR_ERR(page);
			goto out_uncharge;
		}
		slots[0] = (unsigned long)page | ZERROW_PAGE_OWNED;
		atomic_long_inc(&zerrow_live_copied);
	}
	while (done < npin) {
		int nr = min(npin - done, ZERROW_PIN_BATCH);

		ret = pin_user_pages_fast(pin_start + done * PAGE_SIZE, nr,
					  FOLL_WRITE | FOLL_LONGTERM,
					  (struct page **)&slots[copy_head + done]);
		if (ret <= 0) {
			if (!ret)
				ret = -EFAULT;
			goto out_release;
		}
		done += ret;
		atomic_long_add(ret, &zerrow_live_pinned);
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			goto out_release;
		}
		cond_resched();
	}
	if (copy_tail) {
		page = zf_copy_edge(end - PAGE_SIZE, end_byte);
		if (IS_ERR(page)) {
			ret = PTR_ERR(page);
			goto out_release;
		}
		slots[n - 1] = (unsigned long)page | ZERROW_PAGE_OWNED;
		atomic_long_inc(&zerrow_live_copied);
	}

	down_write(&zf->lock);
	zf->npages += n;
	zf->pinned += npin;
	zf->copied += copy_head + copy_tail;
	zf->appends++;
	i_size_write(zf->inode, (loff_t)zf->npages << PAGE_SHIFT);
	up_write(&zf->lock);
	mutex_unlock(&zf->append_lock);

	a.offset = ((u64)base << PAGE_SHIFT) + offset_in_page(addr);
	a.exposed_head = copy_head ? 0 : addr - start;
	a.exposed_tail = (copy_tail || (copy_head && n == 1)) ? 0 : end - end_byte;
	a.protect_addr = PAGE_ALIGN(addr);
	a.protect_len = 0;
	if ((end_byte & PAGE_MASK) > a.protect_addr)
		a.protect_len = (end_byte & PAGE_MASK) - a.protect_addr;
	else
		a.protect_addr = 0;
	a.protect_offset = a.protect_len ?
		((u64)base << PAGE_SHIFT) + (a.protect_addr - start) : 0;
	a.pinned_pages = npin;
	a.copied_pages = copy_head + copy_tail;
	/* The pages are in the file now; a bad result buffer only loses the result. */
	if (copy_to_user(uarg, &a, sizeof(a)))
		return -EFAULT;
	return 0;

out_release:
	/* slots[copy_head .. copy_head + done) are pinned, slots[0] may be a copy */
	if (done)
		zf_release_pages(&slots[copy_head], done);
	if (copy_head)
		zf_release_pages(&slots[0], 1);
out_uncharge:
	zf_uncharge(zf, n);
out_unlock:
	mutex_unlock(&zf->append_lock);
	return ret;
}

static long zf_seal(struct zerrow_file *zf)
{
	if (current->mm != zf->mm)
		return -EPERM;
	mutex_lock(&zf->append_lock);
	WRITE_ONCE(zf->sealed, true);
	mutex_unlock(&zf->append_lock);
	return 0;
}

static long zf_info(struct zerrow_file *zf, struct zerrow_info __user *uarg)
{
	struct zerrow_info info = {};

	down_read(&zf->lock);
	info.size = (u64)zf->npages << PAGE_SHIFT;
	info.pinned_pages = zf->pinned;
	info.copied_pages = zf->copied;
	info.appends = zf->appends;
	up_read(&zf->lock);
	info.sealed = READ_ONCE(zf->sealed);
	info.page_size = PAGE_SIZE;
	return copy_to_user(uarg, &info, sizeof(info)) ? -EFAULT : 0;
}

static long zf_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct zerrow_file *zf = file->private_data;

	switch (cmd) {
	case ZERROW_IOC_APPEND:
		return zf_append(zf, (struct zerrow_append __user *)arg);
	case ZERROW_IOC_SEAL:
		return zf_seal(zf);
	case ZERROW_IOC_INFO:
		return zf_info(zf, (struct zerrow_info __user *)arg);
	}
	return -ENOTTY;
}

static vm_fault_t zf_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct zerrow_file *zf = vma->vm_file->private_data;
	unsigned long addr = vmf->address & PAGE_MASK;
	pgoff_t pgoff = vmf->pgoff;
	unsigned long i, around = clamp_t(unsigned int, READ_ONCE(fault_around), 1, 512);
	vm_fault_t ret;

	down_read(&zf->lock);
	if (pgoff >= zf->npages) {
		up_read(&zf->lock);
		return VM_FAULT_SIGBUS;
	}
	ret = vmf_insert_pfn(vma, addr, page_to_pfn(zf_page(zf->pages[pgoff])));
	/* Fault-around: map the following pages too (errors ignored). */
	for (i = 1; i < around && !(ret & VM_FAULT_ERROR); i++) {
		unsigned long a = addr + i * PAGE_SIZE;

		if (a >= vma->vm_end || pgoff + i >= zf->npages)
			break;
		if (vmf_insert_pfn(vma, a, page_to_pfn(zf_page(zf->pages[pgoff + i]))) &
		    VM_FAULT_ERROR)
			break;
	}
	up_read(&zf->lock);
	return ret;
}

static const struct vm_operations_struct zf_vm_ops = {
	.fault = zf_fault,
};

static int zf_mmap(struct file *file, struct vm_area_struct *vma)
{
	/* Readers (and the producer's remap) are read-only, shared or private. */
	if (vma->vm_flags & VM_WRITE)
		return -EACCES;
	zf_vm_flags_set(vma, VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP,
			VM_MAYWRITE);
	vma->vm_ops = &zf_vm_ops;
	return 0;
}

static int zf_release(struct inode *inode, struct file *file)
{
	struct zerrow_file *zf = file->private_data;

	zf_release_pages(zf->pages, zf->npages);
	if (zf->charged)
		atomic64_sub(zf->charged, &zf->mm->pinned_vm);
	mmdrop(zf->mm);
	kvfree(zf->pages);
	kfree(zf);
	atomic_long_dec(&zerrow_live_files);
	return 0;
}

static const struct file_operations zf_fops = {
	.owner = THIS_MODULE,
	.release = zf_release,
	.mmap = zf_mmap,
	.unlocked_ioctl = zf_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static long zd_create(struct zerrow_create __user *uarg)
{
	struct zerrow_create c;
	struct zerrow_file *zf;
	struct inode *inode;
	struct file *file;
	int fd;

	if (copy_from_user(&c, uarg, sizeof(c)))
		return -EFAULT;
	if (c.flags & ~ZERROW_CREATE_FLAGS_ALL)
		return -EINVAL;
	if (!current->mm)
		return -EINVAL;

	zf = kzalloc(sizeof(*zf), GFP_KERNEL_ACCOUNT);
	if (!zf)
		return -ENOMEM;
	init_rwsem(&zf->lock);
	mutex_init(&zf->append_lock);

	inode = alloc_anon_inode(zerrow_mnt->mnt_sb);
	if (IS_ERR(inode)) {
		kfree(zf);
		return PTR_ERR(inode);
	}
	zf->inode = inode;

	fd = get_unused_fd_flags(O_RDWR | ((c.flags & ZERROW_CREATE_CLOEXEC) ? O_CLOEXEC : 0));
	if (fd < 0) {
		iput(inode);
		kfree(zf);
		return fd;
	}
	/* alloc_file_pseudo() does not take the fops owner; __fput drops it. */
	__module_get(THIS_MODULE);
	file = alloc_file_pseudo(inode, zerrow_mnt, "zerrow", O_RDWR, &zf_fops);
	if (IS_ERR(file)) {
		module_put(THIS_MODULE);
		put_unused_fd(fd);
		iput(inode);
		kfree(zf);
		return PTR_ERR(file);
	}
	mmgrab(current->mm);
	zf->mm = current->mm;
	file->private_data = zf;
	atomic_long_inc(&zerrow_live_files);

	c.fd = fd;
	if (copy_to_user(uarg, &c, sizeof(c))) {
		put_unused_fd(fd);
		fput(file);
		return -EFAULT;
	}
	fd_install(fd, file);
	return fd;
}

static long zd_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	switch (cmd) {
	case ZERROW_IOC_VERSION:
		return put_user((u32)ZERROW_ABI_VERSION, (u32 __user *)arg);
	case ZERROW_IOC_CREATE:
		return zd_create((struct zerrow_create __user *)arg);
	}
	return -ENOTTY;
}

static const struct file_operations zd_fops = {
	.owner = THIS_MODULE,
	.open = nonseekable_open,
	.unlocked_ioctl = zd_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 12, 0)
	.llseek = no_llseek,
#endif
};

static struct miscdevice zerrow_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "zerrow",
	.fops = &zd_fops,
	.mode = 0666,
};

static char *zerrow_dname(struct dentry *dentry, char *buffer, int buflen)
{
	char tmp[48];
	int len = snprintf(tmp, sizeof(tmp), "zerrow:[%lu]",
			   d_inode(dentry)->i_ino) + 1;

	if (len > buflen || len > (int)sizeof(tmp))
		return ERR_PTR(-ENAMETOOLONG);
	buffer += buflen - len;
	memcpy(buffer, tmp, len);
	return buffer;
}

static const struct dentry_operations zerrow_dops = {
	.d_dname = zerrow_dname,
};

static int zerrow_init_fs_context(struct fs_context *fc)
{
	struct pseudo_fs_context *ctx = init_pseudo(fc, ZERROW_FS_MAGIC);

	if (!ctx)
		return -ENOMEM;
	ctx->dops = &zerrow_dops;
	return 0;
}

/* No .owner: the internal mount must not pin the module itself. */
static struct file_system_type zerrow_fs_type = {
	.name = "zerrow",
	.init_fs_context = zerrow_init_fs_context,
	.kill_sb = kill_anon_super,
};

static int __init zerrow_init(void)
{
	int ret;

	zerrow_mnt = kern_mount(&zerrow_fs_type);
	if (IS_ERR(zerrow_mnt))
		return PTR_ERR(zerrow_mnt);
	ret = misc_register(&zerrow_misc);
	if (ret) {
		kern_unmount(zerrow_mnt);
		return ret;
	}
	pr_info("loaded, abi %d\n", ZERROW_ABI_VERSION);
	return 0;
}

static void __exit zerrow_exit(void)
{
	misc_deregister(&zerrow_misc);
	kern_unmount(zerrow_mnt);
	pr_info("unloaded\n");
}

module_init(zerrow_init);
module_exit(zerrow_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("zerrow developers");
MODULE_DESCRIPTION("De-anonymize process memory into read-only shareable files");
MODULE_VERSION("1.0");
