"""RamDisk (rtl/ramdisk.py) against a bytearray model.

Contract (RamDisk docstring): the disk starts as ``spec.ramdisk_init(disk_bytes)``; with
``port.rd_word = k``, ``rd_lo``/``rd_hi`` hold disk words ``k`` and ``k + 1`` (modulo the disk) one
cycle later; a write puts the lanes of ``wr_data`` enabled by ``wr_en_lo`` into word ``k`` and
those enabled by ``wr_en_hi`` into word ``k + 1`` (lane ``j`` = byte ``j`` of a word).
"""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from models import spec
from rtl.ramdisk import RamDisk

DISK_BYTES = 1024
WIDTHS = [32, 64, 128]


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def word(image: bytes | bytearray, k: int, lanes: int) -> int:
    k %= len(image) // lanes
    return int.from_bytes(image[k * lanes:(k + 1) * lanes], "little")


async def check_all_words(ctx, dut, image, lanes, *, wrap=True):
    """Read every word k (pipelined, one per cycle) and check words k and k + 1 mod disk
    (``wrap=False``: not rd_hi of the last word)."""
    words = len(image) // lanes
    for k in range(words):
        ctx.set(dut.port.rd_word, k)
        await ctx.tick().repeat(2)
        assert ctx.get(dut.port.rd_lo) == word(image, k, lanes), f"rd_lo word {k}"
        if wrap or k + 1 < words:
            assert ctx.get(dut.port.rd_hi) == word(image, k + 1, lanes), f"rd_hi word {k + 1}"


