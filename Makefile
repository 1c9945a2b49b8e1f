# vhotplug: `make demo` and `make test` are the two commands the README shows first.
SHELL := /bin/bash
# The Swift toolchain: on PATH, or else where the README's install step puts it.
SWIFT ?= $(shell command -v swift 2>/dev/null || { [ -x /opt/swift/usr/bin/swift ] && echo /opt/swift/usr/bin/swift; } || echo swift)
# What building vhotplug needs (and, of it, usb.ids and pci.ids at run time) ...
BUILD_PACKAGES := libudev-dev libusb-1.0-0-dev libpci-dev usb.ids pci.ids
# ... and what its tests, the lab and the demo need besides.
DEB_PACKAGES := $(BUILD_PACKAGES) pciutils usbutils hwdata \
	umockdev libumockdev-dev gir1.2-umockdev-1.0 socat qemu-system-x86 udev busybox-static cpio python3

.PHONY: all build release deps deps-build test test-unit test-lab demo clean

all: build

## deps: install the Debian packages vhotplug and its tests need (only the missing ones).
deps:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(DEB_PACKAGES)"

## deps-build: only what building vhotplug needs (`make build`, `make release` on a host).
deps-build:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(BUILD_PACKAGES)"

.PHONY: install-packages
install-packages:
	@missing=$$(for p in $(PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

## build, release: vhotplug alone (the benchmarks and test tools need umockdev, which a host has no use for).
build: swift-check deps-build
	$(SWIFT) build --product vhotplug

release: swift-check deps-build
	$(SWIFT) build -c release --static-swift-stdlib --product vhotplug

## swift-check: a Swift toolchain (6.2 or later) must be on PATH, or in /opt/swift (see the README).
.PHONY: swift-check
swift-check:
	@command -v $(SWIFT) >/dev/null || { echo "make: no Swift toolchain: '$(SWIFT)' is not on PATH. Install Swift 6.2 or later for Debian 12 from https://www.swift.org/install/linux/ (e.g. unpacked in /opt/swift, then export PATH=/opt/swift/usr/bin:\$$PATH), or set SWIFT=/path/to/swift" >&2; exit 2; }

## test: every test: unit and umockdev tests (swift test), then the real-kernel lab.
## The time each part took is printed at the end (the whole must stay under 15 minutes).
test:
	@start=$$(date +%s); \
	$(MAKE) test-unit && unit=$$(date +%s) && \
	$(MAKE) test-fuzz && fuzz=$$(date +%s) && \
	$(MAKE) test-lab && lab=$$(date +%s) && \
	echo "make test: passed in $$((lab - start)) s (unit $$((unit - start)) s, fuzz $$((fuzz - unit)) s, lab $$((lab - fuzz)) s)"

## test-unit: the Swift tests. They run under umockdev's preload: a testbed's
## uevents reach other processes (vhotplug, QEMU) only from a preloaded sender.
test-unit: swift-check deps
	$(SWIFT) build --build-tests
	@# umockdev's fake netlink holds few datagrams by default (a socket's queue, set when it is
	@# made), and umockdev's sender aborts the test process on a full one: the storm test sends
	@# about 1000 usb_device uevents in 0.2 s to each listener (the daemon, its libusb, two
	@# QEMUs' libusb), and a queue of 1000 overflowed once in session 6's five full runs. A kernel's netlink
	@# socket holds bytes (vhotplug asks for 8 MiB), not a count.
	@if [ "$$(id -u)" = 0 ] && [ "$$(cat /proc/sys/net/unix/max_dgram_qlen)" -lt 8192 ]; then \
		echo 8192 > /proc/sys/net/unix/max_dgram_qlen; fi
	@# Two processes side by side, one test at a time in each (tools/test-unit.sh says why).
	SWIFT="$(SWIFT)" tools/test-unit.sh

test-lab: swift-check deps
	$(SWIFT) build
	python3 tools/lab/test_lab.py

demo: swift-check deps
	$(SWIFT) build
	python3 tools/lab/lab.py demo

## fuzz: every libFuzzer target (tools/fuzz) for FUZZ_SECONDS each (default 300);
## crashes are saved in tools/fuzz/crashes/TARGET/. test-fuzz (part of `make test`):
## each target briefly (FUZZ_TEST_SECONDS, default 5), failing on any crash.
.PHONY: fuzz test-fuzz
FUZZ_SECONDS ?= 300
FUZZ_TEST_SECONDS ?= 5
fuzz: swift-check deps
	tools/fuzz/run.sh $(FUZZ_SECONDS)

test-fuzz: swift-check deps
	@# Built without optimization: 27 s to build instead of 92 here, for about a quarter of
	@# the executions a second (thousands in 5 s). `make fuzz` builds with -O.
	FUZZ_OPT=-Onone tools/fuzz/run.sh $(FUZZ_TEST_SECONDS)

clean:
	rm -rf .build
