"""The reference model's DMA engine and translation per page (``rtl/dma.py``, ``rtl/translate.py``).

docs/architecture.md "Bus transactions": one translation per 4 KiB page (``models.grant`` in
grant mode, the IOTLB of ``models.iotlb`` in IOVA mode, docs/iotlb.md), bursts that never cross
a page (``models.bus``), posted writes whose errors surface at a drain.
"""

from __future__ import annotations

from collections.abc import Callable

from models import spec
from models.bus import DmaFault, Transaction, iter_bursts
from models.grant import Translation, translate
from models.hvregs import Halt

_U32 = 0xFFFF_FFFF


class DmaEngine:
    """DMA accesses on ``m_axi``, a mixin of :class:`models.device.ReferenceDevice`.

    State (on the device): ``mem``, ``data_width``, ``bus_error``, ``on_transaction``, the
    first failed posted write (``_werr``), ``iotlb``, ``on_iotlb_miss``, the records
    ``transactions``, ``translations`` and ``misses``.
    """

    def _count_lookup(self) -> None:
        self.translations += 1
        self.stat_xlate = (self.stat_xlate + 1) & _U32

    def _translate(self, v: int, write: bool) -> Translation:
        if self.mode == spec.MODE_IOVA:
            return self._translate_iova(v, write)
        grant = self.mode == spec.MODE_GRANT
        if grant:
            self._count_lookup()
        return translate(
            v,
            write,
            handle_mode=grant,
            domid=self.domid,
            table=self.grants,
            entries=self.entries,
        )

    def _translate_iova(self, iova: int, write: bool) -> Translation:
        """Look the page piece starting at ``iova`` up in the IOTLB (docs/iotlb.md "Lookups,
        misses and faults"); on a miss, raise it and let ``on_iotlb_miss`` resolve it, until a
        lookup hits or the miss is failed (cause 10). A driver reset during the miss stops the
        engine (:class:`models.hvregs.Halt`)."""
        while True:
            self._count_lookup()
            entry = self.iotlb.lookup(iova)
            if entry is not None:
                self.stat_iotlb_hits = (self.stat_iotlb_hits + 1) & _U32
                if entry.permits(write):
                    return Translation(entry.translate(iova))
                return Translation(None, spec.FAULT_READONLY if write
                                   else spec.FAULT_IOTLB_NO_READ)
            if self._raise_miss(iova, write) == spec.MISS_RESOLVE_FAIL:
                return Translation(None, spec.FAULT_IOTLB_FAILED)

    def _raise_miss(self, iova: int, write: bool) -> int:
        """Raise an IOTLB miss at ``iova`` (IOTLB_MISS, MISS_IOVA, the count) and let
        ``on_iotlb_miss`` answer it; returns how (MISS_RESOLVE 1 or 2). A driver reset during
        the miss stops the engine (:class:`models.hvregs.Halt`)."""
        self.misses.append((iova, write))
        self.iotlb_miss = spec.IOTLB_MISS_PENDING | (
            spec.IOTLB_MISS_WRITE if write else spec.IOTLB_MISS_READ)
        self.miss_iova = iova
        self.stat_iotlb_misses = (self.stat_iotlb_misses + 1) & _U32
        self._miss_resolve = 0
        if self.on_iotlb_miss is None:
            raise RuntimeError(
                f"IOTLB miss at IOVA {iova:#x} and no hypervisor: IOVA mode needs an "
                f"on_iotlb_miss hook that writes MISS_RESOLVE (or resets the device)")
        resets = self._resets
        self.on_iotlb_miss(self)
        resolve, self._miss_resolve = self._miss_resolve, 0
        if self._resets != resets:
            raise Halt()  # a driver reset cancelled the miss: the engine stops
        if resolve not in (spec.MISS_RESOLVE_FAIL, spec.MISS_RESOLVE_RETRY):
            raise RuntimeError(
                f"the on_iotlb_miss hook left the miss at IOVA {iova:#x} pending: it must "
                f"write MISS_RESOLVE 1 or 2, or reset the device")
        return resolve

    def _look_ahead(self, v: int) -> None:
        """The lookup of the page at ``v`` that the DMA engine makes in the address handshake
        of a read burst that ends the page before it, when the access goes on (docs/timing.md,
        ``ISSUE``), before that burst's data. Called only when the burst then fails: the access
        ends with cause 6 and the lookup's answer is never used, so the one thing it leaves is,
        in IOVA mode, its miss: raised and answered like any other (docs/iotlb.md), once. It is
        not a translation the engine uses (no STAT_XLATE or STAT_IOTLB_HITS count)."""
        if self.mode == spec.MODE_IOVA and self.iotlb.lookup(v) is None:
            self._raise_miss(v, False)

    def _issue(self, txn: Transaction, ahead: int | None = None) -> bytes | None:
        """Issue one transaction on ``m_axi``; returns the read data, or raises on an error
        (fault 6) or when a driver reset arrived during it (the engine stops, no fault).
        ``ahead``: a read that ends its page and whose access goes on, the next page's address
        (looked up ahead, :meth:`_look_ahead`, before a failed read's fault)."""
        ok = self.mem.contains(txn.addr, txn.nbytes)  # else DECERR
        if ok and self.bus_error is not None and self.bus_error(txn):
            ok = False  # SLVERR
        data: bytes | None = None
        if not ok:
            done = Transaction(txn.kind, txn.addr, txn.nbytes, txn.data, error=True)
            if txn.kind == "W" and self._werr is None:
                # Writes are posted (docs "Bus transactions"): the error is reported at the
                # next drain, and the writes issued before it go ahead.
                self._werr = txn.addr
        elif txn.kind == "W":
            assert txn.data is not None
            self.mem.write(txn.addr, txn.data)
            done = txn
        else:
            data = self.mem.read(txn.addr, txn.nbytes)
            done = Transaction("R", txn.addr, txn.nbytes, data)
        self.transactions.append(done)
        if self.on_transaction is not None:
            self.on_transaction(done)
        if self._abort:
            raise Halt()
        if not ok and txn.kind != "W":
            if ahead is not None:
                self._look_ahead(ahead)
            raise self._fault(spec.FAULT_BUS_ERROR, txn.addr)
        return data

    def drain(self) -> None:
        """Wait for every posted write's response; the first failed one faults (cause 6)."""
        if self._werr is not None:
            addr, self._werr = self._werr, None
            raise self._fault(spec.FAULT_BUS_ERROR, addr)

    def _bursts(self, v: int, n: int, write: bool):
        """The access's bursts. The mode is latched per access, as the DMA engine does: in GPA
        mode nothing is looked up again; in grant mode a page is looked up again after a write
        to the table, HV_CTRL or HV_DOMID, in IOVA mode after an IOTLB command that ran or a
        write to HV_CTRL or HV_DOMID."""
        gen = {spec.MODE_GRANT: lambda: self.table_gen,
               spec.MODE_IOVA: lambda: self.iotlb_gen}.get(self.mode)
        return iter_bursts(v, n, write, self.data_width, self._translate, gen)

    def dma_read(self, v: int, n: int, sink: Callable[[int, bytes], None] | None = None) -> bytes:
        """One DMA read access of ``n`` bytes at virtual ``v``.

        ``sink(offset, data)`` is called after every successful transaction (data streamed into
        the RAM disk). Raises the engine's halt on a fault.
        """
        out = bytearray()
        for item in self._bursts(v, n, False):
            if isinstance(item, DmaFault):
                raise self._fault(item.cause, item.addr)
            end = item.offset + item.nbytes
            ahead = (v + end) & spec.ADDR_MASK  # a burst that ends its page, the access going on
            data = self._issue(Transaction("R", item.addr, item.nbytes),
                               ahead if end < n and not ahead % spec.PAGE_SIZE else None)
            assert data is not None
            if sink is not None:
                sink(item.offset, data)
            out += data
        return bytes(out)

    def dma_write(self, v: int, data: bytes) -> None:
        """One DMA write access of ``data`` at virtual ``v``. Raises the halt on a fault."""
        for item in self._bursts(v, len(data), True):
            if isinstance(item, DmaFault):
                raise self._fault(item.cause, item.addr)
            chunk = bytes(data[item.offset : item.offset + item.nbytes])
            self._issue(Transaction("W", item.addr, item.nbytes, chunk))

