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

    Guest I/O limits (``docs/linux.md``): the device offers no SEG_MAX, so Linux sends one
    physically contiguous segment per request; ``max_sectors_kb`` caps a request at 64 KiB
    and ``queue_depth`` caps the requests in flight, so that no request waits longer than
    ``queue_depth`` x (a 64 KiB transfer) in the simulation, far below the block layer's 30 s
    timeout.
    """

    disk_bytes: int = 2 * 1024 * 1024
    mode: str = "gpa"  # "iova": behind the guest's IOMMU, plus the filesystem checks
    io: tuple[IoCheck, ...] = (
        IoCheck(512, 512),  # one sector, not at the start of a page
        IoCheck(4096, 6656),  # one page's worth, not page aligned on the disk (sector 13)
        IoCheck(65536, 64 * 1024),
        IoCheck(256 * 1024, 128 * 1024),
        IoCheck(1024 * 1024, 1024 * 1024),
    )
    untouched: tuple[int, int] = (520 * 1024, 8192)  # read, never written: the initial pattern
    max_sectors_kb: int = 64
    queue_depth: int = 4
    disk_timeout_s: int = 30  # waiting for /dev/vda to appear
    raw_bytes: int = 2 * 1024 * 1024  # the raw checks' part; IOVA mode's partition follows
    fs_tree: tuple[FsFile, ...] = FS_TREE

    @classmethod
    def for_mode(cls, mode: str) -> GuestPlan:
        """GPA mode: the raw checks on a 2 MiB disk. IOVA mode: the same checks, then an MBR
        partition from 2 MiB to the end of a 4 MiB disk with an ext2 filesystem on it."""
        if mode == "gpa":
            return cls()
        if mode == "iova":
            return cls(disk_bytes=4 * 1024 * 1024, mode="iova")
        raise ValueError(f"mode must be 'gpa' or 'iova', not {mode!r}")

    @property
    def fs(self) -> bool:
        return self.mode == "iova"

    def __post_init__(self) -> None:
        spans = sorted((c.offset, c.offset + c.size) for c in self.io)
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
        for c in self.io:
            names += [f"write-{c.name}", f"verify-{c.name}"]
        names.append("flush")
        if self.fs:
            names += ["fs-modules", "partition", "mkfs", "mount", "write-files", "umount",
                      "remount", "verify-files", "file-count"]
        return [*names, "io-errors"]

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
        # The block layer's worst case stays far below its 30 s request timeout (GuestPlan).
        f"insmod /lib/modules/virtio_blk.ko queue_depth={plan.queue_depth} || ok=FAIL",
        "result modules $ok",
        "n=0",
        f"while [ ! -b /dev/vda ] && [ $n -lt {plan.disk_timeout_s * 10} ]; do "
        "usleep 100000; n=$((n+1)); done",
        "if [ -b /dev/vda ]; then result disk PASS; else result disk FAIL 'no /dev/vda';"
        " echo 'VHB DONE'; poweroff -f; fi",
        f"echo {plan.max_sectors_kb} > /sys/block/vda/queue/max_sectors_kb",
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
    lines += [
        # fsync() of the block device: blkdev_fsync sends VIRTIO_BLK_T_FLUSH (FLUSH offered).
        "if sync /dev/vda && blockdev --flushbufs /dev/vda; then result flush PASS;"
        " else result flush FAIL; fi",
    ]
    if plan.fs:
        lines += fs_script(plan)
    lines += [
        f"v=$(dmesg | grep -ciE '{DMESG_ERRORS}')",
        "[ \"$v\" = 0 ] && result io-errors PASS || { result io-errors FAIL \"$v line(s)\";"
        f" dmesg | grep -iE '{DMESG_ERRORS}' | sed 's/^/VHB DMESG /'; }}",
        "echo 'VHB DONE'",
        "poweroff -f",
        "",
    ]
    return "\n".join(lines)


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
                 mode: str = "gpa") -> list[str]:
    """The command line of the issue: q35 with a shared memfd backend (the back-end maps the
    guest's memory), vhost-user-blk-pci, qboot (SeaBIOS would drive the disk itself before
    Linux does), TCG (no KVM assumed), serial console on stdio.

    IOVA mode puts the disk behind QEMU's emulated Intel IOMMU (``intremap=off``: no
    interrupt remapping, which would need a split irqchip) with ``iommu_platform=on`` (the
    device's addresses are IOVAs; needs ``disable-legacy=on``), and the guest turns the IOMMU
    on in strict mode (every unmap is invalidated at once, so QEMU passes each one on)."""
    iova = mode == "iova"
    blk = "vhost-user-blk-pci,chardev=vu0,num-queues=1"
    append = "console=ttyS0 rdinit=/init panic=-1 loglevel=4"
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
