"""The RAM disk behind the virtio-blk function, split into two banks of block RAM.

The DMA engine moves up to one bus beat (``W = data_width / 8`` bytes) per cycle at any byte
alignment. Such a run of bytes covers parts of at most two consecutive disk words, which sit
in different banks (even words in bank 0, odd words in bank 1), so one beat is one access per
bank: no second port and no read-modify-write.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In

from models import spec

from .interfaces import DiskSignature, disk_word_bits
from .params import check_data_width, check_disk_bytes

__all__ = ["RamDisk"]


class RamDisk(wiring.Component):
    """Two-bank RAM disk of ``disk_bytes`` bytes, initialised with ``spec.ramdisk_init``.

    Parameters
    ----------
    disk_bytes : int
        Size in bytes, a multiple of 512 and of ``2 * data_width / 8``.
    data_width : int
        32, 64 or 128: the width of a disk word.
    image : bool
        Initialise with ``spec.ramdisk_init`` (the RAM disk). False: no initial contents and
        any size that is a multiple of ``2 * data_width / 8`` (the ring engine's indirect
        table buffer, which reads only what a DMA read wrote).

    Members
    -------
    port : In(:func:`~rtl.interfaces.DiskSignature`)
        ``rd_word``: disk word index ``k``; ``rd_lo``/``rd_hi`` hold words ``k`` and ``k + 1``
        (modulo the disk) two cycles later: the block RAMs' outputs are registered before they
        go anywhere, because a block RAM read is slow (about 6 ns clock to output on an ECP5
        speed 6) and a large disk spreads its block RAMs over the die. ``wr_word``,
        ``wr_data``, ``wr_en_lo``, ``wr_en_hi``: write the lanes of ``wr_data`` enabled by
        ``wr_en_lo`` into word ``k`` and those enabled by ``wr_en_hi`` into word ``k + 1``.
    """

    def __init__(self, disk_bytes: int = spec.DEFAULT_DISK_BYTES,
                 data_width: int = spec.DEFAULT_DATA_WIDTH, *, image: bool = True):
        check_data_width(data_width)
        if image:
            check_disk_bytes(disk_bytes, data_width)
        elif disk_bytes <= 0 or disk_bytes % (2 * data_width // 8):
            raise ValueError(f"Buffer size must be a positive multiple of "
                             f"{2 * data_width // 8} bytes, not {disk_bytes!r}")
        self._image = image
        self._disk_bytes = disk_bytes
        self._data_width = data_width
        self._words = disk_bytes // (data_width // 8)
        self._word_bits = disk_word_bits(disk_bytes, data_width)
        super().__init__({"port": In(DiskSignature(self._word_bits, data_width))})

    @property
    def word_bits(self) -> int:
        return self._word_bits

    def elaborate(self, platform):
        m = Module()
        port = self.port
        lanes = self._data_width // 8
        image = (spec.ramdisk_init(self._disk_bytes) if self._image
                 else bytes(self._disk_bytes))
        words = [int.from_bytes(image[i * lanes:(i + 1) * lanes], "little")
                 for i in range(self._words)]
        banks = []
        for b in range(2):
            bank = memory.Memory(shape=unsigned(self._data_width), depth=self._words // 2,
                                 init=words[b::2])
            m.submodules[f"bank{b}"] = bank
            banks.append((bank.read_port(), bank.write_port(granularity=8)))

        # Word k lives in bank k % 2 at row k // 2; word k + 1 (wrapping to word 0 after the
        # last word, which is odd) in the other bank at row (k + 1) // 2.
        last = self._words - 1

        def rows(k):
            k1 = Signal(self._word_bits + 1)
            m.d.comb += k1.eq(Mux(k == last, 0, k + 1))
            return (k1[1:], k[1:])  # rows for (bank 0, bank 1)

        rd_rows = rows(port.rd_word)
        rd_odd = Signal()
        m.d.sync += rd_odd.eq(port.rd_word[0])
        for b, (rp, _) in enumerate(banks):
            m.d.comb += rp.addr.eq(rd_rows[b])
        with m.If(rd_odd):
            m.d.sync += [port.rd_lo.eq(banks[1][0].data), port.rd_hi.eq(banks[0][0].data)]
        with m.Else():
            m.d.sync += [port.rd_lo.eq(banks[0][0].data), port.rd_hi.eq(banks[1][0].data)]

        wr_rows = rows(port.wr_word)
        for b, (_, wp) in enumerate(banks):
            m.d.comb += [wp.addr.eq(wr_rows[b]), wp.data.eq(port.wr_data)]
        with m.If(port.wr_word[0]):
            m.d.comb += [banks[1][1].en.eq(port.wr_en_lo), banks[0][1].en.eq(port.wr_en_hi)]
        with m.Else():
            m.d.comb += [banks[0][1].en.eq(port.wr_en_lo), banks[1][1].en.eq(port.wr_en_hi)]
        return m
