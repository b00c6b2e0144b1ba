# crisp: the two commands of the README are `make run` and `make test`; both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
ARGS ?=

# Debian packages: what crispd needs at run time, and what the tests need on top of it
# util-linux (unshare, setsid, mount, umount) and mount: pods and shims run them; nftables: the built-in bridge's
# masquerade and hostPorts; iproute2: `ip` for pod networks; libseccomp2: the built-in executor's seccomp;
# catatonit: PID 1 of a pod that shares its PID namespace
# gcc and libc6-dev: crisp-monitor, the shim's C half (shim/monitor/monitor.c), is compiled in the checkout
BUILD_DEBS := gcc libc6-dev
RUN_DEBS := ca-certificates catatonit iproute2 libseccomp2 mount nftables util-linux $(BUILD_DEBS)
# the VM tier (tests/vm): QEMU (+ qboot from qemu-system-data), and mmdebstrap + mke2fs to build its image
VM_DEBS := qemu-system-x86 qemu-system-data mmdebstrap e2fsprogs
# one package per line (sorted), so that parallel changes merge cleanly
# containernetworking-plugins + iptables: the CNI tests run Debian's plugins, portmap drives iptables;
# runc, crun: the OCI runtime handlers; criu: CheckpointContainer (refused with `criu check`'s words where it
# fails); busybox-static: test containers' rootfs; docker-registry etc.: image tests;
# prometheus: a real Prometheus scrapes crispd with deploy/prometheus.yml; dbus-daemon: crisp's D-Bus client is
# tested against a real bus (systemd itself answers in the VM tier); strace: a pod starts no program but its init
TEST_DEBS := $(RUN_DEBS) $(VM_DEBS) \
	apache2-utils \
	busybox-static \
	containernetworking-plugins \
	criu \
	crun \
	dbus-daemon \
	docker-registry \
	iptables \
	openssl \
	prometheus \
	runc \
	strace \

# .deb files the tests unpack into container root filesystems instead of installing them
TEST_DEB_FILES := busybox
DEB_CACHE := .cache/debs

.PHONY: monitor run test test-conformance test-kubelet test-cluster test-cluster-extended test-extended test-vm vm-image tools \
	images lint unit venv venv-run dist debs-run debs-test clean

# crisp (editable) with what it needs at run time, and nothing else
$(VENV)/.installed-run: pyproject.toml
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || scripts/ensure-debs python3-venv
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e .
	touch $@

# ... and the test tools on top
$(VENV)/.installed: $(VENV)/.installed-run
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# crisp-monitor: built next to its source (scripts/build-monitor), so crisp's wheel and an editable install carry it
MONITOR := shim/monitor/crisp-monitor
$(MONITOR): shim/monitor/monitor.c scripts/build-monitor
	scripts/build-monitor

monitor: $(MONITOR)

venv-run: $(VENV)/.installed-run $(MONITOR)
venv: $(VENV)/.installed $(MONITOR)

debs-run:
	scripts/ensure-debs $(RUN_DEBS)

debs-test:
	scripts/ensure-debs $(TEST_DEBS)
	scripts/fetch-debs $(DEB_CACHE) $(TEST_DEB_FILES)

## tools: build the pinned Go tools (crictl, critest, the kubelet...) into their cache (scripts/build-k8s-tools)
tools:
	scripts/build-k8s-tools >/dev/null

## images: build the test images critest and the kubelet tier pull into their cache (tests/images; CRISP_IMAGES_CACHE)
images: debs-test venv
	$(VENV)/bin/python -m tests.images build

## run: install crisp and start crispd in the foreground on its defaults (as root; ARGS="--log-level debug" ...)
run: debs-run venv-run
	exec $(VENV)/bin/crispd $(ARGS)

## dist: crisp's wheel + a wheelhouse of its dependencies in dist/wheelhouse, for `deploy/install.sh --wheels`
## (another node's Python: make dist DIST_ARGS="--python-version 3.13 --platform manylinux_2_41_x86_64")
DIST_ARGS ?=
dist: venv-run
	$(VENV)/bin/python scripts/dist $(DIST_ARGS)

PYTEST := $(VENV)/bin/pytest -q
# the tiers with a tests/<tier> directory and a target of their own (make test-<tier>); make test runs the rest of the
# suite first (the VM tier with it: one boot), then each of them
TIERS := conformance kubelet cluster
# $(call timed,NAME,COMMAND): one step of make test, followed by its wall time
timed = @start=$$(date +%s); $(2); status=$$?; echo "make test: $(1): $$(( $$(date +%s) - start )) s"; exit $$status

## test: install what the tests need (Debian packages, the Go tools, the test images), then lint, type-check and run
## every tier, printing each step's wall time
test: debs-test venv
	$(call timed,tools,scripts/build-k8s-tools >/dev/null)
	$(call timed,images,$(VENV)/bin/python -m tests.images build)
	$(call timed,lint,$(MAKE) --no-print-directory lint)
	$(call timed,suite,$(PYTEST) $(TIERS:%=--ignore=tests/%))
	$(call timed,conformance,$(PYTEST) tests/conformance)
	$(call timed,kubelet,$(PYTEST) tests/kubelet)
	$(call timed,cluster,$(PYTEST) tests/cluster)

## test-conformance: only critest's validation suite against crispd (tests/conformance; the specs that need cgroup
## controllers run in the VM tier, tests/vm/guest/test_critest.py)
test-conformance: debs-test venv tools images
	$(PYTEST) tests/conformance

## test-kubelet: only the kubelet tier: a real standalone kubelet runs static pods on crispd (tests/kubelet; its
## QoS cgroup path runs in the VM tier, tests/vm/guest/test_kubelet_qos.py)
test-kubelet: debs-test venv tools images
	$(PYTEST) tests/kubelet

## test-cluster: only the cluster tier: a one-node cluster (etcd, the control plane and the kubelet as kubeadm sets
## them up, in a mount and network namespace of its own) runs workloads on crispd, checked through kubectl
## (tests/cluster)
test-cluster: debs-test venv tools images
	$(PYTEST) tests/cluster

## test-cluster-extended: the cluster tier's scenarios beyond make test's budget: the self-hosted control plane (the
## kubelet runs it on crisp from kubeadm's manifests) with crispd killed during a rollout, and the 30-replica scale-up's
## figures
test-cluster-extended: debs-test venv tools images
	$(PYTEST) --extended -m extended tests/cluster

## test-extended: the tests marked `extended`, beyond make test's budget (.ci/run does not run it): crispd killed at
## every fail point of runtime/failpoints.py (make test kills it at one or two per RPC), the cluster tier's (make
## test-cluster-extended) and the kubelet tier's 30 static pods (tests/kubelet/test_scale.py, figures); critest on
## the runc handler fits the conformance tier's budget, so make test runs it
test-extended: debs-test venv tools images
	$(PYTEST) --extended -m extended || [ $$? = 5 ]

## test-vm: only the pure cgroup v2 tier: boots a VM once and runs tests/vm/guest (and every test marked `vm`) in it
test-vm: debs-test venv tools images
	$(VENV)/bin/pytest -q -m vm

## vm-image: build the VM tier's kernel, root image and wheels now (CRISP_VM_CACHE, default /var/cache/crisp-vm)
vm-image: debs-test venv
	$(VENV)/bin/python -m tests.vm build

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## unit: only the tests that need neither root nor a daemon
unit: venv
	$(VENV)/bin/pytest -q tests/unit

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache dist
