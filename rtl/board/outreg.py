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

from collections import defaultdict

__all__ = ["absorb_output_registers"]

_PINS = 18


def _const(bits, value: str) -> bool:
    return bits == [value]


def _width(param) -> int:
    return int(param, 2) if isinstance(param, str) else int(param)


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

    replace: dict[int, int] = {}  # a flip-flop's Q -> the output it registered
    removed: list[str] = []
    changed: list[str] = []
    for name, cell in list(cells.items()):
        if cell["type"] != "DP16KD":
            continue
        p, c = cell["parameters"], cell["connections"]
        if not (p.get("CLKAMUX", "CLKA") == "CLKA" and p.get("CLKBMUX", "CLKB") == "CLKB"
                and _const(c["RSTA"], "0") and _const(c["RSTB"], "0")):
            continue
        wide = 36 in (_width(p["DATA_WIDTH_A"]), _width(p["DATA_WIDTH_B"]))
        if wide:
            if c["CLKA"] != c["CLKB"]:
                continue
            groups = [("AB", [f"DO{s}{i}" for s in "AB" for i in range(_PINS)], c["CLKA"])]
        else:
            groups = [(s, [f"DO{s}{i}" for i in range(_PINS)], c[f"CLK{s}"]) for s in "AB"]
        for sides, pins, clk in groups:
            if any(p.get(f"REGMODE_{s}") != "NOREG" for s in sides):
                continue
            ffs: list[tuple[str, int]] = []  # (flip-flop, output bit)
            ok = True
            for pin in pins:
                bit = c[pin][0]
                if not isinstance(bit, int) or not sinks.get(bit):
                    continue
                if bit in port_bits:
                    ok = False
                    break
                for sink, sink_pin in sinks[bit]:
                    ff = cells[sink]
                    fp, fc = ff["parameters"], ff["connections"]
                    if not (ff["type"] == "TRELLIS_FF" and sink_pin == "DI"
                            and fc["CLK"] == clk and fp.get("CLKMUX", "CLK") == "CLK"
                            and fp.get("REGSET", "RESET") == "RESET"
                            and (_const(fc.get("LSR", ["0"]), "0")
                                 or fp.get("LSRMUX") == "0")):
                        ok = False
                        break
                    ffs.append((sink, bit))
                if not ok:
                    break
            if not ok or not ffs:
                continue
            enables = set()
            for ff, _ in ffs:
                fp, fc = cells[ff]["parameters"], cells[ff]["connections"]
                mux = fp.get("CEMUX", "1").strip()
                enables.add(("1",) if mux == "1" else
                            tuple(fc["CE"]) if mux == "CE" else ("bad",))
            if len(enables) != 1 or ("bad",) in enables:
                continue
            (enable,) = enables
            oce = ["1"] if enable == ("1",) else list(enable)
            for s in sides:
                p[f"REGMODE_{s}"] = "OUTREG"
                c[f"OCE{s}"] = oce
            for ff, bit in ffs:
                replace[cells[ff]["connections"]["Q"][0]] = bit
                removed.append(ff)
            changed.append(f"{name}:{sides}")

    for ff in removed:
        del cells[ff]

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


def main(argv: list[str] | None = None) -> int:
    """``python -m rtl.board.outreg NETLIST.json TOP``: rewrite a Yosys JSON netlist in place
    (``make board`` runs it between Yosys and nextpnr)."""
    import argparse
    import json
    import sys
    from pathlib import Path

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("netlist", type=Path)
    ap.add_argument("top")
    args = ap.parse_args(argv)
    try:
        design = json.loads(args.netlist.read_text())
        if args.top not in design.get("modules", {}):
            raise ValueError(f"no module {args.top!r} in {args.netlist}")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    changed = absorb_output_registers(design, args.top)
    args.netlist.write_text(json.dumps(design))
    print(f"{args.netlist}: {len(changed)} block RAM ports take their output registers"
          + "".join(f"\n  {port}" for port in changed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
