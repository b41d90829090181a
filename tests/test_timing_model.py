"""The two timing models of docs/timing.md agree: on the deterministic memory, the cycle model
(``TimedDevice.events``, written for any memory timing) predicts the same address handshakes
and completions as the closed form (``TimedDevice.schedule``) that the RTL is checked against
on that memory (``tests/test_timing_exact.py``). Pure Python: the memory answers the cycle
model's own handshakes as ``tb/detmem.py`` answers the device's."""

from __future__ import annotations

import random

import pytest

from models import spec
from models.memory import GuestMemory
from models.timing import Event, TimedDevice
from verif.harness import HandDriver


class _Always:
    def __contains__(self, cycle: int) -> bool:
        return True


class DetSide:
    """``tb/detmem.py`` as a :class:`models.timing.MemorySide`: every ready high, read beat
    ``j`` of a burst accepted at ``h`` at ``h + 1 + latency + j`` (bursts queue), a write's
    response ``latency + 1`` after its last beat; computed from the handshakes the model made
    so far (:meth:`bind`)."""

    def __init__(self, latency: int) -> None:
        self.L = latency
        self.arready = self.awready = self.wready = _Always()
        self.events: list[Event] = []
        self.rvalid = self  # (get below)
        self.bvalid = _B(self)

    def bind(self, events: list[Event]) -> None:
        self.events = events

    def get(self, c: int):  # rvalid at edge c: (rlast, rresp)
        free = 0
        for e in self.events:
            if e.name == "AR" and e.cycle < c:
                beats = int(e.info.split("beats=")[1])
                start = max(e.cycle + self.L, free)
                free = start + beats
                if start < c <= start + beats:
                    return (c == start + beats, 0)
        return None


class _B:
    def __init__(self, side: DetSide) -> None:
        self.side = side

    def get(self, c: int):
        ws = [e.cycle for e in self.side.events if e.name == "W" and e.cycle < c]
        n, due = 0, []
        for e in self.side.events:
            if e.name == "AW":
                n += int(e.info.split("beats=")[1])
                if n <= len(ws):
                    due.append(ws[n - 1] + self.side.L + 1)
        # one response per cycle, in order (the memory's queue)
        t = -1
        for d in due:
            t = max(d, t + 1)
            if t == c:
                return 0
        return None




@pytest.mark.parametrize("latency", [0, 3, 17])
@pytest.mark.parametrize("handle_mode", [False, True], ids=["gpa", "grant"])
def test_cycle_model_matches_closed_form(handle_mode, latency):
    rng = random.Random(latency * 2 + handle_mode)
    dev = TimedDevice(GuestMemory(1 << 20))
    drv = HandDriver(dev, handle_mode=handle_mode)
    drv.setup(16)
    for kick in range(4):
        for _ in range(rng.randint(1, 4)):
            n = rng.choice([512, 1024, 4096, 6144])
            if rng.random() < 0.5:
                drv.request(spec.VIRTIO_BLK_T_IN, rng.randrange(64), read_len=n,
                            data_offset=rng.choice([0, 100, 4000]))
            else:
                drv.request(spec.VIRTIO_BLK_T_OUT, rng.randrange(64),
                            data=bytes(rng.randrange(256) for _ in range(n)),
                            data_offset=rng.choice([0, 8, 3000]))
        drv.notify()
        while drv.take_used():
            pass
        closed = dev.schedule(kick, latency=latency)
        notify = 1000 * (kick + 1) * (latency + 10)
        events = dev.events(kick, DetSide(latency), notify,
                            end=notify + closed.idle + 4 * latency + 100)
        hs = [(e.name[1], int(e.info.split()[0][5:], 16), int(e.info.split("beats=")[1]),
               e.cycle - notify) for e in events if e.name in ("AR", "AW")]
        assert hs == [("R" if h.kind == "R" else "W", h.addr, h.beats, h.cycle)
                      for h in closed.handshakes]
        # completions: the responses of the used-index writes (the only 2-byte writes here)
        uidx = {t.addr for t in dev.transactions if t.kind == "W" and t.nbytes == 2}
        aws = [e for e in events if e.name == "AW"]
        bs = [e.cycle - notify for e in events if e.name == "B"]
        assert len(bs) == len(aws)  # (in order: the memory answers in order)
        assert [b for aw, b in zip(aws, bs, strict=True)
                if int(aw.info.split()[0][5:], 16) in uidx] == closed.completions
        rises = [e.cycle - notify for e in events if e.name == "irq_rise"]
        assert rises == closed.irqs[:1] if kick == 0 else rises == []