@pytest.mark.parametrize("data_width", WIDTHS)
def test_initial_image_and_wrap(data_width):
    """Every (k, k + 1) pair of the initial image, including k = last word (k + 1 wraps to 0)."""
    dut = RamDisk(disk_bytes=DISK_BYTES, data_width=data_width)
    image = spec.ramdisk_init(DISK_BYTES)

    async def bench(ctx):
        await check_all_words(ctx, dut, image, data_width // 8)

    run(dut, bench)


@pytest.mark.parametrize("data_width", WIDTHS)
def test_read_latency_two_cycles(data_width):
    """rd_lo/rd_hi change only at the second clock edge after rd_word (registered block RAM
    outputs), and then hold words k, k+1; reads are pipelined one per cycle."""
    lanes = data_width // 8
    dut = RamDisk(disk_bytes=DISK_BYTES, data_width=data_width)
    image = spec.ramdisk_init(DISK_BYTES)
    last = DISK_BYTES // lanes - 1

    async def bench(ctx):
        ctx.set(dut.port.rd_word, 3)
        await ctx.tick().repeat(2)
        for k in (last, 0, 1, last - 1, 2):
            ctx.set(dut.port.rd_word, k)
            await ctx.tick()
            assert ctx.get(dut.port.rd_lo) == word(image, 3, lanes)  # still the old word
            ctx.set(dut.port.rd_word, 3)
            await ctx.tick()
            assert (ctx.get(dut.port.rd_lo), ctx.get(dut.port.rd_hi)) == (
                word(image, k, lanes), word(image, k + 1, lanes))
            await ctx.tick()

    run(dut, bench)


def _random_write(rng: random.Random, lanes: int, words: int):
    """``(k, data, en_lo, en_hi)``: mostly a DMA-like run of 1..W bytes at any byte alignment
    (covering the end of word k and the start of word k + 1), sometimes arbitrary enables.
    Word k + 1 stays inside the disk (no wrap)."""
    k = rng.randrange(words - 1)
    data = rng.getrandbits(8 * lanes)
    full = (1 << lanes) - 1
    if rng.random() < 0.25:
        return k, data, rng.getrandbits(lanes), rng.getrandbits(lanes)
    off = rng.randrange(lanes)
    n = rng.randint(1, lanes)
    en_lo = (full << off) & full & ~(full << (off + n))  # lanes [off, min(W, off + n))
    en_hi = full & ~(full << max(0, off + n - lanes))  # lanes [0, off + n - W)
    return k, data, en_lo, en_hi


@pytest.mark.parametrize("disk_bytes", [DISK_BYTES, 1536])
@pytest.mark.parametrize("data_width", WIDTHS)
def test_random_byte_enable_writes(data_width, disk_bytes):
    """Random byte-enable writes across two words at any alignment, compared with a bytearray.
    Each cycle also reads a word pair disjoint from the one being written, so both ports are
    busy and reads see every earlier write. 1536 bytes: a non-power-of-two number of words."""
    lanes = data_width // 8
    words = disk_bytes // lanes
    wrap = disk_bytes == DISK_BYTES  # see test_wrap_non_power_of_two_disk
    dut = RamDisk(disk_bytes=disk_bytes, data_width=data_width)
    model = bytearray(spec.ramdisk_init(disk_bytes))
    rng = random.Random(data_width + disk_bytes)

    async def bench(ctx):
        for i in range(400):
            k, data, en_lo, en_hi = _random_write(rng, lanes, words)
            if i % 8 == 0:  # edges: first/last pair of words
                k = (0, words - 2)[i // 8 % 2]
            r = k
            while not {r, (r + 1) % words}.isdisjoint({k, k + 1}) or (
                    not wrap and r == words - 1):
                r = rng.randrange(words)
            ctx.set(dut.port.wr_word, k)
            ctx.set(dut.port.wr_data, data)
            ctx.set(dut.port.wr_en_lo, en_lo)
            ctx.set(dut.port.wr_en_hi, en_hi)
            ctx.set(dut.port.rd_word, r)
            await ctx.tick()
            ctx.set(dut.port.wr_en_lo, 0)
            ctx.set(dut.port.wr_en_hi, 0)
            await ctx.tick()
            assert ctx.get(dut.port.rd_lo) == word(model, r, lanes), f"word {r} after {i} writes"
            assert ctx.get(dut.port.rd_hi) == word(model, r + 1, lanes)
            for lane in range(lanes):
                byte = data >> 8 * lane & 0xFF
                if en_lo >> lane & 1:
                    model[k * lanes + lane] = byte
                if en_hi >> lane & 1:
                    model[(k + 1) * lanes + lane] = byte
        ctx.set(dut.port.wr_en_lo, 0)
        ctx.set(dut.port.wr_en_hi, 0)
        await check_all_words(ctx, dut, model, lanes, wrap=wrap)

    run(dut, bench)
    assert model != spec.ramdisk_init(disk_bytes)


@pytest.mark.parametrize("data_width", WIDTHS)
def test_no_write_without_enables(data_width):
    """wr_word/wr_data with both enables 0 change nothing."""
    lanes = data_width // 8
    dut = RamDisk(disk_bytes=DISK_BYTES, data_width=data_width)
    image = spec.ramdisk_init(DISK_BYTES)

    async def bench(ctx):
        for k in range(DISK_BYTES // lanes):
            ctx.set(dut.port.wr_word, k)
            ctx.set(dut.port.wr_data, (1 << data_width) - 1)
            await ctx.tick()
        await check_all_words(ctx, dut, image, lanes)

    run(dut, bench)


@pytest.mark.parametrize("data_width", WIDTHS)
def test_wrap_non_power_of_two_disk(data_width):
    """1536 bytes is a valid size (a multiple of 512); rd_hi of the last word is word 0."""
    lanes = data_width // 8
    dut = RamDisk(disk_bytes=1536, data_width=data_width)
    image = spec.ramdisk_init(1536)

    async def bench(ctx):
        ctx.set(dut.port.rd_word, 1536 // lanes - 1)
        await ctx.tick().repeat(2)
        assert ctx.get(dut.port.rd_lo) == word(image, -1, lanes)
        assert ctx.get(dut.port.rd_hi) == word(image, 0, lanes)

    run(dut, bench)
