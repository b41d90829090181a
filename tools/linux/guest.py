"""The Linux guest of ``make linux``: Debian's kernel and busybox, a small initramfs whose init
script exercises ``/dev/vda``, the test plan both sides agree on, and the QEMU command line.

Everything comes from Debian packages (``qemu-system-x86``, ``busybox-static``, ``cpio``, the
kernel through ``apt-get download linux-image-amd64`` and its ``linux-image-*`` dependency,
unpacked with ``dpkg-deb -x``) and is cached under ``build/linux/``.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from models import spec

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "linux"
QEMU = "qemu-system-x86_64"
QBOOT = Path("/usr/share/qemu/qboot.rom")
BUSYBOX = Path("/bin/busybox")
APT_PACKAGES = ("qemu-system-x86", "busybox-static", "cpio")
# Load order of the virtio modules of Debian's 6.1 kernel (each .ko's "depends=").
MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
           "virtio_pci", "virtio_blk")
# IOVA mode's filesystem: ext2 through the ext4 driver (CONFIG_EXT4_USE_FOR_EXT2), modules in
# load order (ext4's depends= is jbd2, mbcache, crc16; crc32c for checksummed metadata).
FS_MODULES = ("crc16", "mbcache", "jbd2", "crc32c_generic", "ext4")
ALL_MODULES = MODULES + FS_MODULES
MODULE_DIRS = {"virtio_blk": "drivers/block", "crc16": "lib", "mbcache": "fs", "jbd2": "fs/jbd2",
               "crc32c_generic": "crypto", "ext4": "fs/ext4"}  # the others: drivers/virtio
MEM_MB = 256
# Kernel messages that mean the disk misbehaved: failed requests, a device the driver gave up
# on, a request stuck long enough for the hung-task detector (virtio_blk in 6.1 has no timeout
# handler: blk-mq re-arms the 30 s timer silently, so a slow request shows only there).
DMESG_ERRORS = ("I/O error|blk_update_request|critical medium|virtio_blk.*(err|fail)"
                "|blocked for more than|hung_task|DMAR.*[Ff]ault|EXT4-fs error")


class SetupError(RuntimeError):
    """Something the guest needs is missing; the message says how to get it."""


# --- the plan the guest and the host agree on -----------------------------------------------------

@dataclass(frozen=True)
class IoCheck:
    """One O_DIRECT write of ``size`` bytes at byte ``offset`` of /dev/vda, then a read-back."""

    size: int
    offset: int

    @property
    def name(self) -> str:
        return f"{self.size // 1024}k" if self.size >= 1024 else f"{self.size}"


@dataclass(frozen=True)
class FsFile:
    """One file of IOVA mode's filesystem check: ``path`` below the mount point."""

    path: str
    size: int

    def data(self) -> bytes:
        out = b"".join(hashlib.blake2b(f"vhb-fs:{self.path}:{j}".encode()).digest()
                       for j in range((self.size + 63) // 64))
        return out[:self.size]


# A tree of mixed sizes: empty, below a sector, around a page, 64 KiB, a few hundred KiB, many
# small ones in one directory, and deep paths (about 600 KiB in all).
FS_TREE = (
    FsFile("empty", 0), FsFile("one", 1), FsFile("a/small-100", 100),
    FsFile("a/sector-512", 512), FsFile("a/b/odd-1000", 1000), FsFile("a/b/page-4095", 4095),
    FsFile("a/b/page-4096", 4096), FsFile("a/b/page-4097", 4097), FsFile("c/d/12345", 12345),
    FsFile("c/d/e/64k", 65536), FsFile("c/d/e/f/100000", 100000),
    FsFile("c/d/e/f/g/h/deep-7777", 7777), FsFile("big-300000", 300000),
    *(FsFile(f"many/n{i:02d}", 500 + 300 * i) for i in range(24)),
)


@dataclass(frozen=True)
class GuestPlan:
    """What the init script does and what the host expects from it.

    Both modes use the same 4 MiB disk and the same checks (IOVA mode adds the IOMMU group's):
    the raw checks in the first 2 MiB (``raw_bytes``), a filesystem in a partition after them.
    Guest I/O limits (``docs/linux.md``): the device offers SEG_MAX 128 and SIZE_MAX 64 KiB and
    the guest uses indirect tables, so ``max_sectors_kb`` = 512 lets a request carry 128 page
    segments (512 KiB); the queue depth is virtio_blk's own (the ring size with indirect
    descriptors). The device is in order, so a request waits for what was queued before it:
    the workload never queues more than about 1 MiB at once (a few 10 s of device time in the
    simulation, below the hung-task detector's 120 s).
    """

    disk_bytes: int = 4 * 1024 * 1024
    mode: str = "gpa"  # "iova": behind the guest's IOMMU
    io: tuple[IoCheck, ...] = (
        IoCheck(512, 512),  # one sector, not at the start of a page
        IoCheck(4096, 6656),  # one page's worth, not page aligned on the disk (sector 13)
        IoCheck(65536, 64 * 1024),
        IoCheck(256 * 1024, 128 * 1024),
        IoCheck(1024 * 1024, 1024 * 1024),  # two requests of 512 KiB (128 segments each)
    )
    untouched: tuple[int, int] = (520 * 1024, 8192)  # read, never written: the initial pattern
    discard: tuple[int, int] = (384 * 1024, 128 * 1024)  # blkdiscard: VIRTIO_BLK_T_DISCARD
    zeroout: tuple[int, int] = (528 * 1024, 128 * 1024)  # BLKZEROOUT: T_WRITE_ZEROES
    # The notification workload (run in both boots): ``scatter_pages`` buffered page writes at
    # every other page from ``scatter_at``, written back by one fsync (Linux sends them one at
    # a time), then ``readers`` processes reading ``reads_each`` pages each with
    # O_DIRECT at once. Bracketed by two 512-byte O_DIRECT reads at ``mark_sectors`` (the host
    # counts kicks and interrupts between their completions).
    scatter_at: int = 656 * 1024
    scatter_pages: int = 40
    readers: int = 48  # more than the 32 in flight wanted: some finish before the last starts
    reads_each: int = 3
    mark_sectors: tuple[int, int] = (40, 41)
    max_sectors_kb: int = 512
    min_queue_depth: int = 32
    # QEMU's vhost-user-blk queue-size (the ring's entries): QueueNumMax. SEG_MAX (128) comes
    # from QueueNumMax, not from the ring the driver picks, and Linux does not cap an indirect
    # table at the ring's size: with 128 entries a request of 128 segments has a 130-entry
    # table, which the device rejects as longer than the queue (cause 7).
    queue_size: int = 256
    disk_timeout_s: int = 30  # waiting for /dev/vda to appear
    raw_bytes: int = 2 * 1024 * 1024  # the raw checks' part; the partition follows
    fs_tree: tuple[FsFile, ...] = FS_TREE

    @classmethod
    def for_mode(cls, mode: str) -> GuestPlan:
        """GPA and IOVA mode: the raw checks, then an MBR partition from 2 MiB to the end of
        the 4 MiB disk with an ext2 filesystem on it (IOVA mode also checks the IOMMU group)."""
        if mode in ("gpa", "iova"):
            return cls(mode=mode)
        raise ValueError(f"mode must be 'gpa' or 'iova', not {mode!r}")

    @property
    def fs(self) -> bool:
        return True

    @property
    def scatter_span(self) -> tuple[int, int]:
        """Byte range the scattered writes and the parallel readers cover."""
        return self.scatter_at, 2 * self.scatter_pages * 4096

    def scatter_data(self) -> bytes:
        """The ``scatter_pages`` pages the notification workload writes (a distinct pattern)."""
        return b"".join(hashlib.blake2b(f"vhb-scatter:{j}".encode()).digest()
                        for j in range(self.scatter_pages * 4096 // 64))

    def notify_requests(self) -> int:
        """Requests the workload makes: the scattered writes and the readers' reads."""
        return self.scatter_pages + self.readers * self.reads_each

    def __post_init__(self) -> None:
        spans = sorted([(c.offset, c.offset + c.size) for c in self.io]
                       + [(o, o + n) for o, n in (self.discard, self.zeroout, self.scatter_span)]
                       + [(s * spec.SECTOR_SIZE, (s + 1) * spec.SECTOR_SIZE)
                          for s in self.mark_sectors])
        for (_, end), (start, _) in itertools.pairwise(spans):
            if start < end:
                raise ValueError("the plan's I/O checks overlap")
        u0, ulen = self.untouched
        if any(u0 < e and s < u0 + ulen for s, e in spans) or spans[-1][1] > self.raw_bytes \
                or spans[0][0] < spec.SECTOR_SIZE or self.raw_bytes > self.disk_bytes:
            raise ValueError("the plan's ranges do not fit the disk")
        if self.fs and self.disk_bytes - self.raw_bytes < 1024 * 1024:
            raise ValueError("the filesystem needs at least 1 MiB after the raw checks")

    @property
    def checks(self) -> list[str]:
        """The result lines the init script prints, in order."""
        names = ["modules", "disk", "capacity", "serial", "read-initial"]
        if self.mode == "iova":
            names.append("iommu")
        names.append("queue")
        for c in self.io:
            names += [f"write-{c.name}", f"verify-{c.name}"]
        names += ["discard", "zeroout", "flush"]
        names += self.notify_checks
        if self.fs:
            names += ["fs-modules", "partition", "mkfs", "mount", "write-files", "umount",
                      "remount", "verify-files", "file-count"]
        return [*names, "io-errors"]

    @property
    def notify_checks(self) -> list[str]:
        """The notification workload's result lines (also the second boot's)."""
        return ["notify", "notify-verify"]

    @property
    def second_boot_checks(self) -> list[str]:
        """The second boot (``vhb.only=notify``): the notification workload only."""
        return ["modules", "disk", "queue", *self.notify_checks, "io-errors"]

    @property
    def serial(self) -> str:
        return spec.DEVICE_SERIAL.rstrip(b"\0").decode()

    def expected_disk(self) -> bytes:
        """The RAM disk's first ``raw_bytes`` after the run: the initial pattern with every
        write of the raw checks applied (and the partition table in IOVA mode). What follows
        is the filesystem, which the guest verifies itself."""
        disk = bytearray(spec.ramdisk_init(self.disk_bytes)[:self.raw_bytes])
        for c in self.io:
            disk[c.offset:c.offset + c.size] = pattern(c.size)
        for off, n in (self.discard, self.zeroout):  # DISCARD zeroes too (the README says so)
            disk[off:off + n] = bytes(n)
        data = self.scatter_data()
        for j in range(self.scatter_pages):
            off = self.scatter_at + 2 * j * 4096
            disk[off:off + 4096] = data[j * 4096:(j + 1) * 4096]
        if self.fs:
            disk[:spec.SECTOR_SIZE] = self.mbr()
        return bytes(disk)

    def mbr(self) -> bytes:
        """A DOS partition table with one Linux partition from ``raw_bytes`` to the end."""
        start = self.raw_bytes // spec.SECTOR_SIZE
        count = (self.disk_bytes - self.raw_bytes) // spec.SECTOR_SIZE
        entry = bytes([0, 0xFE, 0xFF, 0xFF, 0x83, 0xFE, 0xFF, 0xFF]) + start.to_bytes(4, "little") \
            + count.to_bytes(4, "little")
        return bytes(440) + b"VHB1" + bytes(2) + entry + bytes(48) + b"\x55\xaa"

    @property
    def partition_sectors(self) -> int:
        return (self.disk_bytes - self.raw_bytes) // spec.SECTOR_SIZE

    def fs_manifest(self) -> str:
        """``md5sum -c`` input for the tree, paths relative to the mount point."""
        return "".join(f"{md5(f.data())}  ./{f.path}\n" for f in self.fs_tree)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def pattern(size: int) -> bytes:
    """The data of the write of ``size`` bytes: a keystream that differs per size and per
    64-byte block, so a block landing in the wrong place shows."""
    return b"".join(hashlib.blake2b(f"vhb-linux:{size}:{j}".encode()).digest()
                    for j in range(size // 64))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- packages and kernel --------------------------------------------------------------------------

def missing_tools() -> list[str]:
    """What is missing to boot the guest (empty when everything is installed)."""
    out = []
    if shutil.which(QEMU) is None:
        out.append(f"{QEMU} (Debian package qemu-system-x86)")
    if not QBOOT.exists():
        out.append(f"{QBOOT} (Debian package qemu-system-x86)")
    if not BUSYBOX.exists():
        out.append(f"{BUSYBOX} (Debian package busybox-static)")
    if shutil.which("cpio") is None:
        out.append("cpio (Debian package cpio)")
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            out.append(f"{tool} (a Debian system)")
    return out


def check_tools() -> None:
    missing = missing_tools()
    if missing:
        raise SetupError("missing: " + "; ".join(missing) + ". Install them with: sudo apt-get "
                         "install --no-install-recommends " + " ".join(APT_PACKAGES))


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SetupError(f"{' '.join(cmd)} failed ({res.returncode}): "
                         f"{(res.stderr or res.stdout).strip()[-2000:]}")
    return res.stdout


def _apt_download(name: str, dest: Path) -> Path:
    before = set(dest.glob("*.deb"))
    try:
        _run(["apt-get", "download", name], cwd=dest)
    except SetupError as exc:
        if not (os.environ.get("CI") or os.geteuid() == 0):
            raise SetupError(f"{exc}\n(If apt cannot find {name}, run 'sudo apt-get update' "
                             "first.)") from None
        _run(["apt-get", "update", "-qq"])  # a machine whose package lists were never fetched
        _run(["apt-get", "download", name], cwd=dest)
    new = sorted(set(dest.glob("*.deb")) - before) or sorted(dest.glob(f"{name}_*.deb"))
    if not new:
        raise SetupError(f"apt-get download {name} produced no .deb in {dest}")
    return new[-1]


@dataclass
class Kernel:
    version: str
    vmlinuz: Path
    modules: dict[str, Path] = field(default_factory=dict)


def ensure_kernel(build: Path = BUILD) -> Kernel:
    """Debian's ``linux-image-amd64`` dependency, unpacked once into ``build/linux/kernel``."""
    kdir = build / "kernel"
    stamp = kdir / "kernel.json"
    if stamp.exists():
        info = json.loads(stamp.read_text())
        k = Kernel(info["version"], kdir / "vmlinuz",
                   {m: kdir / f"{m}.ko" for m in ALL_MODULES})
        if k.vmlinuz.exists() and all(p.exists() for p in k.modules.values()):
            return k
    kdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=build) as tmp:
        t = Path(tmp)
        meta = _apt_download("linux-image-amd64", t)
        depends = _run(["dpkg-deb", "-f", str(meta), "Depends"])
        image = next((d.strip().split()[0] for d in depends.split(",")
                      if d.strip().startswith("linux-image-")), None)
        if image is None:
            raise SetupError(f"linux-image-amd64 depends on no linux-image-* ({depends!r})")
        deb = _apt_download(image, t)
        _run(["dpkg-deb", "-x", str(deb), str(t / "root")])
        vmlinuz = sorted((t / "root" / "boot").glob("vmlinuz-*"))
        moddirs = sorted((t / "root" / "lib" / "modules").iterdir())
        if not vmlinuz or not moddirs:
            raise SetupError(f"{deb.name} holds no kernel or no modules")
        version = moddirs[-1].name
        shutil.copy(vmlinuz[-1], kdir / "vmlinuz")
        for m in ALL_MODULES:
            sub = MODULE_DIRS.get(m, "drivers/virtio")
            src = moddirs[-1] / "kernel" / sub / f"{m}.ko"
            if not src.exists():
                xz = src.with_suffix(".ko.xz")
                if not xz.exists():
                    raise SetupError(f"{version} has no module {m} ({src})")
                _run(["xz", "-dk", str(xz)])
            shutil.copy(src, kdir / f"{m}.ko")
    stamp.write_text(json.dumps({"version": version, "package": image}))
    return Kernel(version, kdir / "vmlinuz", {m: kdir / f"{m}.ko" for m in ALL_MODULES})


# --- initramfs ------------------------------------------------------------------------------------

def init_script(plan: GuestPlan) -> str:
    """The guest's /init: one ``VHB RESULT <check> PASS|FAIL <detail>`` line per check."""
    sectors = plan.disk_bytes // spec.SECTOR_SIZE
    u0, ulen = plan.untouched
    initial = md5(spec.ramdisk_init(plan.disk_bytes)[u0:u0 + ulen])
    lines = [
        "#!/bin/busybox sh",
        "/bin/busybox mkdir -p /proc /sys /dev /tmp",
        "/bin/busybox --install -s /bin",
        "export PATH=/bin",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t devtmpfs devtmpfs /dev",
        "echo 'VHB START'",
        "result() { echo \"VHB RESULT $1 $2 $3\"; }",
        "ok=PASS",
        f"for m in {' '.join(MODULES[:-1])}; do",
        "  insmod /lib/modules/$m.ko || ok=FAIL",
        "done",
        # No queue_depth: virtio_blk takes the ring size (indirect descriptors negotiated).
        "insmod /lib/modules/virtio_blk.ko || ok=FAIL",
        "result modules $ok",
        "n=0",
        f"while [ ! -b /dev/vda ] && [ $n -lt {plan.disk_timeout_s * 10} ]; do "
        "usleep 100000; n=$((n+1)); done",
        "if [ -b /dev/vda ]; then result disk PASS; else result disk FAIL 'no /dev/vda';"
        " echo 'VHB DONE'; poweroff -f; fi",
        f"echo {plan.max_sectors_kb} > /sys/block/vda/queue/max_sectors_kb",
        *queue_script(plan),
        "irqs() { awk '/virtio.*req/ {print $2}' /proc/interrupts; }",
        "if grep -q vhb.only=notify /proc/cmdline; then",
        *("  " + x for x in notify_script(plan)),
        *("  " + x for x in _tail()),
        "fi",
        "v=$(cat /sys/block/vda/size)",
        f"[ \"$v\" = {sectors} ] && result capacity PASS $v || result capacity FAIL \"$v\"",
        "v=$(cat /sys/block/vda/serial)",
        f"[ \"$v\" = '{plan.serial}' ] && result serial PASS \"$v\""
        " || result serial FAIL \"$v\"",
        f"dd if=/dev/vda of=/tmp/r bs={ulen} count={ulen} skip={u0}"
        " iflag=direct,skip_bytes,count_bytes 2>/tmp/err",
        "v=$(md5sum /tmp/r | cut -d' ' -f1)",
        f"[ \"$v\" = {initial} ] && result read-initial PASS $v"
        " || result read-initial FAIL \"$v $(cat /tmp/err)\"",
    ]
    if plan.mode == "iova":
        # The disk sits behind the IOMMU in a translating, strict domain: every unmap is an
        # invalidation QEMU passes on (DMA-FQ would be lazy, identity would not translate).
        lines += [
            "g=$(readlink /sys/block/vda/device/../iommu_group) && "
            "t=$(cat /sys/kernel/iommu_groups/${g##*/}/type)",
            "[ \"$t\" = DMA ] && result iommu PASS \"group ${g##*/} type $t\""
            " || result iommu FAIL \"group '$g' type '$t'\"",
        ]
    for c in plan.io:
        # busybox dd takes its buffer from malloc below a page (not aligned enough for
        # O_DIRECT, and it then quietly retries without O_DIRECT), from mmap above: a block
        # of at least a page with count_bytes gives an aligned buffer for any size.
        bs = max(c.size, 4096)
        lines += [
            f"if dd if=/data/p{c.size} of=/dev/vda bs={bs} count={c.size} iflag=count_bytes"
            f" seek={c.offset} oflag=direct,seek_bytes conv=notrunc 2>/tmp/err;"
            f" then result write-{c.name} PASS; else result write-{c.name} FAIL"
            " \"$(tail -n1 /tmp/err)\"; fi",
            "rm -f /tmp/r",
            f"dd if=/dev/vda of=/tmp/r bs={bs} count={c.size} skip={c.offset}"
            " iflag=direct,skip_bytes,count_bytes 2>/tmp/err",
            "v=$(md5sum /tmp/r | cut -d' ' -f1)",
            f"[ \"$v\" = {md5(pattern(c.size))} ] && result verify-{c.name} PASS $v"
            f" || result verify-{c.name} FAIL \"$v $(tail -n1 /tmp/err)\"",
        ]
    zeros = {n: md5(bytes(n)) for _, n in (plan.discard, plan.zeroout)}
    d0, dn = plan.discard
    z0, zn = plan.zeroout
    lines += [
        # BLKDISCARD (busybox blkdiscard): VIRTIO_BLK_T_DISCARD; the device zeroes the range.
        f"if blkdiscard -o {d0} -l {dn} /dev/vda 2>/tmp/err; then",
        f"  dd if=/dev/vda of=/tmp/r bs={dn} count={dn} skip={d0}"
        " iflag=direct,skip_bytes,count_bytes 2>/tmp/err",
        "  v=$(md5sum /tmp/r | cut -d' ' -f1)",
        f"  [ \"$v\" = {zeros[dn]} ] && result discard PASS \"$v\" || result discard FAIL"
        " \"read back $v, not zeros\"",
        "else result discard FAIL \"$(tail -n1 /tmp/err)\"; fi",
        # BLKZEROOUT (/bin/zeroout, built by the host: busybox has no blkdiscard -z):
        # VIRTIO_BLK_T_WRITE_ZEROES, exit status the errno.
        "if zeroout; then",
        f"  dd if=/dev/vda of=/tmp/r bs={zn} count={zn} skip={z0}"
        " iflag=direct,skip_bytes,count_bytes 2>/tmp/err",
        "  v=$(md5sum /tmp/r | cut -d' ' -f1)",
        f"  [ \"$v\" = {zeros[zn]} ] && result zeroout PASS \"$v\" || result zeroout FAIL"
        " \"read back $v, not zeros\"",
        "else result zeroout FAIL \"BLKZEROOUT: errno $?\"; fi",
        "rm -f /tmp/r",
        # fsync() of the block device: blkdev_fsync sends VIRTIO_BLK_T_FLUSH (FLUSH offered).
        "if sync /dev/vda && blockdev --flushbufs /dev/vda; then result flush PASS;"
        " else result flush FAIL; fi",
        *notify_script(plan),
    ]
    if plan.fs:
        lines += fs_script(plan)
    lines += [*_tail(), ""]
    return "\n".join(lines)


def _tail() -> list[str]:
    """The kernel log's verdict, then power off."""
    return [
        f"v=$(dmesg | grep -ciE '{DMESG_ERRORS}')",
        "[ \"$v\" = 0 ] && result io-errors PASS || { result io-errors FAIL \"$v line(s)\";"
        f" dmesg | grep -iE '{DMESG_ERRORS}' | sed 's/^/VHB DMESG /'; }}",
        "echo 'VHB DONE'",
        "poweroff -f",
    ]


def queue_script(plan: GuestPlan) -> list[str]:
    """``queue``: the depth virtio_blk chose (``nr_tags`` of its one hardware queue) and the
    request limits it derived from SEG_MAX and SIZE_MAX, with ``max_sectors_kb`` as set."""
    q = "/sys/block/vda/queue"
    return [
        "d=$(cat /sys/block/vda/mq/0/nr_tags)",
        f"v=\"depth $d max_sectors_kb $(cat {q}/max_sectors_kb) max_hw_sectors_kb"
        f" $(cat {q}/max_hw_sectors_kb) max_segments $(cat {q}/max_segments)"
        f" max_segment_size $(cat {q}/max_segment_size) discard_max_bytes"
        f" $(cat {q}/discard_max_bytes) write_zeroes_max_bytes"
        f" $(cat {q}/write_zeroes_max_bytes)\"",
        f"[ \"$d\" -ge {plan.min_queue_depth} ] && [ $(cat {q}/max_sectors_kb) ="
        f" {plan.max_sectors_kb} ] && result queue PASS \"$v\" || result queue FAIL \"$v\"",
    ]


def notify_script(plan: GuestPlan) -> list[str]:
    """The notification workload, in both boots: a marker read, ``scatter_pages`` buffered
    page writes at every other page written back by one fsync, ``readers``
    parallel O_DIRECT readers of ``reads_each`` pages, a marker read; then the region read
    back. ``notify`` reports the guest's own counts: virtio interrupts taken
    (``/proc/interrupts``) and reads and writes completed (``/sys/block/vda/stat``)."""
    m0, m1 = plan.mark_sectors
    base = plan.scatter_at // 4096
    span = 2 * plan.scatter_pages
    at, n = plan.scatter_span
    expect = md5(plan.expected_disk()[at:at + n])

    def mark(sector: int) -> str:  # one 512-byte O_DIRECT read the host recognises
        return (f"dd if=/dev/vda of=/dev/null bs=4096 count=512 skip={sector * 512}"
                " iflag=direct,skip_bytes,count_bytes 2>/dev/null")
    return [
        "sync",
        "st() { awk '{print $1, $5}' /sys/block/vda/stat; }",
        mark(m0),
        "i0=$(irqs); s0=$(st); ok=PASS",
        f"i=0; while [ $i -lt {plan.scatter_pages} ]; do dd if=/data/scatter of=/dev/vda"
        f" bs=4096 count=1 skip=$i seek=$(({base} + 2 * i)) conv=notrunc 2>/dev/null"
        " || ok=FAIL; i=$((i+1)); done",
        "sync /dev/vda || ok=FAIL",
        f"j=0; while [ $j -lt {plan.readers} ]; do",
        f"  ( k=0; while [ $k -lt {plan.reads_each} ]; do dd if=/dev/vda of=/dev/null bs=4096"
        f" count=1 skip=$(({base} + ({plan.reads_each} * j + k) % {span}))"
        " iflag=direct 2>/dev/null || echo FAIL >> /tmp/nf; k=$((k+1)); done ) &",
        "  j=$((j+1)); done",
        "wait",
        "[ -e /tmp/nf ] && ok=FAIL",
        "i1=$(irqs); s1=$(st)",
        mark(m1),
        "set -- $s0 $s1",
        "result notify $ok \"interrupts $((i1 - i0)) reads $(($3 - $1)) writes $(($4 - $2))\"",
        f"dd if=/dev/vda of=/tmp/r bs={n} count={n} skip={at}"
        " iflag=direct,skip_bytes,count_bytes 2>/tmp/err",
        "v=$(md5sum /tmp/r | cut -d' ' -f1); rm -f /tmp/r",
        f"[ \"$v\" = {expect} ] && result notify-verify PASS $v"
        " || result notify-verify FAIL \"$v $(tail -n1 /tmp/err)\"",
    ]


def zeroout_elf(offset: int, length: int, path: bytes = b"/dev/vda") -> bytes:
    """A static x86-64 Linux program (about 200 bytes) that does
    ``ioctl(open(path, O_WRONLY), BLKZEROOUT, {offset, length})`` and exits with the errno
    (0 on success). BLKZEROOUT asks the block layer for zeros: VIRTIO_BLK_T_WRITE_ZEROES when
    the device offers WRITE_ZEROES. The guest's busybox has no ``blkdiscard -z``, and nothing
    here assumes a C compiler."""
    base = 0x400000
    code_at = 64 + 56
    code = bytearray()
    code += b"\x48\x8d\x3d" + b"PATH"  # lea rdi, [rip + path]
    fix_path = len(code) - 4
    code += b"\xbe\x01\x00\x00\x00"  # mov esi, O_WRONLY
    code += b"\x31\xd2"  # xor edx, edx
    code += b"\xb8\x02\x00\x00\x00"  # mov eax, SYS_open
    code += b"\x0f\x05"  # syscall
    code += b"\x48\x85\xc0"  # test rax, rax
    code += b"\x78" + b"J"  # js fail
    fix_js = len(code) - 1
    code += b"\x48\x89\xc7"  # mov rdi, rax
    code += b"\xbe\x7f\x12\x00\x00"  # mov esi, BLKZEROOUT (_IO(0x12, 127))
    code += b"\x48\x8d\x15" + b"RNGE"  # lea rdx, [rip + range]
    fix_range = len(code) - 4
    code += b"\xb8\x10\x00\x00\x00"  # mov eax, SYS_ioctl
    code += b"\x0f\x05"  # syscall
    fail = len(code)
    code += b"\x48\x89\xc7"  # fail: mov rdi, rax
    code += b"\x48\xf7\xdf"  # neg rdi
    code += b"\xb8\x3c\x00\x00\x00"  # mov eax, SYS_exit
    code += b"\x0f\x05"  # syscall
    code[fix_js] = fail - (fix_js + 1)
    range_at = len(code)
    code += offset.to_bytes(8, "little") + length.to_bytes(8, "little")
    path_at = len(code)
    code += path + b"\0"
    code[fix_path:fix_path + 4] = (path_at - (fix_path + 4)).to_bytes(4, "little", signed=True)
    code[fix_range:fix_range + 4] = (range_at - (fix_range + 4)).to_bytes(4, "little",
                                                                         signed=True)
    size = code_at + len(code)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 2, 0x3E, 1,
                       base + code_at, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return ehdr + phdr + bytes(code)


def fs_script(plan: GuestPlan) -> list[str]:
    """IOVA mode's filesystem checks: a partition after the raw checks' part, ext2 on it
    (busybox mke2fs, the ext4 driver), the tree copied in, unmounted, caches dropped,
    mounted again and every file's md5 compared with the host's."""
    start = plan.raw_bytes // spec.SECTOR_SIZE
    # A step that fails skips the ones that need it (each still prints its result line).
    return [
        "ok=PASS",
        f"for m in {' '.join(FS_MODULES)}; do insmod /lib/modules/$m.ko || ok=FAIL; done",
        "result fs-modules $ok",
        "fs=PASS",
        # The partition table (sector 0, which no raw check touches), then a re-read of it.
        "dd if=/data/mbr of=/dev/vda bs=4096 count=512 iflag=count_bytes oflag=direct"
        " conv=notrunc 2>/tmp/err && blockdev --rereadpt /dev/vda 2>>/tmp/err || fs=FAIL",
        "n=0; while [ ! -b /dev/vda1 ] && [ $n -lt 50 ]; do usleep 100000; n=$((n+1)); done",
        "v=\"$(cat /sys/block/vda/vda1/start 2>/dev/null) $(cat /sys/block/vda/vda1/size"
        " 2>/dev/null)\"",
        f"[ $fs = PASS ] && [ \"$v\" = '{start} {plan.partition_sectors}' ] &&"
        " result partition PASS \"$v\" || { fs=FAIL; result partition FAIL"
        " \"$v $(tail -n1 /tmp/err)\"; }",
        "step() { name=$1; shift; if [ $fs = PASS ] && \"$@\" >/tmp/out 2>&1; then"
        " result $name PASS; else fs=FAIL; result $name FAIL \"$(tail -n1 /tmp/out)\"; fi; }",
        "mkdir -p /mnt",
        "step mkfs mke2fs /dev/vda1",
        "step mount mount -t ext2 /dev/vda1 /mnt",
        "step write-files cp -a /data/tree/. /mnt/",
        "step umount sh -c 'sync && umount /mnt && blockdev --flushbufs /dev/vda1"
        " && echo 3 > /proc/sys/vm/drop_caches'",
        "step remount mount -t ext2 -o ro /dev/vda1 /mnt",
        "step verify-files sh -c 'cd /mnt && md5sum -c /data/tree.md5'",
        "v=$(find /mnt -type f | wc -l)",
        f"[ $fs = PASS ] && [ \"$v\" = {len(plan.fs_tree)} ] && result file-count PASS $v"
        " || result file-count FAIL \"$v\"",
        "umount /mnt 2>/dev/null",
    ]


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def ensure_initramfs(plan: GuestPlan, kernel: Kernel, build: Path = BUILD) -> Path:
    """busybox, the virtio modules, /init and the write patterns, as a gzipped newc cpio."""
    script = init_script(plan).encode()
    modules = ALL_MODULES if plan.fs else MODULES
    digest = _digest(script, BUSYBOX.read_bytes(),
                     *(kernel.modules[m].read_bytes() for m in modules),
                     *(str(c.size).encode() for c in plan.io),
                     Path(__file__).read_bytes())
    out = build / f"initramfs-{plan.mode}-{digest}.cpio.gz"
    if out.exists():
        return out
    for old in build.glob(f"initramfs-{plan.mode}-*.cpio.gz"):
        old.unlink()
    with tempfile.TemporaryDirectory(dir=build) as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "dev", "proc", "sys", "tmp", "data", "lib/modules"):
            (root / d).mkdir(parents=True)
        shutil.copy(BUSYBOX, root / "bin" / "busybox")
        (root / "init").write_bytes(script)
        (root / "init").chmod(0o755)
        for m in modules:
            shutil.copy(kernel.modules[m], root / "lib" / "modules" / f"{m}.ko")
        for c in plan.io:
            (root / "data" / f"p{c.size}").write_bytes(pattern(c.size))
        (root / "data" / "scatter").write_bytes(plan.scatter_data())
        (root / "bin" / "zeroout").write_bytes(zeroout_elf(*plan.zeroout))
        (root / "bin" / "zeroout").chmod(0o755)
        if plan.fs:
            (root / "data" / "mbr").write_bytes(plan.mbr())
            (root / "data" / "tree.md5").write_text(plan.fs_manifest())
            for f in plan.fs_tree:
                path = root / "data" / "tree" / f.path
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(f.data())
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=root,
                              input=("\n".join([".", *names]) + "\n").encode(),
                              capture_output=True, check=False)
        if cpio.returncode != 0:
            raise SetupError(f"cpio failed: {cpio.stderr.decode(errors='replace')}")
        tmp_out = out.with_suffix(".tmp")
        tmp_out.write_bytes(gzip.compress(cpio.stdout, compresslevel=6))
        os.replace(tmp_out, out)
    return out


# --- QEMU -----------------------------------------------------------------------------------------

def qemu_command(kernel: Kernel, initramfs: Path, socket_path: str,
                 mode: str = "gpa", *, queue_size: int = 128, event_idx: bool = True,
                 only_notify: bool = False) -> list[str]:
    """The command line of the issue: q35 with a shared memfd backend (the back-end maps the
    guest's memory), vhost-user-blk-pci with one queue of ``queue_size`` entries, qboot
    (SeaBIOS would drive the disk itself before Linux does), TCG (no KVM assumed), serial
    console on stdio.

    ``event_idx=False`` sets QEMU's ``event_idx=off`` on the device: QEMU then hides
    VIRTIO_RING_F_EVENT_IDX from the guest whatever the back-end offers (the second boot, which
    runs the notification workload without it). ``only_notify`` puts ``vhb.only=notify`` on the
    kernel command line: the init script runs that workload only.

    IOVA mode puts the disk behind QEMU's emulated Intel IOMMU (``intremap=off``: no
    interrupt remapping, which would need a split irqchip) with ``iommu_platform=on`` (the
    device's addresses are IOVAs; needs ``disable-legacy=on``), and the guest turns the IOMMU
    on in strict mode (every unmap is invalidated at once, so QEMU passes each one on)."""
    iova = mode == "iova"
    blk = f"vhost-user-blk-pci,chardev=vu0,num-queues=1,queue-size={queue_size}"
    if not event_idx:
        blk += ",event_idx=off"
    append = "console=ttyS0 rdinit=/init panic=-1 loglevel=4"
    if only_notify:
        append += " vhb.only=notify"
    return [
        QEMU,
        "-machine", "q35,memory-backend=mem0", "-accel", "tcg",
        "-m", f"{MEM_MB}M", "-smp", "1",
        "-object", f"memory-backend-memfd,id=mem0,size={MEM_MB}M,share=on",
        *(["-device", "intel-iommu,intremap=off"] if iova else []),
        "-chardev", f"socket,id=vu0,path={socket_path}",
        "-device", blk + (",iommu_platform=on,disable-legacy=on" if iova else ""),
        "-bios", str(QBOOT),
        "-nographic", "-no-reboot",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initramfs),
        "-append", append + (" intel_iommu=on iommu.strict=1" if iova else ""),
    ]
