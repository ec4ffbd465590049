#!/usr/bin/python3
"""bcachefs-lite benchmarks against the tools users would pick instead.

One run on one machine: a slow backing store (an ext4 image on a loop device, throttled with the
cgroup io controller), the same data on the local disk, bindfs, rclone's VFS cache and
bcachefs-lite, each through the same workloads. Writes a markdown table, a CSV and PNG plots to
bench/results/<quick|full>/.

Everything this script sets up (work directory, loop device, ext4 mount, cgroup, FUSE mounts,
daemons) is recorded when it is made and torn down in reverse order at the end, also on failure,
Ctrl-C or SIGTERM. Nothing else is ever unmounted or killed: daemons are ended by their PID.

Run as root: `make bench-quick` or `make bench` (see bench/README.md for the knobs).
"""

import argparse
import csv
import datetime
import json
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20

SYSTEMS = ["backing", "ssd", "passthrough", "rclone", "bcachefs-lite", "bcachefs-lite-excl",
           "bcachefs-lite-wb"]
DEB_PACKAGES = ["bindfs", "rclone", "fio", "python3-matplotlib", "git", "e2fsprogs", "fuse3",
                "util-linux", "tar", "grep", "findutils"]


# --------------------------------------------------------------------------------------------
# knobs


def parse_size(text):
    """'40M' -> 40 * 2**20; plain numbers are bytes. K/M/G/T are binary."""
    text = str(text).strip()
    mult = 1
    suffix = text[-1:].upper()
    if suffix in "KMGT" and suffix:
        mult = 1 << (10 * ("KMGT".index(suffix) + 1))
        text = text[:-1]
    return int(float(text) * mult)


def env(name, default):
    return os.environ.get(name, default)


def config(quick):
    """Sizes per mode; every one can be overridden by an environment variable."""
    q = quick
    c = {
        # throttle of the slow backing store, like a network home
        "rbps": parse_size(env("BENCH_RBPS", "40000000")),
        "wbps": parse_size(env("BENCH_WBPS", "40000000")),
        "riops": int(env("BENCH_RIOPS", "300")),
        "wiops": int(env("BENCH_WIOPS", "300")),
        "seq_size": parse_size(env("BENCH_SEQ_SIZE", "64M" if q else "512M")),
        "rand_size": parse_size(env("BENCH_RAND_SIZE", "32M" if q else "256M")),
        "fio_runtime": int(env("BENCH_FIO_RUNTIME", "4" if q else "15")),
        "tree_files": int(env("BENCH_TREE_FILES", "1500" if q else "5000")),
        "write_size": parse_size(env("BENCH_WRITE_SIZE", "64M" if q else "256M")),
        "cache_size": parse_size(env("BENCH_CACHE_SIZE", "1G" if q else "2G")),
        "zipf_size": parse_size(env("BENCH_ZIPF_SIZE", "64M" if q else "384M")),
        "zipf_cache": parse_size(env("BENCH_ZIPF_CACHE", "24M" if q else "128M")),
        "zipf_theta": env("BENCH_ZIPF_THETA", "1.1"),
        "zipf_bs": parse_size(env("BENCH_ZIPF_BS", "64K")),
        "zipf_passes": float(env("BENCH_ZIPF_PASSES", "2")),
        "policies": env("BENCH_POLICIES", "lru,fifo,random").split(","),
        # Zipf + scan (issue 12): the plain policies (probation off) and the default admission
        "scan_policies": env("BENCH_SCAN_POLICIES", "lru,fifo,random,default").split(","),
        "systems": env("BENCH_SYSTEMS", ",".join(SYSTEMS)).split(","),
        # quick: the Zipf run for bcachefs-lite and the backing only
        "zipf_systems": env("BENCH_ZIPF_SYSTEMS",
                            "backing,bcachefs-lite" if q
                            else ",".join(x for x in SYSTEMS
                                          if x not in ("bcachefs-lite-excl", "bcachefs-lite-wb"))
                            ).split(","),
        "bcl_extra_opts": env("BCL_EXTRA_OPTS", ""),
        # the dev-box workload (unthrottled backing vs the local disk); its cargo build
        # compiles a copy of this repository offline (minutes: off in quick mode)
        "devbox": env("BENCH_DEVBOX", "1") == "1",
        "devbox_build": env("BENCH_DEVBOX_BUILD", "0" if q else "1") == "1",
        "workdir_parent": env("BENCH_DIR", "/var/tmp"),
        "bin": env("BIN", os.path.join(ROOT, "target", "release", "bcachefs-lite")),
        "results": env("BENCH_RESULTS", os.path.join(ROOT, "bench", "results",
                                                     "quick" if q else "full")),
    }
    return c


# --------------------------------------------------------------------------------------------
# helpers


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd, check=True, **kw):
    """Run a command (list) and return CompletedProcess with text output."""
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kw)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def mounted(path):
    path = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1 and fields[1].replace("\\040", " ") == path:
                return True
    return False


def peak_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Teardown:
    """A stack of undo actions; each is run once, in reverse order, errors are reported."""

    def __init__(self):
        self.actions = []

    def push(self, label, fn):
        self.actions.append((label, fn))
        return len(self.actions) - 1

    def run(self):
        while self.actions:
            label, fn = self.actions.pop()
            try:
                fn()
            except Exception as e:  # keep tearing down the rest
                log(f"teardown: {label}: {e}")


# --------------------------------------------------------------------------------------------
# the slow store: ext4 on a loop device, throttled by a cgroup


