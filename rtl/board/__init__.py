"""The FPGA board build: the device with guest memory in block RAM and a UART host link.

``rtl.board.top.BoardTop`` is the platform-independent top (simulated by ``tb/test_board.py``),
``rtl.board.build`` wraps it for the Radiona ULX3S (ECP5 LFE5U-85F) and ``rtl.board.report``
synthesises and places the device alone for the area and Fmax report. docs/board.md is the
user's guide, including the link protocol (``sw/link.py`` is the host side).
"""
