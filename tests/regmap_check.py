"""A register port checked against its map in ``models/regmap.py``: offsets, reset values,
access behaviour, widths, QueueSel and the selectors, unmapped words.

One check for every implementation: the reference model's ports (``ReferenceDevice.guest`` /
``.hv``) in ``tests/test_models_registers.py`` and the RTL register files in
``tests/test_rtl_registers.py``, through any port with ``await read32(offset)`` and
``await write32(offset, value)``. Not a test module.
"""

from __future__ import annotations

from models.regmap import Access, Register, RegisterMap

U32 = 0xFFFF_FFFF
PROBES = (U32, 0x5A5A_A5A5, 0xA5A5_5A5A)
#: Write data for registers whose meaning gives some bits a rule of their own: Status refuses
#: FEATURES_OK (no driver features were written), keeps DEVICE_NEEDS_RESET, and 0 resets;
#: HV_CTRL ignores a write of mode 3 (docs/iotlb.md).
SPECIAL_PROBES = {"Status": (0xFFFF_FF07, 0x5A5A_A503), "HV_CTRL": (0xFFFF_FFFE, 0x5A5A_A5A5)}
#: What a register reads after any write, where its meaning says so: the barrier of HV_SYNC
#: completes at once with nothing in flight.
READS_AFTER_WRITE = {"HV_SYNC": 1}


def _words(regmap: RegisterMap, reg: Register, params: dict) -> list[tuple[int, int | None, int]]:
    """``(offset, selector value or None, reset value)`` of each word of ``reg``."""
    resets = regmap.resets(reg, params)
    if reg.selector:
        return [(reg.offset, sel, value) for sel, value in enumerate(resets)]
    return [(offset, None, value) for offset, value in zip(reg.offsets, resets, strict=True)]


async def check_map(regmap: RegisterMap, port, params: dict, *, window: int,
                    arrays: bool = True) -> None:
    """Check ``port`` against ``regmap`` from reset: every word of ``[0, window)`` and, with
    ``arrays``, the first and last element of each array (and the word after it)."""
    name = regmap.name

    async def access(reg, offset, sel, value=None):
        """Read (``value`` None) or write word ``sel`` of a selected register, or the word at
        ``offset``; the selector is 0 again afterwards."""
        if sel is not None:
            await port.write32(regmap[reg.selector].offset, sel)
        got = await port.read32(offset) if value is None else await port.write32(offset, value)
        if sel is not None:
            await port.write32(regmap[reg.selector].offset, 0)
        return got

    async def read(reg, offset, sel):
        return await access(reg, offset, sel)

    async def write(reg, offset, sel, value):
        await access(reg, offset, sel, value)

    # Reset values; every other word reads 0 and ignores writes.
    mapped = set()
    for reg in regmap:
        for offset, sel, reset in [] if reg.count else _words(regmap, reg, params):
            got = await read(reg, offset, sel)
            assert got == reset, f"{name} {reg.name} ({offset:#x}, sel {sel}) reset: {got:#x}"
            mapped.add(offset)
    for offset in sorted(set(range(0, window, 4)) - mapped):
        await port.write32(offset, U32)
        assert await port.read32(offset) == 0, f"{name}: unmapped {offset:#x} reads non-zero"

    # Access: RO keeps its reset value, WO and RW1C (nothing latched) read 0, RW keeps the
    # written value's ``width`` bits.
    for reg in regmap:
        if reg.count:
            continue
        mask = (1 << min(reg.width, 32)) - 1
        for offset, sel, reset in _words(regmap, reg, params):
            for probe in SPECIAL_PROBES.get(reg.name, PROBES):
                await write(reg, offset, sel, probe)
                expected = {Access.RO: reset, Access.WO: 0, Access.RW1C: 0,
                            Access.RW: READS_AFTER_WRITE.get(reg.name, probe & mask)}
                got = await read(reg, offset, sel)
                assert got == expected[reg.access], (
                    f"{name} {reg.name} ({offset:#x}, sel {sel}) after writing {probe:#x}: "
                    f"{got:#x}")
            if reg.access is Access.RW:
                await write(reg, offset, sel, reset)

    # A selected register beyond its words reads 0 and ignores writes.
    for reg in regmap:
        if reg.selector:
            await write(reg, reg.offset, reg.width // 32, U32)
            assert await read(reg, reg.offset, reg.width // 32) == 0, f"{name} {reg.name}"
            assert await read(reg, reg.offset, 0) == regmap.resets(reg, params)[0]

    # Queue registers while QueueSel != 0: read 0, ignore writes; the others do not change.
    queue = [(reg, offset, reset) for reg in regmap if reg.queue
             for offset, _, reset in _words(regmap, reg, params)]
    if queue:
        queue_sel = regmap["QueueSel"].offset
        await port.write32(queue_sel, 1)
        for reg, offset, _ in queue:
            await port.write32(offset, 0x40)
            assert await port.read32(offset) == 0, f"{name} {reg.name} with QueueSel 1"
        for reg in regmap:
            if reg.queue or reg.count or reg.selector or reg.offset == queue_sel:
                continue
            for offset, _, reset in _words(regmap, reg, params):
                assert await port.read32(offset) == reset, f"{name} {reg.name} with QueueSel 1"
        await port.write32(queue_sel, 0)
        for reg, offset, reset in queue:
            assert await port.read32(offset) == reset, f"{name} {reg.name} took a write"

    # Arrays: the first and the last element are RW, the word after the last is unmapped.
    for reg in regmap:
        if not (reg.count and arrays):
            continue
        stride, count = reg.width // 8, params[reg.count]
        for index in (0, count - 1):
            for offset in reg.offsets:
                for probe in PROBES:
                    await port.write32(offset + stride * index, probe)
                    assert await port.read32(offset + stride * index) == probe, (
                        f"{name} {reg.name} element {index} at {offset:#x}")
        end = reg.offset + stride * count
        await port.write32(end, U32)
        assert await port.read32(end) == 0, f"{name} {reg.name}: word after the array"
