"""Block RAM output registers for the ECP5 (``make fpga-report``, ``make board``): a pass on
Yosys's JSON netlist, between ``synth_ecp5`` and nextpnr.

A DP16KD without its output register (``REGMODE "NOREG"``, the only mode Yosys 0.70's ECP5
memory mapping uses) presents its word 5.8 ns after the clock edge in nextpnr's timing model
(speed 6); with it (``"OUTREG"``) 1.0 ns, a cycle later (``docs/probes/dp16kd_regmode.v``). The
design registers some block RAM words straight out of the RAM, with no logic before the
flip-flops (the grant table's lookup word, the IOTLB's physical pages, the privileged read of
the grant table): those flip-flops *are* an output register, and this pass moves them into the
block RAM. What it changes is placement and timing; the netlist's function is the same:

* a port's flip-flops are absorbed only if every data output of the port that anything uses
  drives flip-flops' ``DI`` and nothing else (no LUT, no top-level port);
* each such flip-flop is clocked by the port's clock, on the rising edge, has no set or reset
  (``LSR`` unconnected or constant 0) and powers up at 0 (``REGSET "RESET"``), as the output
  register does; its clock enable (none, or one net shared by the port's flip-flops) becomes
  the output register's (``OCE``);
* a port in 36-bit mode (Yosys's pseudo-dual-port mapping: the word leaves on both ``DOA`` and
  ``DOB``) is one group, both output registers on, and needs ``CLKA`` and ``CLKB`` on one net.

The output register then holds what the flip-flop held: the block RAM's NOREG output one
cycle earlier (Lattice FPGA-TN-02204, ECP5 memory usage guide: the output register adds one
cycle of read latency). ``tests/test_outreg.py`` checks the rules on small netlists.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

__all__ = ["absorb_in_file", "absorb_output_registers"]

_PINS = 18


def _const(bits, value: str) -> bool:
    return bits == [value]


def _width(param) -> int:
    return int(param, 2) if isinstance(param, str) else int(param)


def _is_output_register(ff: dict, pin: str, clk: list) -> bool:
    """``ff`` (a cell, read through its ``pin``) can be a port's output register: a TRELLIS_FF
    taking the word at ``DI``, clocked by ``clk`` on the rising edge, with no set or reset and
    powering up at 0."""
    fp, fc = ff["parameters"], ff["connections"]
    return (ff["type"] == "TRELLIS_FF" and pin == "DI" and fc["CLK"] == clk
            and fp.get("CLKMUX", "CLK") == "CLK" and fp.get("REGSET", "RESET") == "RESET"
            and _const(fc.get("LSR", ["0"]), "0"))


def _enable(ff: dict):
    """The flip-flop's clock enable as the output register would take it: ``["1"]``, a net's
    bits, or None (an inverted or constant-0 enable)."""
    mux = ff["parameters"].get("CEMUX", "1").strip()
    return ["1"] if mux == "1" else ff["connections"]["CE"] if mux == "CE" else None


def absorb_output_registers(netlist: dict, top: str) -> list[str]:
    """Rewrite ``netlist`` (Yosys JSON, modified in place): the output registers of module
    ``top``'s DP16KDs take the flip-flops that register their words. Returns the ports changed,
    as ``"cell:A"``, ``"cell:B"`` or ``"cell:AB"`` (36-bit mode)."""
    mod = netlist["modules"][top]
    cells = mod["cells"]
    sinks: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for name, cell in cells.items():
        for pin, bits in cell["connections"].items():
            if cell["port_directions"].get(pin) == "input":
                for b in bits:
                    if isinstance(b, int):
                        sinks[b].append((name, pin))
    port_bits = {b for p in mod["ports"].values() for b in p["bits"] if isinstance(b, int)}

    def registers(c: dict, pins: list[str], clk: list):
        """The (flip-flop, output bit) pairs that register the port's used outputs, or None if
        some used output goes anywhere else."""
        found = []
        for pin in pins:
            bit = c[pin][0]
            if not isinstance(bit, int) or not sinks.get(bit):
                continue
            if bit in port_bits or not all(_is_output_register(cells[sink], sink_pin, clk)
                                           for sink, sink_pin in sinks[bit]):
                return None
            found.extend((sink, bit) for sink, _ in sinks[bit])
        return found

    replace: dict[int, int] = {}  # a flip-flop's Q -> the output it registered
    changed: list[str] = []
    for name, cell in list(cells.items()):
        if cell["type"] != "DP16KD":
            continue
        p, c = cell["parameters"], cell["connections"]
        if not (p.get("CLKAMUX", "CLKA") == "CLKA" and p.get("CLKBMUX", "CLKB") == "CLKB"
                and _const(c["RSTA"], "0") and _const(c["RSTB"], "0")):
            continue
        if 36 in (_width(p["DATA_WIDTH_A"]), _width(p["DATA_WIDTH_B"])):
            if c["CLKA"] != c["CLKB"]:
                continue
            groups = [("AB", [f"DO{s}{i}" for s in "AB" for i in range(_PINS)], c["CLKA"])]
        else:
            groups = [(s, [f"DO{s}{i}" for i in range(_PINS)], c[f"CLK{s}"]) for s in "AB"]
        for sides, pins, clk in groups:
            if any(p.get(f"REGMODE_{s}") != "NOREG" for s in sides):
                continue
            ffs = registers(c, pins, clk)
            if not ffs:
                continue
            enables = [_enable(cells[ff]) for ff, _ in ffs]
            if enables[0] is None or any(e != enables[0] for e in enables):
                continue
            for s in sides:
                p[f"REGMODE_{s}"] = "OUTREG"
                c[f"OCE{s}"] = enables[0]
            for ff, bit in ffs:
                replace[cells.pop(ff)["connections"]["Q"][0]] = bit
            changed.append(f"{name}:{sides}")

    def sub(bits):
        return [replace.get(b, b) if isinstance(b, int) else b for b in bits]

    for cell in cells.values():
        for pin, bits in cell["connections"].items():
            cell["connections"][pin] = sub(bits)
    for port in mod["ports"].values():
        port["bits"] = sub(port["bits"])
    for net in mod["netnames"].values():
        net["bits"] = sub(net["bits"])
    return changed


def absorb_in_file(path: Path, top: str) -> list[str]:
    """:func:`absorb_output_registers` on the Yosys JSON netlist in ``path``, rewritten in
    place. Raises ``ValueError`` if it has no module ``top``."""
    design = json.loads(path.read_text())
    if top not in design.get("modules", {}):
        raise ValueError(f"no module {top!r} in {path}")
    changed = absorb_output_registers(design, top)
    path.write_text(json.dumps(design))
    return changed


def main(argv: list[str] | None = None) -> int:
    """``python -m rtl.board.outreg NETLIST.json TOP``: rewrite a Yosys JSON netlist in place
    (``make board`` runs it between Yosys and nextpnr)."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("netlist", type=Path)
    ap.add_argument("top")
    args = ap.parse_args(argv)
    try:
        changed = absorb_in_file(args.netlist, args.top)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.netlist}: {len(changed)} block RAM ports take their output registers"
          + "".join(f"\n  {port}" for port in changed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
