"""Write the device as Verilog: ``python -m rtl.export -o build/virtio_blk_handle.v``."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from amaranth.back import verilog

from models import spec

from .top import VirtioBlkHandle

TOP_NAME = "virtio_blk_handle"

# Yosys makes every combinational `always @*` block read a dummy register initialised to 0 so
# that simulators evaluate the block at time 0. Icarus Verilog 11 applies that initialiser
# before the blocks wait for it, so a block whose real inputs never change (an FSM output while
# the state stays 0) keeps its outputs at X. Toggling the dummy register once at time 0, after
# every process has started, evaluates each block. Synthesis and Verilator (which evaluates
# every block at start-up) do not see it.
_DUMP_TRIGGER = re.compile(
    r"^(\s*)reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+)\s+= 0;$", re.MULTILINE)

# Categories Verilator reports on Yosys' generated code (width-extended constants, partial
# case statements of FSM decoders, unused bits of flattened structures): not design issues.
_LINT_PREAMBLE = ("/* verilator lint_off WIDTH */\n/* verilator lint_off CASEINCOMPLETE */\n"
                  "/* verilator lint_off CMPCONST */\n/* verilator lint_off UNUSEDSIGNAL */\n"
                  "/* verilator lint_off DECLFILENAME */\n")


def postprocess(text: str) -> str:
    """Make the generated Verilog simulate from time 0 in Icarus 11 and lint clean."""
    text = _DUMP_TRIGGER.sub(
        lambda mo: (f"{mo.group(1)}reg {mo.group(2)} = 0;\n"
                    "`ifndef SYNTHESIS\n`ifndef VERILATOR\n"
                    f"{mo.group(1)}initial #0 {mo.group(2)} = 1'b1;\n"
                    "`endif\n`endif"), text)
    # (an escaped identifier ends at white space, hence the space before each `=`)
    return _LINT_PREAMBLE + text


def generate(path: Path, **params) -> Path:
    """Convert a :class:`VirtioBlkHandle` with ``params`` and write it to ``path``."""
    top = VirtioBlkHandle(**params)
    text = postprocess(verilog.convert(top, name=TOP_NAME, emit_src=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def parse_features(text: str) -> dict:
    """``VirtioBlkHandle`` keyword arguments from ``--features`` (``ValueError`` if unknown)."""
    switches = {"no-indirect": "indirect", "no-event-idx": "event_idx",
                "no-blk-size": "blk_size", "no-discard": "discard",
                "no-write-zeroes": "write_zeroes"}
    values = {"seg-max": "seg_max", "size-max": "size_max"}
    out: dict = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = item.partition("=")
        if name in switches and not value:
            out[switches[name]] = False
        elif name in values and value.isdigit():
            out[values[name]] = int(value)
        else:
            raise ValueError(f"unknown feature setting {item!r}: expected one of "
                             f"{', '.join(switches)}, seg-max=N, size-max=N")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-o", "--output", type=Path, default=Path("build/virtio_blk_handle.v"))
    parser.add_argument("--data-width", type=int, default=spec.DEFAULT_DATA_WIDTH,
                        choices=(32, 64, 128))
    parser.add_argument("--entries", type=int, default=spec.DEFAULT_ENTRIES)
    parser.add_argument("--queue-num-max", type=int, default=spec.DEFAULT_QUEUE_NUM_MAX)
    parser.add_argument("--disk-bytes", type=int, default=spec.DEFAULT_DISK_BYTES)
    parser.add_argument("--iotlb-entries", type=int, default=spec.DEFAULT_IOTLB_ENTRIES,
                        help="IOTLB entries for IOVA mode (0: none; docs/iotlb.md)")
    parser.add_argument("--no-translation", action="store_true",
                        help="the GPA-only device: no grant table, no handle checks")
    parser.add_argument("--features", default="",
                        help="issue 17's features, comma-separated changes from the default "
                             "(all on): no-indirect, no-event-idx, no-blk-size, no-discard, "
                             "no-write-zeroes, seg-max=N, size-max=N (0: not offered)")
    parser.add_argument("--template", type=Path, default=None,
                        help="also write a Verilog instantiation template to this file")
    args = parser.parse_args(argv)
    try:
        features = parse_features(args.features)
        path = generate(args.output, data_width=args.data_width, entries=args.entries,
                        queue_num_max=args.queue_num_max, disk_bytes=args.disk_bytes,
                        iotlb_entries=args.iotlb_entries, translation=not args.no_translation,
                        **features)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (top module {TOP_NAME}, data width {args.data_width}, "
          f"{args.entries} grant entries, {args.iotlb_entries} IOTLB entries, QueueNumMax "
          f"{args.queue_num_max}, RAM disk {args.disk_bytes} bytes)")
    if args.template is not None:
        from .template import instantiation_template

        args.template.parent.mkdir(parents=True, exist_ok=True)
        args.template.write_text(instantiation_template(
            path.read_text(), TOP_NAME,
            f"data width {args.data_width}, {args.entries} grant entries, "
            f"{args.iotlb_entries} IOTLB entries, QueueNumMax "
            f"{args.queue_num_max}, RAM disk {args.disk_bytes} bytes"))
        print(f"wrote {args.template} (instantiation template)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