class Throttle:
    """Creates a cgroup limiting the loop device; `wrap(cmd)` runs cmd inside it."""

    def __init__(self, td, cfg, dev_majmin):
        self.td = td
        self.cfg = cfg
        self.mode = "none"
        self.procs = None
        self.path = None
        self.note = ""
        name = f"bcl-bench-{os.getpid()}"
        v2_root = "/sys/fs/cgroup"
        if os.path.exists(f"{v2_root}/cgroup.controllers") and \
                "io" in open(f"{v2_root}/cgroup.controllers").read().split():
            self._setup_v2(v2_root, name, dev_majmin)
        elif os.path.exists("/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device"):
            self._setup_v1("/sys/fs/cgroup/blkio", name, dev_majmin)
        else:
            self.note = "no cgroup io controller (v2 io or v1 blkio): the backing is UNTHROTTLED"
            log(self.note)

    def _mkdir(self, path):
        os.mkdir(path)
        self.path = path
        self.td.push(f"remove cgroup {path}", self._remove)

    def _setup_v2(self, root, name, dev):
        sub = open(f"{root}/cgroup.subtree_control").read().split()
        if "io" not in sub:
            with open(f"{root}/cgroup.subtree_control", "w") as f:
                f.write("+io")
        self._mkdir(f"{root}/{name}")
        c = self.cfg
        with open(f"{self.path}/io.max", "w") as f:
            f.write(f"{dev} rbps={c['rbps']} wbps={c['wbps']} riops={c['riops']} "
                    f"wiops={c['wiops']}\n")
        self.procs = f"{self.path}/cgroup.procs"
        self.mode = "cgroup v2 io.max"

    def _setup_v1(self, root, name, dev):
        self._mkdir(f"{root}/{name}")
        c = self.cfg
        for fname, val in [("read_bps_device", c["rbps"]), ("write_bps_device", c["wbps"]),
                           ("read_iops_device", c["riops"]), ("write_iops_device", c["wiops"])]:
            with open(f"{self.path}/blkio.throttle.{fname}", "w") as f:
                f.write(f"{dev} {val}\n")
        self.procs = f"{self.path}/cgroup.procs"
        self.mode = "cgroup v1 blkio.throttle"

    def _remove(self):
        if not self.path or not os.path.isdir(self.path):
            return
        # only processes this bench started can be in the cgroup it created
        for _ in range(50):
            pids = [int(p) for p in open(self.procs).read().split()]
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        os.rmdir(self.path)

    def wrap(self, cmd):
        if not self.procs:
            return list(cmd)
        return ["sh", "-c", f'echo $$ > {self.procs} && exec "$@"', "sh"] + list(cmd)

    def short(self):
        c = self.cfg
        if self.mode == "none":
            return "UNTHROTTLED"
        return (f"r {c['rbps'] / 1e6:.0f} MB/s {c['riops']} IOPS, "
                f"w {c['wbps'] / 1e6:.0f} MB/s {c['wiops']} IOPS")

    def describe(self):
        c = self.cfg
        if self.mode == "none":
            return "none (unthrottled: " + self.note + ")"
        return (f"{self.mode}: read {c['rbps'] / 1e6:.0f} MB/s, {c['riops']} IOPS; "
                f"write {c['wbps'] / 1e6:.0f} MB/s, {c['wiops']} IOPS")


# --------------------------------------------------------------------------------------------
# the data set


WORDS = ("fn let mut struct impl pub use self return match if else for while loop bucket gen "
         "prio key extent cache backing journal alloc index read write fsync inode handle "
         "error result option some none ok err vec string u64 u32 usize lock mutex").split()


def make_tree(root, nfiles, seed=5):
    """A synthetic source tree: nfiles text files, 2 levels of directories, sizes log-normal
    around 3 KiB (100 B .. 64 KiB), like a mid-size project."""
    rng = random.Random(seed)
    per_dir = 40
    for i in range(nfiles):
        d = os.path.join(root, f"mod{i // (per_dir * 10):02d}", f"sub{(i // per_dir) % 10}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        size = int(min(64 * 1024, max(100, rng.lognormvariate(8.0, 1.0))))
        lines = []
        n = 0
        while n < size:
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
            if rng.random() < 0.01:
                line += " NEEDLE_TODO"
            lines.append(line)
            n += len(line) + 1
        with open(os.path.join(d, f"file{i:05d}.rs"), "w") as f:
            f.write("\n".join(lines) + "\n")


def make_crate(root, nmods=40):
    """A small dependency-free Rust crate (a library of `nmods` modules of generic code) for
    the edit + build workload; returns the module file the edit touches."""
    os.makedirs(os.path.join(root, "src"))
    with open(os.path.join(root, "Cargo.toml"), "w") as f:
        f.write('[package]\nname = "benchcrate"\nversion = "0.1.0"\nedition = "2021"\n')
    mods = []
    for i in range(nmods):
        body = "\n".join(
            f"pub fn f{j}<T: Clone + std::fmt::Debug>(v: &[T]) -> Vec<String> {{\n"
            f"    v.iter().cloned().map(|x| format!(\"{i}-{j} {{:?}}\", x)).collect()\n}}"
            for j in range(30))
        with open(os.path.join(root, "src", f"m{i}.rs"), "w") as f:
            f.write(body + "\n")
        mods.append(f"pub mod m{i};")
    with open(os.path.join(root, "src", "lib.rs"), "w") as f:
        f.write("\n".join(mods) + "\n")
    return os.path.join(root, "src", "m7.rs")


def make_random_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n


GIT_ENV = dict(os.environ, GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="safe.directory",
               GIT_CONFIG_VALUE_0="*", GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="b@e",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="b@e")


def populate(data, cfg):
    os.makedirs(f"{data}/big")
    log(f"data set: seq {cfg['seq_size'] // MiB} MiB, rand {cfg['rand_size'] // MiB} MiB, "
        f"zipf {cfg['zipf_size'] // MiB} MiB, tree of {cfg['tree_files']} files (git repo)")
    make_random_file(f"{data}/big/seq.bin", cfg["seq_size"])
    make_random_file(f"{data}/big/rand.bin", cfg["rand_size"])
    make_random_file(f"{data}/big/zipf.bin", cfg["zipf_size"])
    make_tree(f"{data}/tree", cfg["tree_files"])
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "tree"], ["gc", "-q"]):
        subprocess.run(["git", "-C", f"{data}/tree"] + args, check=True, env=GIT_ENV,
                       capture_output=True)


