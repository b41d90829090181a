"""Parameter validation of the RTL components: bad parameters raise ValueError with a message
that names the parameter and the rejected value; the boundary values are accepted."""

from __future__ import annotations

import gc
import warnings

import pytest
from amaranth.hdl import Fragment, UnusedElaboratable

from rtl.dma import DmaEngine
from rtl.engine import RingEngine
from rtl.fifo import LutRamFIFO
from rtl.ramdisk import RamDisk
from rtl.top import VirtioBlkHandle
from rtl.translate import TranslationUnit


@pytest.fixture(autouse=True)
def _quiet_unused_elaboratables():
    """Components built only to be rejected (or only elaborated) are never used in a design:
    collect them here, where their UnusedElaboratable warning is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        yield
        gc.collect()


ENTRIES = r"(?i)entries must be a positive integer, not "
DISK = r"(?i)disk size must be a positive multiple of 512 bytes, not "
WIDTH = r"(?i)data.width must be 32, 64 or 128, not "
QMAX = r"(?i)queue size maximum must be a power of two in \[1, 32768\], not "

# (id, constructor, message pattern)
INVALID = [
    ("xlate entries=0", lambda: TranslationUnit(entries=0), ENTRIES + "0$"),
    ("xlate entries=-1", lambda: TranslationUnit(entries=-1), ENTRIES + "-1$"),
    ("xlate entries=1.5", lambda: TranslationUnit(entries=1.5), ENTRIES + r"1\.5$"),
    ("xlate entries='16'", lambda: TranslationUnit(entries="16"), ENTRIES + "'16'$"),
    ("ramdisk 0 bytes", lambda: RamDisk(disk_bytes=0), DISK + "0$"),
    ("ramdisk -512 bytes", lambda: RamDisk(disk_bytes=-512), DISK + "-512$"),
    ("ramdisk 1000 bytes", lambda: RamDisk(disk_bytes=1000), DISK + "1000$"),
    ("ramdisk 768 bytes", lambda: RamDisk(disk_bytes=768, data_width=32), DISK + "768$"),
    ("ramdisk 512.0 bytes", lambda: RamDisk(disk_bytes=512.0), DISK + r"512\.0$"),
    ("ramdisk width 16", lambda: RamDisk(disk_bytes=1024, data_width=16), WIDTH + "16$"),
    ("ramdisk width 256", lambda: RamDisk(disk_bytes=1024, data_width=256), WIDTH + "256$"),
    ("dma width 8", lambda: DmaEngine(data_width=8, disk_bytes=1024), WIDTH + "8$"),
    ("dma width 48", lambda: DmaEngine(data_width=48, disk_bytes=1024), WIDTH + "48$"),
    ("dma width 256", lambda: DmaEngine(data_width=256, disk_bytes=1024), WIDTH + "256$"),
    ("dma disk 1000", lambda: DmaEngine(data_width=64, disk_bytes=1000), DISK + "1000$"),
    ("fifo depth 1", lambda: LutRamFIFO(width=8, depth=1),
     r"^Depth must be an integer of at least 2, not 1$"),
    ("top width 16", lambda: VirtioBlkHandle(data_width=16), WIDTH + "16$"),
    ("top width 256", lambda: VirtioBlkHandle(data_width=256), WIDTH + "256$"),
    ("engine qmax 0", lambda: RingEngine(queue_num_max=0), QMAX + "0$"),
    ("engine qmax 3", lambda: RingEngine(queue_num_max=3), QMAX + "3$"),
    ("engine qmax 96", lambda: RingEngine(queue_num_max=96), QMAX + "96$"),
    ("engine qmax 65536", lambda: RingEngine(queue_num_max=65536), QMAX + "65536$"),
    ("engine qmax -4", lambda: RingEngine(queue_num_max=-4), QMAX + "-4$"),
    ("engine qmax 256.0", lambda: RingEngine(queue_num_max=256.0), QMAX + r"256\.0$"),
]


@pytest.mark.parametrize(("make", "match"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# The top level checks every parameter at construction, with the blocks' messages.
INVALID_TOP = [
    ("top entries=0", dict(entries=0), ENTRIES + "0$"),
    ("top qmax 3", dict(queue_num_max=3), QMAX + "3$"),
    ("top disk 1000", dict(disk_bytes=1000), DISK + "1000$"),
]


@pytest.mark.parametrize(("kwargs", "match"), [c[1:] for c in INVALID_TOP],
                         ids=[c[0] for c in INVALID_TOP])
def test_invalid_top_parameters_raise_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VirtioBlkHandle(**kwargs)


VALID = [
    ("xlate entries=1", lambda: TranslationUnit(entries=1)),
    ("xlate entries=12", lambda: TranslationUnit(entries=12)),
    ("ramdisk 512 bytes x128", lambda: RamDisk(disk_bytes=512, data_width=128)),
    ("ramdisk 1536 bytes x32", lambda: RamDisk(disk_bytes=1536, data_width=32)),
    ("dma width 32", lambda: DmaEngine(data_width=32, disk_bytes=1024)),
    ("dma width 128", lambda: DmaEngine(data_width=128, disk_bytes=1024)),
    ("fifo depth 2", lambda: LutRamFIFO(width=1, depth=2)),
    ("engine qmax 1", lambda: RingEngine(queue_num_max=1, disk_bytes=1024)),
    ("engine qmax 32768", lambda: RingEngine(queue_num_max=32768, disk_bytes=1024)),
    ("top small", lambda: VirtioBlkHandle(data_width=32, entries=12, queue_num_max=4,
                                          disk_bytes=1024)),
]


@pytest.mark.parametrize("make", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_boundary_parameters_accepted(make):
    Fragment.get(make(), None)
