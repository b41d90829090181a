"""The reference model's DMA engine and translation per page (``rtl/dma.py``, ``rtl/translate.py``).

docs/architecture.md "Bus transactions": one translation per 4 KiB page (``models.grant``),
bursts that never cross a page (``models.bus``), posted writes whose errors surface at a drain.
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
    first failed posted write (``_werr``), the records ``transactions`` and ``translations``.
    """

    def _translate(self, v: int, write: bool) -> Translation:
        if self.handle_mode:
            self.translations += 1
            self.stat_xlate = (self.stat_xlate + 1) & _U32
        return translate(
            v,
            write,
            handle_mode=self.handle_mode,
            domid=self.domid,
            table=self.grants,
            entries=self.entries,
        )

    def _issue(self, txn: Transaction) -> bytes | None:
        """Issue one transaction on ``m_axi``; returns the read data, or raises on an error
        (fault 6) or when a driver reset arrived during it (the engine stops, no fault)."""
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
            raise self._fault(spec.FAULT_BUS_ERROR, txn.addr)
        return data

    def drain(self) -> None:
        """Wait for every posted write's response; the first failed one faults (cause 6)."""
        if self._werr is not None:
            addr, self._werr = self._werr, None
            raise self._fault(spec.FAULT_BUS_ERROR, addr)

    def _bursts(self, v: int, n: int, write: bool):
        """The access's bursts. The mode is latched per access, as the DMA engine does: in GPA
        mode nothing is looked up again."""
        gen = (lambda: self.table_gen) if self.handle_mode else None
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
            data = self._issue(Transaction("R", item.addr, item.nbytes))
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

