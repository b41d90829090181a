"""Checks of the device parameters, shared by the blocks and the top level so that a bad value
is rejected at construction with the same message wherever it is given."""

from __future__ import annotations


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_data_width(data_width) -> int:
    if data_width not in (32, 64, 128) or not _is_int(data_width):
        raise ValueError(f"Data width must be 32, 64 or 128, not {data_width!r}")
    return data_width


def check_entries(entries) -> int:
    if not _is_int(entries) or entries < 1:
        raise ValueError(f"Entries must be a positive integer, not {entries!r}")
    return entries


def check_queue_num_max(queue_num_max) -> int:
    if (not _is_int(queue_num_max) or not 1 <= queue_num_max <= 32768
            or queue_num_max & (queue_num_max - 1)):
        raise ValueError(f"Queue size maximum must be a power of two in [1, 32768], "
                         f"not {queue_num_max!r}")
    return queue_num_max


def check_disk_bytes(disk_bytes, data_width: int) -> int:
    if (not _is_int(disk_bytes) or disk_bytes <= 0 or disk_bytes % 512
            or disk_bytes % (2 * data_width // 8)):
        raise ValueError(f"Disk size must be a positive multiple of 512 bytes, "
                         f"not {disk_bytes!r}")
    return disk_bytes


def one_hot(fsm) -> None:
    """Ask Yosys to encode the state register of Amaranth FSM ``fsm`` one-hot.

    Amaranth 0.5 encodes FSM states in binary and Yosys does not extract its FSMs by itself, so
    every "in state X" is a compare of all the state bits, several logic levels deep on an ECP5;
    the engines' datapaths select on those. One-hot makes each a single flip-flop. The attribute
    is Yosys's ``fsm_encoding``; Amaranth has no public way to set it on an FSM's state signal,
    hence the private access (checked by ``tests/test_rtl_construction.py``).
    """
    fsm._data["signal"].attrs["fsm_encoding"] = "one-hot"
