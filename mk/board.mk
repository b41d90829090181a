# FPGA board flow (issue 5): ULX3S bitstream, area/Fmax report, board link simulation.
#
#   make board          build/board/ulx3s.bit for the Radiona ULX3S (ECP5 LFE5U-85F, speed 6)
#                       with the YoWASP toolchain from PyPI (BAUD=1000000, BOARD_MEM_BYTES=65536)
#   make fpga-report    synthesise, place and route the device in every configuration (entries
#                       256/1024/4096 x data width 32/64/128; forms handle (with the 64-entry
#                       IOTLB), grant (without) and gpa; seeds 1 and 2) and, at 64 x 1024, the
#                       feature forms (handle with issue 17's features left out: no-indirect,
#                       no-event-idx, no-limits, no-dwz, none): build/board/report.json and
#                       report.md. FPGA_CONFIGS=64x1024 FPGA_SEEDS=1,2,3,4 FPGA_JOBS=1
#                       FPGA_FORMS=handle,none FPGA_FEATURE_CONFIGS=32x256 narrow or widen it;
#                       FPGA_HANDLE_SEEDS=1,2,3,4,5,6,7,8,9,10 gives the handle form its own
#                       seeds (a ten-seed median); FPGA_OUT=build/fpga-seeds writes elsewhere
#   make board-sim      the long UART-link co-simulation (full demo workload, both modes)
#   make verilog-template  build/virtio_blk_handle.v plus build/virtio_blk_handle_inst.v
#
# See docs/board.md.

BOARD_STAMP     := $(VENV)/.installed-board
BAUD            ?= 1000000
BOARD_MEM_BYTES ?= 65536
FPGA_CONFIGS    ?= 32x256,32x1024,32x4096,64x256,64x1024,64x4096,128x256,128x1024,128x4096
FPGA_SEEDS      ?= 1,2
FPGA_HANDLE_SEEDS ?= $(FPGA_SEEDS)
FPGA_FORMS      ?= handle,grant,gpa,no-indirect,no-event-idx,no-limits,no-dwz,none
FPGA_FEATURE_CONFIGS ?= 64x1024
FPGA_JOBS       ?= 2
FPGA_OUT        ?= build/board

.PHONY: board fpga-report board-sim verilog-template

$(BOARD_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[board]'
	@touch $@

board: $(BOARD_STAMP)
	$(PY) -m rtl.board.build --build-dir build/board --baud $(BAUD) \
	  --mem-bytes $(BOARD_MEM_BYTES) --data-width $(DATA_WIDTH) --entries $(ENTRIES)

fpga-report: $(BOARD_STAMP)
	$(PY) -m rtl.board.report --out $(FPGA_OUT) --configs $(FPGA_CONFIGS) \
	  --seeds $(FPGA_SEEDS) --handle-seeds $(FPGA_HANDLE_SEEDS) --forms $(FPGA_FORMS) \
	  --feature-configs $(FPGA_FEATURE_CONFIGS) --jobs $(FPGA_JOBS)

board-sim: $(STAMP) check-sim
	VHB_BOARD_LONG=1 $(PY) -m pytest -q -n $(JOBS) tests/test_board_sim.py

verilog-template: $(STAMP)
	$(PY) -m rtl.export -o build/virtio_blk_handle.v --data-width $(DATA_WIDTH) \
	  --entries $(ENTRIES) --queue-num-max $(QUEUE_NUM_MAX) --disk-bytes $(DISK_BYTES) \
	  --template build/virtio_blk_handle_inst.v
