#!/usr/bin/env bash
# bench/scale.sh — `make bench-scale`: a tree of BCL_SCALE_FILES files (default 1,000,000),
# walked with `find -printf` (an lstat of every entry), cold and warm, on the local disk
# and through a bcachefs-lite mount whose daemon runs with RLIMIT_NOFILE 1024 soft AND
# hard (so its soft-to-hard raise cannot help: inodes must not cost a descriptor each).
# Reports times, the daemon's peak RSS (VmHWM), its open descriptors over time, and RSS
# per 1,000 inodes the kernel knows, into bench/results/scale.md (BCL_SCALE_OUT).
#
# Knobs: BIN (release binary), BCL_SCALE_FILES, BCL_SCALE_PER_DIR (1000),
# BCL_SCALE_DIR (/var/tmp; the tree is kept between runs under it unless
# BCL_SCALE_CLEAN=1), BCL_SCALE_NOFILE (1024), BCL_SCALE_OUT.
# Needs root (drop_caches, mount). "Cold" means after `echo 3 > drop_caches`: the
# kernel's dentries and inodes (so FUSE forgets everything) and page cache are gone.
set -euo pipefail

BIN=${BIN:-target/release/bcachefs-lite}
N=${BCL_SCALE_FILES:-1000000}
PER_DIR=${BCL_SCALE_PER_DIR:-1000}
BASE=${BCL_SCALE_DIR:-/var/tmp}
NOFILE=${BCL_SCALE_NOFILE:-1024}
OUT=${BCL_SCALE_OUT:-bench/results/scale.md}

[ "$(id -u)" = 0 ] || { echo "bench-scale needs root (drop_caches, mount)"; exit 1; }
[ -x "$BIN" ] || { echo "no binary $BIN (make release)"; exit 1; }
BIN=$(readlink -f "$BIN")

TREE="$BASE/bcl-scale-tree-$N"
WORK=$(mktemp -d "$BASE/bcl-scale-run.XXXXXX")
MNT="$WORK/mnt"
mkdir -p "$MNT"
DAEMON_PID=""
SAMPLER_PID=""