# --------------------------------------------------------------------------------------------
# systems


class System:
    """One way of reaching the data. `start()` mounts (if any), `stop()` unmounts."""

    fuse = False

    def __init__(self, bench, name):
        self.b = bench
        self.name = name
        self.pid = None
        self.mnt = None
        self.path = None  # where the workloads run
        self.peak_rss = None
        self.notes = []

    def start(self, **kw):
        pass

    def stop(self):
        pass

    def stats(self):
        return None


class Direct(System):
    def __init__(self, bench, name, path):
        super().__init__(bench, name)
        self.path = path


class FuseSystem(System):
    fuse = True
    fstype = ""

    def cmd(self, **kw):
        raise NotImplementedError

    def prepare(self, **kw):
        pass

    def start(self, **kw):
        b = self.b
        self.mnt = os.path.join(b.work, "mnt", self.name)
        os.makedirs(self.mnt, exist_ok=True)
        self.prepare(**kw)
        logf = open(os.path.join(b.work, "logs", f"{self.name}.log"), "a")
        cmd = b.throttle.wrap(self.cmd(**kw))
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        self.proc = proc
        self.pid = proc.pid
        b.td.push(f"end {self.name} daemon pid {proc.pid}", lambda p=proc: self._reap(p))
        b.td.push(f"unmount {self.mnt}", lambda m=self.mnt: self._umount(m))
        deadline = t0 + 60
        while not mounted(self.mnt):
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {proc.returncode} before mounting; "
                                   f"see {logf.name}: {open(logf.name).read()[-800:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not mount within 60 s")
            time.sleep(0.01)
        self.mount_time = time.monotonic() - t0
        self.path = self.mnt
        return self.mount_time

    @staticmethod
    def _umount(mnt):
        if mounted(mnt):
            r = subprocess.run(["umount", mnt], capture_output=True)
            if r.returncode != 0:
                time.sleep(1)
                if mounted(mnt) and subprocess.run(["umount", mnt]).returncode != 0:
                    subprocess.run(["umount", "-l", mnt])

    @staticmethod
    def _reap(proc):
        if proc.poll() is not None:
            return
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            pass
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self):
        self.peak_rss = peak_rss_mib(self.pid)
        self._umount(self.mnt)
        self._reap(self.proc)
        return self.peak_rss


class Bindfs(FuseSystem):
    def cmd(self, **kw):
        return ["bindfs", "-f", self.b.data, self.mnt]


class Rclone(FuseSystem):
    def prepare(self, cache_size=None, fresh=True, **kw):
        self.cache_dir = os.path.join(self.b.cache_root, "rclone")
        if fresh:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
        os.makedirs(self.cache_dir, exist_ok=True)

    def cmd(self, cache_size=None, **kw):
        size = cache_size or self.b.cfg["cache_size"]
        return ["rclone", "mount", self.b.data, self.mnt, "--config", "/dev/null",
                "--vfs-cache-mode", "full", "--cache-dir", self.cache_dir,
                "--vfs-cache-max-size", str(size), "--vfs-cache-poll-interval", "5s"]


