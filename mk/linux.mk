# make linux: an unmodified Linux guest under QEMU drives the RTL through a vhost-user-blk
# bridge (docs/linux.md). Debian packages are installed on first use (on CI or as root); the
# kernel, the initramfs and the RTL build are cached under build/linux/ and build/sim/.
#
#   make linux          the RTL (cocotb + Icarus, data width 128, 4 MiB RAM disk, every feature
#                       of issue 17 offered): raw O_DIRECT checks up to 512 KiB requests,
#                       blkdiscard, BLKZEROOUT, an ext2 filesystem, the notification workload;
#                       then a second boot with QEMU's event_idx=off runs that workload again
#                       (kicks and interrupts per request with and without EVENT_IDX)
#   make linux-model    the same guest against the reference model (seconds): debugging aid
#   make linux LINUX_MODE=iova   behind QEMU's intel-iommu: the guest's DMA goes through IOVAs
#                       the device translates with its IOTLB, the bridge plays the hypervisor
#   LINUX_ARGS=--single-boot     skips the second boot

LINUX_PACKAGES := qemu-system-x86 busybox-static cpio
LINUX_ARGS     ?=
LINUX_MODE     ?= gpa

.PHONY: linux linux-model check-linux

check-linux:
	@{ command -v qemu-system-x86_64 && [ -e /usr/share/qemu/qboot.rom ] && \
	   [ -x /bin/busybox ] && command -v cpio; } >/dev/null 2>&1 || { \
	  if [ -n "$$CI" ] || [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages for the Linux guest: $(LINUX_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $(LINUX_PACKAGES); \
	  else \
	    echo "error: the Linux guest needs Debian packages: $(LINUX_PACKAGES)"; \
	    echo "       Install them with: sudo apt-get install --no-install-recommends $(LINUX_PACKAGES)"; \
	    exit 1; \
	  fi; }

linux: $(STAMP) check-sim check-linux
	$(PY) -m tools.linux.run --mode $(LINUX_MODE) $(LINUX_ARGS)

linux-model: $(STAMP) check-linux
	$(PY) -m tools.linux.run --model --mode $(LINUX_MODE) $(LINUX_ARGS)