cleanup() {
    [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null || true
    if findmnt -n "$MNT" >/dev/null 2>&1; then umount -l "$MNT" || true; fi
    if [ -n "$DAEMON_PID" ]; then wait "$DAEMON_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
    if [ "${BCL_SCALE_CLEAN:-0}" = 1 ]; then rm -rf "$TREE"; fi
}
trap cleanup EXIT

# --- the tree: N files in directories of PER_DIR, sparse (a size, no blocks) ----------
if [ ! -f "$TREE/.complete" ]; then
    echo "generating $N files in $TREE ..."
    rm -rf "$TREE"
    t0=$(date +%s.%N)
    /usr/bin/python3 - "$TREE" "$N" "$PER_DIR" <<'EOF'
import os, sys
root, n, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    if i % per == 0:
        d = os.path.join(root, "d%04d" % (i // per))
        os.makedirs(d)
    fd = os.open(os.path.join(d, "f%07d" % i), os.O_CREAT | os.O_WRONLY, 0o644)
    os.ftruncate(fd, i % 9000)
    os.close(fd)
EOF
    touch "$TREE/.complete"
    echo "generated in $(echo "$(date +%s.%N) - $t0" | bc) s"
fi

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
walk() { # walk DIR -> seconds; checks the entry count
    local t0 t1 n
    t0=$(date +%s.%N)
    n=$(find "$1" -printf '%p %s %i %m %T@\n' | wc -l)
    t1=$(date +%s.%N)
    if [ "$n" -ne "$ENTRIES" ]; then
        echo "walk of $1 saw $n entries, expected $ENTRIES" >&2
        exit 1
    fi
    printf '%.2f\n' "$(echo "$t1 - $t0" | bc)"
}
ENTRIES=$(find "$TREE" | wc -l)

echo "local disk: cold, warm"
drop; LOCAL_COLD=$(walk "$TREE")
LOCAL_WARM=$(walk "$TREE")

# --- the mount -------------------------------------------------------------------------
prlimit --nofile="$NOFILE:$NOFILE" "$BIN" mount "$TREE" "$MNT" -f \
    -o "cache=$WORK/cache,cache_size=256M" --log-file "$WORK/log" &
DAEMON_PID=$!
for _ in $(seq 100); do findmnt -n "$MNT" >/dev/null 2>&1 && break; sleep 0.1; done
findmnt -n "$MNT" >/dev/null || { echo "mount failed"; cat "$WORK/log"; exit 1; }
LIMITS=$(awk '/Max open files/ {print $4 ":" $5}' "/proc/$DAEMON_PID/limits")

status() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$DAEMON_PID/status"; }
figure() { "$BIN" stats --json "$MNT" | sed -n "s/^ *\"$1\": \"\{0,1\}\([^\",]*\).*/\1/p"; }

# descriptors and RSS over time: "seconds fds rss_kib", every 0.5 s
T_START=$(date +%s.%N)
(
    while kill -0 "$DAEMON_PID" 2>/dev/null; do
        fds=$(ls "/proc/$DAEMON_PID/fd" 2>/dev/null | wc -l)
        rss=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$DAEMON_PID/status" 2>/dev/null)
        echo "$(echo "$(date +%s.%N) - $T_START" | bc) $fds $rss"
        sleep 0.5
    done
) > "$WORK/samples" &
SAMPLER_PID=$!

RSS_MOUNTED=$(status VmRSS)
echo "through the mount: cold, warm"
drop
RSS_DROPPED=$(status VmRSS)
MNT_COLD=$(walk "$MNT")
KNOWN=$(figure inodes_known)
RSS_WALKED=$(status VmRSS)
MNT_WARM=$(walk "$MNT")
KNOWN_WARM=$(figure inodes_known)
sleep 1
HWM=$(status VmHWM)
FD_CAP=$(figure inode_fd_cache_capacity)
REOPENS=$(figure inode_fd_reopens)
EVICTIONS=$(figure inode_fd_evictions)
HANDLES=$(figure file_handles)
ERRORS=$(grep -c -i "error" "$WORK/log" || true)
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
umount "$MNT"
wait "$DAEMON_PID" || true
DAEMON_PID=""

FD_MAX=$(awk 'BEGIN {m = 0} $2 > m {m = $2} END {print m}' "$WORK/samples")
NSAMPLES=$(wc -l < "$WORK/samples")
PER_1000=$(( (RSS_WALKED - RSS_DROPPED) * 1000 / (KNOWN > 0 ? KNOWN : 1) ))
ratio() { echo "scale=1; $1 / $2" | bc; }

mkdir -p "$(dirname "$OUT")"
{
    echo "# bench-scale: $N files, \`find -printf\` (lstat of every entry)"
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -r), $(nproc) cores, by \`make bench-scale\`"
    echo "(bench/scale.sh). Tree: $N sparse files in directories of $PER_DIR under $BASE"
    echo "($(df -T "$BASE" | awk 'NR == 2 {print $2}')), $ENTRIES entries. Daemon: release build, RLIMIT_NOFILE $LIMITS"
    echo "(soft:hard, set with prlimit, so the soft-to-hard raise cannot help), with a cache"
    echo "(\`cache_size=256M\`), file handles: $HANDLES, descriptor cache capacity $FD_CAP."
    echo "Cold = after \`echo 3 > /proc/sys/vm/drop_caches\` (the kernel forgets every FUSE inode)."
    echo
    echo "| walk | local disk | through the mount | mount / local |"
    echo "| --- | --- | --- | --- |"
    echo "| cold | ${LOCAL_COLD} s | ${MNT_COLD} s | $(ratio "$MNT_COLD" "$LOCAL_COLD")x |"
    echo "| warm | ${LOCAL_WARM} s | ${MNT_WARM} s | $(ratio "$MNT_WARM" "$LOCAL_WARM")x |"
    echo
    echo "| daemon | value |"
    echo "| --- | --- |"
    echo "| inodes known after the cold walk / after the warm walk | $KNOWN / $KNOWN_WARM |"
    echo "| RSS at mount / after drop_caches / after the cold walk | $RSS_MOUNTED / $RSS_DROPPED / $RSS_WALKED KiB |"
    echo "| peak RSS (VmHWM) | $HWM KiB |"
    echo "| RSS per 1,000 known inodes | $PER_1000 KiB |"
    echo "| open descriptors, most seen ($NSAMPLES samples, every 0.5 s) | $FD_MAX |"
    echo "| descriptor reopens by handle / evictions | $REOPENS / $EVICTIONS |"
    echo "| error lines in the daemon's log | $ERRORS |"
    echo
    echo "Open descriptors and RSS over time (seconds since mount, descriptors, RSS KiB; every"
    echo "$(( NSAMPLES / 20 > 0 ? NSAMPLES / 20 : 1 ))th sample):"
    echo
    echo '```'
    awk -v step=$(( NSAMPLES / 20 > 0 ? NSAMPLES / 20 : 1 )) 'NR % step == 1 || step == 1 {printf "%8.1f s %6d fds %9d KiB\n", $1, $2, $3}' "$WORK/samples"
    echo '```'
} > "$OUT"
cat "$OUT"
