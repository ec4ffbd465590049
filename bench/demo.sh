#!/usr/bin/env bash
# make demo: a slow backing tree, mounted through bcachefs-lite with a cache file;
# cold reads, warm reads after dropping the kernel's page cache, the speedup, the
# cache's stats, and the same after a remount.
#
# The slow store is an ext4 image on a loop device throttled to 40 MB/s and 300
# IOPS with the cgroup io controller (like a network home). Everything is created
# in a temporary directory and torn down at the end, also on failure or Ctrl-C;
# only what this script made is unmounted, detached or removed.
set -euo pipefail

BIN=${BIN:-target/release/bcachefs-lite}
BIN=$(readlink -f "$BIN")
RBPS=${DEMO_RBPS:-40000000}
RIOPS=${DEMO_RIOPS:-300}
WORK=$(mktemp -d /var/tmp/bcachefs-lite-demo.XXXXXX)
BACKING=$WORK/backing
MNT=$WORK/mnt
CACHE=$WORK/ssd/demo.cache
LOOP=""
CGROUP=""
mounted=0
backing_mounted=0

cleanup() {
    set +e
    if [ "$mounted" = 1 ] && grep -q " $MNT fuse.bcachefs-lite " /proc/mounts; then
        umount "$MNT" 2>/dev/null || umount -l "$MNT"
    fi
    # the daemon finishes its last checkpoint, then exits: wait for it
    for _ in $(seq 50); do pgrep -f "bcachefs-lite mount $BACKING " >/dev/null || break; sleep 0.1; done
    [ "$backing_mounted" = 1 ] && umount "$BACKING"
    [ -n "$LOOP" ] && losetup -d "$LOOP"
    [ -n "$CGROUP" ] && rmdir "$CGROUP" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "A slow backing store: an ext4 image on a loop device"
truncate -s 1G "$WORK/backing.img"
mkfs.ext4 -q -F "$WORK/backing.img"
LOOP=$(losetup --find --show --direct-io=on "$WORK/backing.img")
mkdir -p "$BACKING" "$MNT" "$WORK/ssd"
mount "$LOOP" "$BACKING"
backing_mounted=1
majmin=$(lsblk -dno MAJ:MIN "$LOOP" | tr -d ' ')

if [ -w /sys/fs/cgroup/cgroup.subtree_control ] && grep -qw io /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    echo +io > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    CGROUP=/sys/fs/cgroup/bcl-demo-$$
    mkdir "$CGROUP"
    echo "$majmin rbps=$RBPS riops=$RIOPS" > "$CGROUP/io.max"
    echo "throttled with cgroup v2 io.max: $((RBPS / 1000000)) MB/s, $RIOPS IOPS"
elif [ -e /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device ]; then
    CGROUP=/sys/fs/cgroup/blkio/bcl-demo-$$
    mkdir "$CGROUP"
    echo "$majmin $RBPS" > "$CGROUP/blkio.throttle.read_bps_device"
    echo "$majmin $RIOPS" > "$CGROUP/blkio.throttle.read_iops_device"
    echo "throttled with cgroup v1 blkio: $((RBPS / 1000000)) MB/s, $RIOPS IOPS"
else
    echo "no cgroup io controller here: the backing is NOT throttled (speedups will be small)"
fi

# run a command inside the throttled cgroup (the daemon does the backing's I/O)
in_cgroup() {
    if [ -n "$CGROUP" ]; then
        sh -c 'echo $$ > "$0/cgroup.procs"; shift; exec "$@"' "$CGROUP" -- "$@"
    else
        "$@"
    fi
}

say "A demo tree: a source tree of 2000 small files and a 64 MiB data file"
mkdir -p "$BACKING/src"
for d in $(seq 1 40); do
    mkdir -p "$BACKING/src/mod$d"
    for f in $(seq 1 50); do
        head -c $((2000 + (d * f * 37) % 9000)) /dev/urandom | base64 > "$BACKING/src/mod$d/file$f.rs"
    done
done
head -c 64M /dev/urandom > "$BACKING/big.bin"
sync
du -sh "$BACKING"

mount_it() {
    in_cgroup "$BIN" mount "$BACKING" "$MNT" \
        -o "cache=$CACHE,cache_size=1G"
    mounted=1
}
say "Mount: bcachefs-lite mount $BACKING $MNT -o cache=$CACHE,cache_size=1G"
echo "(the one big file is cached too: a process streaming more than 4 MiB goes on probation,"
echo " evicted first unless read again, so backups do not flush the hot set;"
echo " -o sequential_cutoff=4M would bypass it as bcache does)"
mount_it
grep " $MNT " /proc/mounts

seconds() { # run a command after dropping the page cache, print seconds taken
    sync
    echo 3 > /proc/sys/vm/drop_caches
    local start end
    start=$(date +%s.%N)
    "$@" > /dev/null
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", e - s }'
}
row() { printf '%-34s %8s s\n' "$1" "$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }

say "Cold reads (nothing cached yet; the page cache is dropped before each)"
cold_big=$(seconds cat "$MNT/big.bin")
row "cat big.bin (64 MiB)" "$cold_big"
# (tar writing to /dev/null skips reading file contents: pipe it through wc)
cold_tree=$(seconds sh -c "tar -C '$MNT' -cf - src | wc -c")
row "tar cf - src (2000 files)" "$cold_tree"
sleep 1 # let the journal writer record the new keys

say "Warm reads (page cache dropped again: these come from the cache file)"
warm_big=$(seconds cat "$MNT/big.bin")
row "cat big.bin (64 MiB)" "$warm_big"
warm_tree=$(seconds sh -c "tar -C '$MNT' -cf - src | wc -c")
row "tar cf - src (2000 files)" "$warm_tree"
echo
echo "speedup: big file $(ratio "$cold_big" "$warm_big"), source tree $(ratio "$cold_tree" "$warm_tree")"
cmp "$BACKING/big.bin" "$MNT/big.bin" && echo "identical bytes: yes"

say "bcachefs-lite stats $MNT"
"$BIN" stats "$MNT"

say "Unmount and mount again: the cache survives"
umount "$MNT"
mounted=0
for _ in $(seq 100); do pgrep -f "bcachefs-lite mount $BACKING " >/dev/null || break; sleep 0.1; done
mount_it
again=$(seconds cat "$MNT/big.bin")
row "cat big.bin after remount" "$again"
"$BIN" stats "$MNT" | grep -E '^(cache_hits|cache_misses|cache_hit_ratio) '

say "Unmount"
umount "$MNT"
mounted=0
echo "done"
