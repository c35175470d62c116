# frakti: `make run` starts the runtime, `make test` runs every test.
# Every target installs what is missing first (scripts/deps.sh) and is quick when nothing changed.
SHELL := /bin/bash
CARGO ?= cargo
HOST_TARGET := x86_64-unknown-linux-gnu
AGENT_BIN := target/$(HOST_TARGET)/release/frakti-agent
GUEST_DIR := target/guest
PYTHON := target/pyenv/bin/python
export CARGO_TERM_COLOR ?= never

PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all deps build agent guest run test test-kubelet bench lint clean install uninstall fuzz

all: build

deps:
	@bash scripts/deps.sh

# The daemon and tools (release), then the static agent and the guest assets.
build: deps
	$(CARGO) build --release --workspace --exclude agent
	@$(MAKE) --no-print-directory guest

agent:
	LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p agent --target $(HOST_TARGET)
	@mkdir -p $(GUEST_DIR)
	strip -o $(GUEST_DIR)/frakti-agent $(AGENT_BIN)

guest: agent
	bash guest/build.sh $(GUEST_DIR)/frakti-agent $(GUEST_DIR)

# Starts frakti in the foreground with its embedded defaults
# (socket /run/frakti/frakti.sock), after `frakti check` has shown whether
# this host can run pods. Extra flags: make run ARGS="--accel tcg".
run: build
	-./target/release/frakti $(ARGS) check
	./target/release/frakti $(ARGS)

# What `make build` made, into $(DESTDIR)$(PREFIX) (see scripts/install.sh);
# build first, as a user who may: `make build && sudo make install`.
install:
	PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) bash scripts/install.sh install

uninstall:
	PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) bash scripts/install.sh uninstall

# The fuzz targets for longer: `make fuzz FUZZ_SECONDS=600`.
fuzz: deps
	bash scripts/fuzz.sh

# Runs every fuzz target for 20 s from its seed corpus (scripts/fuzz.sh).
# Ends by checking that the tests left nothing on the host (VMs, netns,
# links, mounts, iptables rules, IPAM leases, pod cgroups), once the node
# networking their CNI networks made (bridges, portmap chains) is removed.
test: build
	bash streaming/tests/install-clients.sh
	@mkdir -p target
	bash scripts/host-inventory.sh > target/host-inventory.before
	$(CARGO) test --release --workspace
	$(PYTHON) tests/python/test_cri.py
	bash scripts/fuzz.sh
	bash scripts/host-inventory.sh --remove-networking-since target/host-inventory.before
	bash scripts/host-inventory.sh --since target/host-inventory.before

# A real kubelet (1.20, CRI v1alpha2, built once per machine from Debian's
# source package by scripts/kubelet.sh) runs a static pod on frakti.
test-kubelet: build
	@mkdir -p target
	bash scripts/host-inventory.sh > target/host-inventory.kubelet
	FRAKTI_KUBELET=$$(bash scripts/kubelet.sh) $(CARGO) test --release -p e2e --test kubelet -- --ignored
	bash scripts/host-inventory.sh --remove-networking-since target/host-inventory.kubelet
	bash scripts/host-inventory.sh --since target/host-inventory.kubelet

bench: build
	./target/release/frakti-bench $(ARGS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets --workspace -- -D warnings

clean:
	$(CARGO) clean
