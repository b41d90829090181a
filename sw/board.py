"""Run the demo workload on the board, through the UART link, against the reference model.

    python -m sw.board --port /dev/ttyUSB0 [--baud 1000000] [--mode handle|gpa|both]
                       [--requests 64] [--seed 1]

The same guest driver and hypervisor model that run against the reference model and the
simulated RTL drive the board (``sw/link.py`` is the transport). Every batch of requests runs
on a :class:`models.device.ReferenceDevice` with the same parameters, and the completions must
match; at the end the RAM disk (read back by the driver), all of guest memory (read over the
link) and the device's statistics counters are compared too. ``tb/test_board.py`` runs
:func:`run_demo` on the simulated board top, where the bus transactions are compared as well.

Exit status 0 when the board matched the reference everywhere, 1 on a mismatch, 2 when the
board cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from models import spec
from models.device import ReferenceDevice
from models.memory import GuestMemory
from sw.alloc import PageAllocator
from sw.compare import Mismatch, compare_bytes, compare_results, read_disk
from sw.dma import DmaApi, GrantDma, IdentityDma
from sw.driver import BlkRequest, BlkResult, VirtioBlkDriver
from sw.hypervisor import Hypervisor
from sw.link import LinkError, SerialPipe, UartLink
from sw.transport import DeviceLink
from sw.workload import random_requests

__all__ = ["DemoConfig", "Mismatch", "run_demo"]

DOMID = 7


@dataclass(frozen=True)
class DemoConfig:
    """The workload: ``requests`` seeded random requests in batches of ``batch``, then one
    read and one write of each of ``sizes`` bytes, then the whole disk read back."""

    handle_mode: bool = True
    seed: int = 1
    requests: int = 64
    batch: int = 8
    sizes: tuple[int, ...] = (512, 4096, 32768)
    queue_size: int | None = 64
    max_sectors: int = 8
    restore_disk: bool = True  # write the initial disk image first (a board that ran before)
    clear_memory: bool = True  # zero guest memory first (the reference's starts at zero)
    readback_disk: bool = True  # read the whole RAM disk back through the driver at the end
    compare_memory: bool = True  # read all of guest memory back over the link at the end


@dataclass
class DemoResult:
    config: DemoConfig
    ref: ReferenceDevice
    summary: dict = field(default_factory=dict)


async def _bring_up(link: DeviceLink, cfg: DemoConfig) -> VirtioBlkDriver:
    """Hypervisor set-up, then the driver's virtio initialisation (as ``tb/scenario.py``)."""
    hv = Hypervisor(link.hv)
    await hv.setup(cfg.handle_mode, DOMID)
    alloc = PageAllocator(link.mem, seed=cfg.seed)
    dma: DmaApi = await GrantDma.create(hv, DOMID) if cfg.handle_mode else IdentityDma()
    driver = VirtioBlkDriver(link, dma, alloc, seed=cfg.seed)
    await driver.init(cfg.queue_size)
    return driver