class Bcl(FuseSystem):
    """bcachefs-lite; `extra`: more -o options (coherence=exclusive), `backing`: another
    backing directory than the throttled data set (the dev-box workload)."""

    def __init__(self, bench, name, extra="", backing=None):
        super().__init__(bench, name)
        self.extra = extra
        self.backing = backing

    def prepare(self, cache_size=None, policy=None, fresh=True, extra=None, **kw):
        self.cache_file = os.path.join(self.b.cache_root, f"{self.name}.cache")
        if fresh and os.path.exists(self.cache_file):
            os.unlink(self.cache_file)

    def cmd(self, cache_size=None, policy=None, extra=None, **kw):
        b = self.b
        opts = []
        if b.bcl_cache:
            opts.append(f"cache={self.cache_file},cache_size={cache_size or b.cfg['cache_size']}")
            if policy:
                opts.append(f"replacement={policy}")
            if extra:
                opts.append(extra)
        if self.extra:
            opts.append(self.extra)
        if b.cfg["bcl_extra_opts"]:
            opts.append(b.cfg["bcl_extra_opts"])
        c = [b.cfg["bin"], "mount", self.backing or b.data, self.mnt, "-f"]
        if opts:
            c += ["-o", ",".join(opts)]
        return c

    def stats(self):
        if not self.b.bcl_cache:
            return None
        r = subprocess.run([self.b.cfg["bin"], "stats", self.mnt, "--json"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            return None


# --------------------------------------------------------------------------------------------
# the bench


class Bench:
    def __init__(self, cfg, quick):
        self.cfg = cfg
        self.quick = quick
        self.td = Teardown()
        self.rows = []  # dicts: workload, unit, better, system, value
        self.meta = {}
        self.bcl_cache = False
        self.bcl_mode = "passthrough"

    # ---- set-up

    def install(self):
        if os.environ.get("BENCH_NO_INSTALL") == "1":
            return
        missing = [p for p in DEB_PACKAGES
                   if "ok installed" not in sh(["dpkg-query", "-W", "-f=${Status}", p],
                                               check=False).stdout]
        if missing:
            log("installing: " + " ".join(missing))
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            # fuse3 first and alone: bindfs depends on `fuse`, which fuse3 provides; asked for
            # together, apt could pick fuse 2 and remove fuse3, which the tests need
            apt_env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            for group in (["fuse3"], [p for p in missing if p != "fuse3"]):
                if group:
                    subprocess.run(["apt-get", "install", "-y", "-qq"] + group, check=True,
                                   env=apt_env)

    def setup(self):
        cfg = self.cfg
        if os.geteuid() != 0:
            sys.exit("bench: must run as root (loop devices, cgroups, drop_caches, FUSE)")
        if not os.access(cfg["bin"], os.X_OK):
            sys.exit(f"bench: no binary at {cfg['bin']}: run `make release` or set BIN")
        self.install()
        os.makedirs(cfg["workdir_parent"], exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="bcl-bench.", dir=cfg["workdir_parent"])
        self.td.push(f"remove {self.work}", lambda: shutil.rmtree(self.work, ignore_errors=True))
        log(f"work directory {self.work}")
        for d in ("mnt", "logs", "cache", "backing"):
            os.makedirs(os.path.join(self.work, d))
        self.cache_root = os.path.join(self.work, "cache")

        # the slow store
        img = os.path.join(self.work, "backing.img")
        total = (cfg["seq_size"] + cfg["rand_size"] + cfg["zipf_size"] + cfg["write_size"]
                 + cfg["tree_files"] * 16 * 1024)
        img_size = int(total * 1.3) + 512 * MiB
        with open(img, "wb") as f:
            f.truncate(img_size)
        sh(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", img])
        self.loop = sh(["losetup", "--find", "--show", "--direct-io=on", img]).stdout.strip()
        self.td.push(f"detach {self.loop}", lambda: sh(["losetup", "-d", self.loop]))
        majmin = sh(["lsblk", "-ndo", "MAJ:MIN", self.loop]).stdout.strip()
        self.backing_mnt = os.path.join(self.work, "backing")
        sh(["mount", "-o", "noatime", self.loop, self.backing_mnt])
        self.td.push(f"unmount {self.backing_mnt}", self._umount_backing)
        self.data = os.path.join(self.backing_mnt, "data")
        populate(self.data, cfg)
        log("copying the data set to the local disk (ssd)")
        self.ssd_data = os.path.join(self.work, "ssd")
        sh(["cp", "-a", self.data, self.ssd_data])
        os.sync()
        self.throttle = Throttle(self.td, cfg, majmin)
        log(f"throttle: {self.throttle.describe()} on {self.loop} ({majmin})")
        self.detect_bcl()

    def _umount_backing(self):
        if mounted(self.backing_mnt):
            r = subprocess.run(["umount", self.backing_mnt])
            if r.returncode != 0:
                time.sleep(1)
                subprocess.run(["umount", "-l", self.backing_mnt])

    def detect_bcl(self):
        """Use the cache when the binary knows `cache=`: its help says so and a mount with it
        works. Otherwise plain passthrough, and the results say so."""
        help_text = sh([self.cfg["bin"], "mount", "--help"], check=False).stdout
        if "cache=" not in help_text:
            self.bcl_mode = "passthrough (this build has no cache= option)"
            log("bcachefs-lite: " + self.bcl_mode)
            return
        probe = Bcl(self, "bcachefs-lite-probe")
        self.bcl_cache = True
        try:
            probe.start()
            probe.stop()
            self.bcl_mode = "cache"
        except Exception as e:
            self.bcl_cache = False
            self.bcl_mode = f"passthrough (a mount with cache= failed: {str(e)[:200]})"
        log("bcachefs-lite: " + self.bcl_mode)

    # ---- measuring

    def record(self, workload, unit, better, system, value):
        self.rows.append(dict(workload=workload, unit=unit, better=better, system=system,
                              value=value))
        v = "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else value)
        log(f"  {system:14s} {workload:28s} {v} {unit}")

    def timed(self, cmd, cwd=None, shell=False, ok=(0,), throttled=True, timeout=1800):
        """Run cmd (inside the throttle cgroup unless told otherwise); return seconds and
        its output."""
        if shell:
            cmd = ["bash", "-o", "pipefail", "-c", cmd]
        if throttled:
            cmd = self.throttle.wrap(cmd)
        t0 = time.monotonic()
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=GIT_ENV,
                           timeout=timeout)
        t = time.monotonic() - t0
        if r.returncode not in ok:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({r.returncode}): {r.stderr[-500:]}")
        return t, r.stdout

    def fio(self, name, path, extra):
        cmd = ["fio", f"--name={name}", f"--filename={path}", "--ioengine=psync", "--direct=1",
               "--group_reporting", "--output-format=json"] + extra
        _, out = self.timed(cmd)
        job = json.loads(out[out.index("{"):])["jobs"][0]["read"]
        return job

    def run_workloads(self, s):
        cfg, p = self.cfg, s.path
        # 1. sequential read, cold then warm
        for phase in ("cold", "warm"):
            drop_caches()
            t, _ = self.timed(["dd", f"if={p}/big/seq.bin", "of=/dev/null", "bs=1M"])
            self.record(f"seq read {phase}", "MB/s", "higher", s.name, cfg["seq_size"] / t / 1e6)
        # 2. warm 4 KiB random read: one pass in random 128 KiB blocks fills the cache
        drop_caches()
        self.fio("fill", f"{p}/big/rand.bin", ["--rw=randread", "--bs=128k"])
        drop_caches()
        job = self.fio("rand", f"{p}/big/rand.bin",
                       ["--rw=randread", "--bs=4k", "--numjobs=2", "--time_based",
                        f"--runtime={cfg['fio_runtime']}"])
        self.record("rand read 4k warm", "IOPS", "higher", s.name, float(job["iops"]))
        # 3. the source tree, cold then warm
        for phase in ("cold", "warm"):
            drop_caches()
            t, out = self.timed(f"tar cf - -C {shlex.quote(p)} tree | wc -c", shell=True)
            self.record(f"tar tree {phase}", "s", "lower", s.name, t)
        # 4. metadata walk, grep, git status (after the cold tar: the tree is warm)
        drop_caches()
        t, _ = self.timed(f"find {shlex.quote(p)}/tree -print0 | xargs -0 stat > /dev/null",
                          shell=True)
        self.record("find + stat", "s", "lower", s.name, t)
        drop_caches()
        t, _ = self.timed(["grep", "-r", "-c", "NEEDLE_TODO", f"{p}/tree"], ok=(0, 1))
        self.record("grep -r", "s", "lower", s.name, t)
        drop_caches()
        # the first status after a remount refreshes the index; measure the second one too
        t, _ = self.timed(["git", "-C", f"{p}/tree", "status", "--porcelain"])
        self.record("git status cold", "s", "lower", s.name, t)
        drop_caches()
        t, _ = self.timed(["git", "-C", f"{p}/tree", "status", "--porcelain"])
        self.record("git status warm", "s", "lower", s.name, t)
        # 5. sequential write with fsync
        drop_caches()
        n = cfg["write_size"] // MiB
        t, _ = self.timed(["dd", "if=/dev/zero", f"of={p}/write.bin", "bs=1M", f"count={n}",
                           "conv=fsync"])
        self.record(f"seq write {n}M fsync", "MB/s", "higher", s.name, cfg["write_size"] / t / 1e6)
        os.unlink(f"{p}/write.bin")
        # 6. a 1,000-file change committed with git (edits, then git's objects and index)
        tree = f"{p}/tree"
        tracked = subprocess.run(["git", "-C", tree, "ls-files"], capture_output=True,
                                 text=True, env=GIT_ENV).stdout.split()[:1000]
        listing = os.path.join(self.work, "commit-files")
        with open(listing, "w") as f:
            f.write("\n".join(tracked) + "\n")
        drop_caches()
        t, _ = self.timed(f"cd {shlex.quote(tree)} && while read -r f; do echo edit >> \"$f\"; "
                          f"done < {shlex.quote(listing)} && git add -A && "
                          f"git commit -q -m bench", shell=True)
        self.record(f"git commit {len(tracked)} files", "s", "lower", s.name, t)
        sh(["git", "-C", tree, "reset", "-q", "--hard", "HEAD~1"], env=GIT_ENV)
        # the reset rewrote 1,000 files: refresh git's index now (untimed), or the status
        # after the remount below re-reads them all and is not comparable to the warm one
        sh(["git", "-C", tree, "status", "--porcelain"], env=GIT_ENV)
        # 7. a small crate built, one module edited, built again (cargo writes target/ through
        # the mount: what writeback is for)
        crate = f"{p}/crate"
        edited = make_crate(crate)
        build = f"cd {shlex.quote(crate)} && CARGO_TARGET_DIR=target cargo build --offline -q"
        drop_caches()
        t, _ = self.timed(build, shell=True)
        self.record("cargo build (small crate)", "s", "lower", s.name, t)
        with open(edited, "a") as f:
            f.write("pub fn edited() -> u32 { 7 }\n")
        t, _ = self.timed(build, shell=True)
        self.record("edit + cargo build", "s", "lower", s.name, t)
        shutil.rmtree(crate, ignore_errors=True)
        if s.name == "bcachefs-lite-wb":
            self.flush_and_compare(s)

    def flush_and_compare(self, s):
        """Writeback: `bcachefs-lite flush`, then the backing must hold what the mount shows
        (the source tree compared byte by byte, outside the throttle)."""
        t0 = time.monotonic()
        r = subprocess.run([self.cfg["bin"], "flush", s.path], capture_output=True, text=True)
        self.record("flush after the workloads", "s", "lower", s.name, time.monotonic() - t0)
        if r.returncode != 0:
            log(f"flush failed: {r.stderr[-300:]}")
        drop_caches()
        same = subprocess.run(["diff", "-rq", f"{s.path}/tree", f"{self.data}/tree"],
                              capture_output=True, text=True)
        log(f"backing identical after flush: {same.returncode == 0} {same.stdout[-300:]}")
        self.record("backing identical after flush", "1 = yes", "higher", s.name,
                    1.0 if same.returncode == 0 and r.returncode == 0 else 0.0)

    def after_remount(self, s):
        """The metadata walk and git status again, on the remounted cache (the metadata
        cache starts warm where it is persisted)."""
        p = s.path
        drop_caches()
        t, _ = self.timed(f"find {shlex.quote(p)}/tree -print0 | xargs -0 stat > /dev/null",
                          shell=True)
        self.record("find + stat after remount", "s", "lower", s.name, t)
        drop_caches()
        t, _ = self.timed(["git", "-C", f"{p}/tree", "status", "--porcelain"])
        self.record("git status after remount", "s", "lower", s.name, t)

    def devbox(self):
        """A dev box: a real source tree with git history (a clone of this repository), on
        an unthrottled backing (the local disk) through bcachefs-lite in each coherence
        mode, against the same tree on the local disk itself. Each step cold (kernel caches
        dropped, first run) and warm; then a cargo build (offline) of the tree."""
        cfg = self.cfg
        log("== dev-box workload (unthrottled backing vs local disk)")
        base = os.path.join(self.work, "devbox")
        os.makedirs(base)
        src = os.path.join(base, "src")
        r = subprocess.run(["git", "clone", "-q", "--no-hardlinks", ROOT, src],
                           capture_output=True, text=True)
        if r.returncode != 0:
            log(f"dev-box: no clone of {ROOT}: {r.stderr[-300:]}")
            return
        steps = [
            ("git status", "git status --porcelain >/dev/null"),
            ("grep -r", "grep -r -c NEEDLE_TODO . >/dev/null || true"),
            ("find", "find . -printf '%s %m\n' >/dev/null"),
            ("tar", "tar cf - . | wc -c >/dev/null"),
        ]
        backing = os.path.join(base, "backing")
        systems = [
            ("ssd", None),
            ("bcachefs-lite", Bcl(self, "devbox-bcl", backing=backing)),
            ("bcachefs-lite-excl", Bcl(self, "devbox-bcl-excl", extra="coherence=exclusive",
                                       backing=backing)),
        ]
        for label, s in systems:
            local = os.path.join(base, "local")
            shutil.rmtree(local, ignore_errors=True)
            shutil.rmtree(backing, ignore_errors=True)
            target = backing if s is not None else local
            sh(["cp", "-a", src, target])
            if s is not None:
                if not self.bcl_cache:
                    continue
                s.start()
                root = s.path
            else:
                root = local
            for step, cmd in steps:
                for phase in ("cold", "warm"):
                    if phase == "cold":
                        drop_caches()
                    t = self.timed_plain(cmd, root)
                    self.record(f"dev-box {step} {phase}", "s", "lower", label, t)
            if cfg["devbox_build"]:
                build = "CARGO_TARGET_DIR=target cargo build --offline -q"
                try:
                    t = self.timed_plain(build, root)
                    self.record("dev-box cargo build", "s", "lower", label, t)
                except RuntimeError as e:
                    log(f"dev-box cargo build failed: {str(e)[:300]}")
                    self.record("dev-box cargo build", "s", "lower", label, None)
            if s is not None:
                s.stop()
        shutil.rmtree(base, ignore_errors=True)

    def timed_plain(self, cmd, cwd):
        """A shell command outside the throttle (the dev-box backing is unthrottled)."""
        return self.timed(cmd, cwd=cwd, shell=True, throttled=False, timeout=3600)[0]

    def zipf(self, s, label):
        cfg = self.cfg
        drop_caches()
        before = s.stats()
        io_size = int(cfg["zipf_size"] * cfg["zipf_passes"])
        t0 = time.monotonic()
        job = self.fio("zipf", f"{s.path}/big/zipf.bin",
                       ["--rw=randread", f"--bs={cfg['zipf_bs']}",
                        f"--random_distribution=zipf:{cfg['zipf_theta']}",
                        f"--io_size={io_size}", "--norandommap"])
        t = time.monotonic() - t0
        after = s.stats()
        self.record("zipf read", "MB/s", "higher", label, job["io_bytes"] / t / 1e6)
        ratio = None
        if before is not None and after is not None:
            try:
                h = after["cache_hits"] - before["cache_hits"]
                m = after["cache_misses"] - before["cache_misses"]
                ratio = h / (h + m) if h + m else None
            except (KeyError, TypeError):
                ratio = None
        self.record("zipf hit ratio", "ratio", "higher", label, ratio)

    def zipf_scan(self, s, label):
        """Zipf with a scan (issue 12): one Zipf pass warms the hot set, another process
        streams the sequential file (4x the Zipf cache in the full bench) through the mount,
        then a second Zipf pass; its hit ratio (requests, from stats) is recorded."""
        cfg = self.cfg
        zipf = ["--rw=randread", f"--bs={cfg['zipf_bs']}",
                f"--random_distribution=zipf:{cfg['zipf_theta']}",
                f"--io_size={cfg['zipf_size']}", "--norandommap"]
        drop_caches()
        self.fio("zipf-warm", f"{s.path}/big/zipf.bin", zipf)
        drop_caches()
        self.timed(["dd", f"if={s.path}/big/seq.bin", "of=/dev/null", "bs=1M"])
        time.sleep(1)  # fills land after the replies
        drop_caches()
        before = s.stats()
        self.fio("zipf-after-scan", f"{s.path}/big/zipf.bin", zipf)
        after = s.stats()
        ratio = None
        if before is not None and after is not None:
            try:
                h = after["cache_hits"] - before["cache_hits"]
                m = after["cache_misses"] - before["cache_misses"]
                ratio = h / (h + m) if h + m else None
            except (KeyError, TypeError):
                ratio = None
        self.record("zipf+scan hit ratio", "ratio", "higher", label, ratio)

    def run(self):
        cfg = self.cfg
        self.started = datetime.datetime.now()
        systems = {
            "backing": lambda: Direct(self, "backing", self.data),
            "ssd": lambda: Direct(self, "ssd", self.ssd_data),
            "passthrough": lambda: Bindfs(self, "passthrough"),
            "rclone": lambda: Rclone(self, "rclone"),
            "bcachefs-lite": lambda: Bcl(self, "bcachefs-lite"),
            # the metadata cache trusted until changed through the mount
            "bcachefs-lite-excl": lambda: Bcl(self, "bcachefs-lite-excl",
                                              extra="coherence=exclusive"),
            # writes land in the cache, written back in the background
            "bcachefs-lite-wb": lambda: Bcl(self, "bcachefs-lite-wb",
                                            extra="cache_mode=writeback"),
        }
        for name in cfg["systems"]:
            s = systems[name]()
            log(f"== {name}")
            s.start()
            self.run_workloads(s)
            if s.fuse:
                rss = s.stop()
                self.record("daemon peak RSS", "MiB", "lower", name, rss)
                # mount time with the cache as the workloads left it (full)
                mt = s.start(fresh=False)
                self.record("mount time, full cache", "s", "lower", name, mt)
                if name.startswith("bcachefs-lite"):
                    self.after_remount(s)
                s.stop()
        if cfg["devbox"]:
            self.devbox()
        # Zipf hit-ratio runs: working set larger than the cache
        log(f"== zipf: {cfg['zipf_size'] // MiB} MiB working set, cache "
            f"{cfg['zipf_cache'] // MiB} MiB, theta {cfg['zipf_theta']}")
        for name in cfg["zipf_systems"]:
            if name == "bcachefs-lite" and self.bcl_cache:
                for pol in cfg["policies"]:
                    s = Bcl(self, "bcachefs-lite")
                    s.start(cache_size=cfg["zipf_cache"], policy=pol)
                    self.zipf(s, f"bcachefs-lite {pol}")
                    s.stop()
                continue
            s = systems[name]()
            if s.fuse:
                s.start(cache_size=cfg["zipf_cache"])
            self.zipf(s, name)
            s.stop()
        # Zipf + a scan of the sequential file, per policy: "default" is the default mount
        # (lru with streams on probation); the others run with probation off (plain policy)
        if self.bcl_cache and "bcachefs-lite" in cfg["zipf_systems"]:
            log(f"== zipf + scan of {cfg['seq_size'] // MiB} MiB, cache "
                f"{cfg['zipf_cache'] // MiB} MiB")
            for pol in cfg["scan_policies"]:
                s = Bcl(self, "bcachefs-lite")
                if pol == "default":
                    s.start(cache_size=cfg["zipf_cache"])
                    label = "bcachefs-lite default (lru+probation)"
                else:
                    s.start(cache_size=cfg["zipf_cache"], policy=pol, extra="probation_after=0")
                    label = f"bcachefs-lite {pol} (no probation)"
                self.zipf_scan(s, label)
                s.stop()
        self.finished = datetime.datetime.now()

    # ---- output

    def versions(self):
        def first(cmd):
            r = subprocess.run(cmd, capture_output=True, text=True)
            return (r.stdout or r.stderr).strip().splitlines()[0] if r.returncode == 0 else "?"
        commit = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False).stdout
        return {
            "bcachefs-lite": f"{commit.strip()} ({self.bcl_mode})",
            "rclone": first(["rclone", "version"]),
            "bindfs": first(["bindfs", "--version"]),
            "fio": first(["fio", "--version"]),
            "kernel": platform.release(),
        }

    def write_results(self):
        cfg = self.cfg
        out = cfg["results"]
        os.makedirs(out, exist_ok=True)
        vers = self.versions()
        c = cfg
        meta = {
            "mode": "quick" if self.quick else "full",
            "date": self.started.strftime("%Y-%m-%d %H:%M"),
            "duration_s": round((self.finished - self.started).total_seconds()),
            "throttle": self.throttle.describe(),
            "throttle_short": self.throttle.short(),
            "versions": vers,
            "sizes": {k: c[k] for k in ("seq_size", "rand_size", "tree_files", "write_size",
                                        "cache_size", "zipf_size", "zipf_cache", "fio_runtime")},
            "zipf_theta": c["zipf_theta"],
            "bcachefs_lite_mode": self.bcl_mode,
        }
        with open(os.path.join(out, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        with open(os.path.join(out, "results.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["workload", "unit", "better", "system", "value"])
            for r in self.rows:
                w.writerow([r["workload"], r["unit"], r["better"], r["system"],
                            "" if r["value"] is None else f"{r['value']:.6g}"])
        md = self.markdown(meta)
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(md)
        try:
            plot(self.rows, out, meta)
        except Exception as e:
            log(f"plots failed: {e}")
        log(f"results in {out}")
        print(md)

    def markdown(self, meta):
        order, t, unit, better = table_from_rows(self.rows)
        systems = []
        for r in self.rows:
            if r["system"] not in systems:
                systems.append(r["system"])
        main = [s for s in systems if s in SYSTEMS]
        zipf_sys = [s for s in systems if s not in SYSTEMS]
        L = []
        L.append(f"# bcachefs-lite benchmark ({meta['mode']}, {meta['date']})\n")
        L.append(f"- Slow backing store: ext4 image on a loop device, throttle "
                 f"**{meta['throttle']}**")
        L.append(f"- bcachefs-lite: **{meta['bcachefs_lite_mode']}**")
        sz = meta["sizes"]
        L.append(f"- Sizes: sequential file {sz['seq_size'] // MiB} MiB, random-read file "
                 f"{sz['rand_size'] // MiB} MiB (fio 4 KiB, 2 jobs, O_DIRECT, "
                 f"{sz['fio_runtime']} s), tree {sz['tree_files']} files, write "
                 f"{sz['write_size'] // MiB} MiB, cache {sz['cache_size'] // MiB} MiB; Zipf "
                 f"(theta {meta['zipf_theta']}) over {sz['zipf_size'] // MiB} MiB with a "
                 f"{sz['zipf_cache'] // MiB} MiB cache")
        L.append("- Versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()))
        L.append(f"- One run of {meta['duration_s']} s on a shared 2-core machine; page cache "
                 "dropped before every phase. Compare ratios within this run, not absolute "
                 "figures across runs.")
        L.append("- Ratio columns: bcachefs-lite's figure divided by the other system's "
                 "(for MB/s and IOPS above 1 is better, for seconds and MiB below 1 is "
                 "better); `wb/ssd` and `wb/wt`: bcachefs-lite-wb (cache_mode=writeback) "
                 "over ssd and over bcachefs-lite (writethrough).\n")
        hdr = ["workload", "unit"] + main + ["bcl/ssd", "bcl/backing", "bcl/rclone"]
        wb = "bcachefs-lite-wb" in main
        if wb:
            hdr += ["wb/ssd", "wb/wt"]
        L.append("| " + " | ".join(hdr) + " |")
        L.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(hdr) - 2)) + "|")
        for w in order:
            row = t[w]
            if w.startswith("zipf") or not any(s in row for s in main):
                continue
            arrow = "↑" if better[w] == "higher" else "↓"
            cells = [w, f"{unit[w]} {arrow}"] + [fmt(row.get(s)) for s in main]
            bcl = row.get("bcachefs-lite")
            for other in ("ssd", "backing", "rclone"):
                cells.append(fmt_ratio(bcl, row.get(other)))
            if wb:
                cells.append(fmt_ratio(row.get("bcachefs-lite-wb"), row.get("ssd")))
                cells.append(fmt_ratio(row.get("bcachefs-lite-wb"), bcl))
            L.append("| " + " | ".join(cells) + " |")
        if zipf_sys or "zipf read" in t:
            L.append("\n### Zipf reads, working set larger than the cache\n")
            L.append("| system | MB/s | hit ratio |")
            L.append("|---|---:|---:|")
            for s in systems:
                if "zipf read" in t and s in t["zipf read"]:
                    L.append(f"| {s} | {fmt(t['zipf read'].get(s))} | "
                             f"{fmt(t.get('zipf hit ratio', {}).get(s))} |")
            L.append("\nHit ratios come from `bcachefs-lite stats --json`; rclone and the "
                     "others expose none (n/a).")
        if "zipf+scan hit ratio" in t:
            L.append("\n### Zipf after a scan (hot set, then another process streams the "
                     "sequential file, then the hot set again)\n")
            L.append("| policy | hit ratio after the scan |")
            L.append("|---|---:|")
            for s, v in t["zipf+scan hit ratio"].items():
                L.append(f"| {s} | {fmt(v)} |")
            L.append("\n`make sim` replays the same kind of trace through the real allocator "
                     "beside Belady's OPT (bench/results/sim.md).")
        far = furthest_from(self.rows, "ssd")
        if far:
            L.append("\n### Where bcachefs-lite is furthest from the ssd limit\n")
            for w, f in far[:3]:
                L.append(f"- {w}: {f:.2f}× the speed of ssd")
        L.append("\n![relative to ssd](relative.png)\n\n![all figures](workloads.png)\n")
        return "\n".join(L) + "\n"


def table_from_rows(rows):
    order, t, unit, better = [], {}, {}, {}
    for r in rows:
        w = r["workload"]
        if w not in t:
            order.append(w)
            t[w] = {}
        t[w][r["system"]] = r["value"]
        unit[w], better[w] = r["unit"], r["better"]
    return order, t, unit, better


def speed(value, other, better):
    """How many times as fast as `other` (>1 faster), whatever the unit's direction."""
    if value in (None, 0) or other in (None, 0):
        return None
    return value / other if better == "higher" else other / value


def furthest_from(rows, ref):
    order, t, unit, better = table_from_rows(rows)
    out = []
    for w in order:
        if unit[w] in ("MiB", "ratio") or w.startswith("mount time") or w.startswith("zipf"):
            continue
        f = speed(t[w].get("bcachefs-lite"), t[w].get(ref), better[w])
        if f is not None:
            out.append((w, f))
    return sorted(out, key=lambda x: x[1])


def fmt(v):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(a, b):
    if a is None or b in (None, 0):
        return "n/a"
    return f"{a / b:.2f}"


COLORS = {"backing": "#8c8c8c", "ssd": "#2ca02c", "passthrough": "#9467bd",
          "rclone": "#ff7f0e", "bcachefs-lite": "#1f77b4",
          "bcachefs-lite-excl": "#17becf", "bcachefs-lite-wb": "#d62728"}


def plot(rows, out, meta):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order, t, unit, better = table_from_rows(rows)
    bcl_mode = meta["bcachefs_lite_mode"].split(" (")[0]
    main = [w for w in order if any(s in t[w] for s in SYSTEMS)]
    # every figure: one panel per workload, a bar per system
    n = len(main)
    cols = 4
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(13, 2.6 * nrows), squeeze=False)
    for ax, w in zip(axes.flat, main):
        systems = [s for s in t[w] if t[w][s] is not None]
        vals = [t[w][s] for s in systems]
        if not systems:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.bar(range(len(systems)), vals,
               color=[COLORS.get(s.split(" ")[0], "#1f77b4") for s in systems])
        ax.set_xticks(range(len(systems)))
        ax.set_xticklabels([s.replace("bcachefs-lite", "bcl") for s in systems], rotation=30,
                           ha="right", fontsize=7)
        arrow = "higher is better" if better[w] == "higher" else "lower is better"
        ax.set_title(f"{w}\n{unit[w]}, {arrow}", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"bcachefs-lite bench ({meta['mode']}, {meta['date']}); backing throttle: "
                 f"{meta['throttle_short']}; bcachefs-lite: {bcl_mode}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "workloads.png"), dpi=60)
    plt.close(fig)

    # speed relative to ssd, log scale: the picture for the README
    ws = [w for w in main if unit[w] not in ("MiB", "ratio") and not w.startswith("mount")
          and t[w].get("ssd")]
    systems = [s for s in SYSTEMS if s != "ssd"]
    fig, ax = plt.subplots(figsize=(11, 4.6))
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        vals = [speed(t[w].get(s), t[w].get("ssd"), better[w]) or 0 for w in ws]
        ax.bar([x + i * width for x in range(len(ws))], vals, width, label=s,
               color=COLORS.get(s, "#1f77b4"))
    ax.axhline(1.0, color="#2ca02c", lw=1, ls="--", label="ssd = 1")
    ax.set_yscale("log")
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(ws))])
    ax.set_xticklabels(ws, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("speed relative to ssd (log)")
    ax.set_title(f"Speed relative to the local disk (higher is better); backing throttle: "
                 f"{meta['throttle_short']}; bcachefs-lite: {bcl_mode}",
                 fontsize=9)
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.32))
    fig.tight_layout()
    fig.savefig(os.path.join(out, "relative.png"), dpi=70)
    plt.close(fig)


# --------------------------------------------------------------------------------------------


def replot(bench, out):
    with open(os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    with open(os.path.join(out, "results.csv")) as f:
        for r in csv.DictReader(f):
            r["value"] = float(r["value"]) if r["value"] else None
            bench.rows.append(r)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(bench.markdown(meta))
    plot(bench.rows, out, meta)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2-3 minute subset, smaller sizes")
    ap.add_argument("--replot", metavar="DIR",
                    help="only rewrite results.md and the plots from DIR/results.csv")
    args = ap.parse_args()
    cfg = config(args.quick)
    bench = Bench(cfg, args.quick)
    if args.replot:
        replot(bench, args.replot)
        return

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # explicitly, also for SIGINT: a shell starts background jobs with SIGINT ignored
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    ok = False
    try:
        bench.setup()
        bench.run()
        bench.write_results()
        ok = True
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); tearing down")
    except Exception as e:
        log(f"FAILED: {e}")
        import traceback
        traceback.print_exc()
    finally:
        # ignore further Ctrl-C while tearing down
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.td.run()
        log("torn down")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
