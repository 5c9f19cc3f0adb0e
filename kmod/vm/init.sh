#!/bin/busybox sh
# /init of the zerrow test VM (busybox, initramfs).  Modes, from the kernel
# command line "zmode=...":
#   tests  insmod zerrow.ko, run /bin/ztest (args from /zargs) and the
#          kmod_client smoke test, then the global checks
#   bench  run /bin/ztest --bench (args from /zargs)
#   cmd    mount the host's / (9p, read-only) and run /zcmd.sh chrooted in it;
#          with "zwritable=1" a tmpfs overlay makes it writable (changes are
#          lost at poweroff)
# Every mode ends with: rmmod check, dmesg check, "ZVM DONE", poweroff.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp /host
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp

ZMODE=tests
ZWRITABLE=0
for w in $(cat /proc/cmdline); do
	case "$w" in
	zmode=*) ZMODE="${w#zmode=}" ;;
	zwritable=*) ZWRITABLE="${w#zwritable=}" ;;
	esac
done
ZARGS=""
[ -f /zargs ] && ZARGS="$(cat /zargs)"

echo "ZVM BOOT kernel=$(uname -r) mode=$ZMODE cpus=$(nproc)"
echo "ZVM THP $(cat /sys/kernel/mm/transparent_hugepage/enabled)"

if insmod /lib/zerrow/zerrow.ko; then
	echo "ZTEST PASS insmod"
else
	echo "ZTEST FAIL insmod: insmod zerrow.ko failed"
fi

case "$ZMODE" in
tests)
	/bin/ztest $ZARGS
	if [ -z "$ZARGS" ] && [ -x /bin/kmod_client_test ]; then
		if /bin/kmod_client_test; then
			echo "ZTEST PASS kmod_client"
		else
			echo "ZTEST FAIL kmod_client: exit $?"
		fi
	fi
	;;
bench)
	/bin/ztest --bench $ZARGS
	;;
cmd)
	ok=1
	for m in $(cat /lib/zmods/order); do
		insmod "/lib/zmods/$m" || { echo "ZVM insmod $m failed"; ok=0; }
	done
	ROOT=/host
	if [ $ok = 1 ] && mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /host; then
		if [ "$ZWRITABLE" = 1 ]; then
			# writable view: tmpfs overlay on the read-only host root
			mkdir -p /ovl /merged && mount -t tmpfs ovl /ovl &&
				mkdir -p /ovl/up /ovl/work &&
				mount -t overlay overlay -o lowerdir=/host,upperdir=/ovl/up,workdir=/ovl/work /merged &&
				ROOT=/merged || echo "ZVM overlay failed; the host root stays read-only"
		fi
		mount -t proc proc $ROOT/proc
		mount -t sysfs sys $ROOT/sys
		mount -t devtmpfs dev $ROOT/dev
		# /tmp: writable and fresh, but still showing the host's /tmp (a
		# checkout or a venv may live there): a tmpfs overlay on it.
		mkdir -p /tmpovl && mount -t tmpfs tmpovl /tmpovl && mkdir -p /tmpovl/up /tmpovl/work &&
			mount -t overlay overlay -o lowerdir=/host/tmp,upperdir=/tmpovl/up,workdir=/tmpovl/work $ROOT/tmp ||
			mount -t tmpfs tmp $ROOT/tmp
		[ -d $ROOT/run ] && mount -t tmpfs run $ROOT/run
		[ -d $ROOT/dev/shm ] || mkdir -p $ROOT/dev/shm
		mount -t tmpfs shm $ROOT/dev/shm
		echo "ZCMD START"
		chroot $ROOT /bin/sh /proc/1/root/zcmd.sh
		rc=$?
		echo "ZCMD EXIT $rc"
		umount $ROOT/dev/shm $ROOT/run $ROOT/tmp $ROOT/dev $ROOT/sys $ROOT/proc 2>/dev/null
		umount /tmpovl 2>/dev/null
		[ $ROOT = /merged ] && umount /merged
		umount /host 2>/dev/null
	else
		echo "ZCMD EXIT 255 (could not mount the host root over 9p)"
	fi
	;;
esac

if [ "$ZMODE" != cmd ] || grep -q '^zerrow ' /proc/modules; then
	if rmmod zerrow; then
		echo "ZTEST PASS rmmod"
	else
		echo "ZTEST FAIL rmmod: $(grep '^zerrow ' /proc/modules)"
	fi
fi
bad="$(dmesg | grep -E 'BUG|WARNING|Bad rss-counter|Oops|general protection|Call Trace|refcount_t|list_del corruption' | head -20)"
if [ -z "$bad" ]; then
	echo "ZTEST PASS dmesg_clean"
else
	echo "ZTEST FAIL dmesg_clean: kernel complained:"
	echo "$bad"
	dmesg | tail -60
fi
echo "ZVM DONE"
sync
poweroff -f
