#!/usr/bin/env bash
# make demo: mount a demo backing tree through bcachefs-lite and show it working.
# Everything lives in a temporary directory that is removed at the end, also on
# failure or Ctrl-C; only the mount this script made is unmounted.
set -euo pipefail

BIN=${BIN:-target/release/bcachefs-lite}
WORK=$(mktemp -d /tmp/bcachefs-lite-demo.XXXXXX)
BACKING=$WORK/backing
MNT=$WORK/mnt
mounted=0

cleanup() {
    if [ "$mounted" = 1 ] && grep -q " $MNT fuse.bcachefs-lite " /proc/mounts; then
        umount "$MNT" 2>/dev/null || umount -l "$MNT"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "A demo backing tree in $BACKING"
mkdir -p "$BACKING/src/lib" "$BACKING/data" "$MNT"
for i in $(seq 1 200); do echo "fn f$i() -> u32 { $i }" > "$BACKING/src/lib/f$i.rs"; done
head -c 256M /dev/urandom > "$BACKING/data/big.bin"
ln -s data/big.bin "$BACKING/big-link"
du -sh "$BACKING"

say "Mount it: $BIN mount $BACKING $MNT"
"$BIN" mount "$BACKING" "$MNT"
mounted=1
grep " $MNT " /proc/mounts

say "The mount behaves like the backing tree"
ls -la "$MNT" | head
echo "files under src/: $(find "$MNT/src" -type f | wc -l)"
echo "hello from the mount" > "$MNT/hello.txt"
cat "$BACKING/hello.txt"

timed_read() {
    local label=$1 file=$2
    sync; echo 3 > /proc/sys/vm/drop_caches
    local start end
    start=$(date +%s.%N)
    cat "$file" > /dev/null
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" -v l="$label" \
        'BEGIN { t = e - s; printf "%-28s %6.3f s  %7.1f MB/s\n", l, t, 256 / 1.048576 / t }'
}

say "Reading 256 MiB (page cache dropped before each read)"
timed_read "backing directly" "$BACKING/data/big.bin"
timed_read "through the mount" "$MNT/data/big.bin"
timed_read "through the mount again" "$MNT/data/big.bin"
cmp "$BACKING/data/big.bin" "$MNT/data/big.bin" && echo "identical bytes"

say "Unmount"
umount "$MNT"
mounted=0
echo "done"