async def run_demo(link: UartLink, cfg: DemoConfig, *, entries: int | None = None,
                   queue_num_max: int | None = None,
                   log: Callable[[str], None] | None = None) -> DemoResult:
    """The demo on ``link`` and on a reference device built to match the board.

    ``entries``/``queue_num_max`` default to what the device reports. Raises :class:`Mismatch`
    on the first difference.
    """
    say = log or (lambda _msg: None)
    info = link.info
    link.reset_device()
    if cfg.clear_memory:
        say(f"clearing {info.mem_bytes // 1024} KiB of guest memory")
        link.mem.write(0, bytes(info.mem_bytes))
    if entries is None:
        entries = await link.hv.read32(spec.HV_ENTRIES)
    if queue_num_max is None:
        await link.guest.write32(spec.MMIO_QUEUE_SEL, 0)
        queue_num_max = await link.guest.read32(spec.MMIO_QUEUE_NUM_MAX)
    cap_lo = await link.guest.read32(spec.MMIO_CONFIG + spec.BLK_CONFIG_CAPACITY)
    disk_bytes = cap_lo * spec.SECTOR_SIZE
    ref = ReferenceDevice(GuestMemory(info.mem_bytes), entries=entries,
                          queue_num_max=queue_num_max, disk_bytes=disk_bytes,
                          data_width=info.data_width)
    result = DemoResult(cfg, ref)
    mode = "handle" if cfg.handle_mode else "gpa"
    say(f"[{mode} mode] bring-up: data width {info.data_width}, {entries} grant entries, "
        f"QueueNumMax {queue_num_max}, RAM disk {disk_bytes // 1024} KiB")
    ref_drv = await _bring_up(ref, cfg)
    drv = await _bring_up(link, cfg)

    async def both(reqs: list[BlkRequest]) -> list[BlkResult]:
        expected = await ref_drv.run_batch(reqs)
        actual = await drv.run_batch(reqs)
        compare_results(expected, actual)
        return actual

    cap = drv.capacity
    if cfg.restore_disk:
        say("restoring the initial RAM disk image")
        image = spec.ramdisk_init(disk_bytes)
        chunk = 16 * spec.SECTOR_SIZE
        await both([BlkRequest(spec.VIRTIO_BLK_T_OUT, pos // spec.SECTOR_SIZE,
                               data=image[pos:pos + chunk])
                    for pos in range(0, disk_bytes, chunk)])

    reqs = random_requests(cfg.seed, cfg.requests, cap, max_sectors=cfg.max_sectors)
    results: list[BlkResult] = []
    for i in range(0, len(reqs), cfg.batch):
        results += await both(reqs[i:i + cfg.batch])
        say(f"  {len(results)}/{len(reqs)} random requests match")
    for size in cfg.sizes:
        data = bytes(range(256)) * (size // 256)
        await both([BlkRequest(spec.VIRTIO_BLK_T_OUT, 0, data=data)])
        got = await both([BlkRequest(spec.VIRTIO_BLK_T_IN, 0, length=size)])
        compare_bytes(f"{size}-byte read after write", data, got[0].data or b"")
        say(f"  {size}-byte write and read match")

    if cfg.readback_disk:
        disk = await read_disk(both, cap)
        compare_bytes("RAM disk read back", bytes(ref.disk), disk)
        say("  RAM disk read back matches")
    if cfg.compare_memory:
        compare_bytes("guest memory", ref.mem.snapshot(), link.mem.read(0, info.mem_bytes))
        say("  all of guest memory matches")
    xlate = await link.hv.read32(spec.HV_STAT_XLATE)
    completed = await link.hv.read32(spec.HV_STAT_REQUESTS)
    faults = await link.hv.read32(spec.HV_FAULT_COUNT)
    if xlate != ref.translations:
        raise Mismatch(f"HV_STAT_XLATE {xlate}, reference {ref.translations}")
    if faults:
        raise Mismatch(f"HV_FAULT_COUNT {faults}: the workload makes no faults")
    link.sync()
    st = {name: sum(r.status == code for r in results)
          for name, code in (("ok", 0), ("ioerr", 1), ("unsupp", 2))}
    result.summary = {
        "mode": mode, "requests": len(results), "statuses": st,
        "bytes_moved": sum(r.request.data_len for r in results if r.ok and r.request.type in
                           (spec.VIRTIO_BLK_T_IN, spec.VIRTIO_BLK_T_OUT)),
        "translations": xlate, "completed": completed, "faults": faults,
        "link_requests": link.requests, "link_bytes_sent": link.bytes_sent,
        "link_bytes_received": link.bytes_received, "matches_reference": True,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", required=True, help="serial port of the board (/dev/ttyUSB0)")
    ap.add_argument("--baud", type=int, default=1_000_000)
    ap.add_argument("--mode", choices=("handle", "gpa", "both"), default="both")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        link = UartLink(SerialPipe(args.port, args.baud))
    except (LinkError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = link.info
    print(f"board: {info.clk_hz / 1e6:g} MHz, {info.baud / 1e6:g} Mbaud, guest memory "
          f"{info.mem_bytes // 1024} KiB, data width {info.data_width}")
    ok = True
    for handle_mode in {"handle": [True], "gpa": [False], "both": [True, False]}[args.mode]:
        cfg = DemoConfig(handle_mode=handle_mode, seed=args.seed, requests=args.requests)
        try:
            res = asyncio.run(run_demo(link, cfg, log=print))
        except Mismatch as exc:
            print(f"  matches reference: no\n    {exc}")
            ok = False
            continue
        s = res.summary
        print(f"  requests {s['requests']} (ok {s['statuses']['ok']}, ioerr "
              f"{s['statuses']['ioerr']}, unsupp {s['statuses']['unsupp']}), "
              f"{s['bytes_moved']} bytes moved, {s['translations']} translations, "
              f"{s['faults']} faults")
        print(f"  link: {s['link_requests']} requests, {s['link_bytes_sent']} bytes sent, "
              f"{s['link_bytes_received']} received\n  matches reference: yes")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
