#!/bin/bash
# deploy/kind/setup-node.sh: every step that turns a kind node (kindest/node: systemd as PID 1, containerd, the
# kubelet in kubelet.slice) into a node whose runtime is crisp. deploy/kind/Dockerfile runs it while building the
# node image; the VM tier runs it on a live systemd guest. Idempotent.
#
#   deploy/kind/setup-node.sh [--wheels DIR]     (DIR: `make dist`'s wheelhouse; default: PyPI + this checkout)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEPLOY=$(dirname "$HERE")
wheels=()
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) wheels=(--wheels "$2"); shift ;;
        *) echo "setup-node.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
say() { echo "crisp-kind: $*"; }
running() { [ -d /run/systemd/system ]; }  # a live node (not an image build)

# 1. Python for crisp's venv and catatonit (a shared-PID pod's PID 1): kind's node image has neither (apt needs
# the network: an image build has it)
if ! python3 -c 'import venv, ensurepip' 2>/dev/null || ! command -v catatonit >/dev/null; then
    say "installing python3, python3-venv and catatonit"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv catatonit \
        >/dev/null
    rm -rf /var/lib/apt/lists/*
fi

# 2. containerd stays installed but never starts (kind's preloaded images live there, unused)
if [ -e /etc/systemd/system/containerd.service ] || [ -e /lib/systemd/system/containerd.service ]; then
    running && systemctl stop containerd.service 2>/dev/null || true
    systemctl disable containerd.service 2>/dev/null || true
    say "containerd disabled"
fi

# 3. the kubelet: crispd's service is the runtime's cgroup, and it starts after crispd (the CRI socket comes from
#    kubeadm's nodeRegistration.criSocket, set by kind-config.yaml)
RUNTIME_CGROUPS=--runtime-cgroups=/system.slice/crispd.service
if [ -f /etc/default/kubelet ] && grep -q -- '--runtime-cgroups=' /etc/default/kubelet; then
    sed -i "s|--runtime-cgroups=[^ \"']*|$RUNTIME_CGROUPS|" /etc/default/kubelet
elif [ -f /etc/default/kubelet ] && grep -q '^KUBELET_EXTRA_ARGS=' /etc/default/kubelet; then
    sed -i "s|^KUBELET_EXTRA_ARGS=\"\{0,1\}|&$RUNTIME_CGROUPS |" /etc/default/kubelet
else
    echo "KUBELET_EXTRA_ARGS=$RUNTIME_CGROUPS" >> /etc/default/kubelet
fi
mkdir -p /etc/systemd/system/kubelet.service.d
cat > /etc/systemd/system/kubelet.service.d/20-crisp.conf <<'UNIT'
# written by crisp's deploy/kind/setup-node.sh: the kubelet's runtime is crisp
[Unit]
Wants=crispd.service
After=crispd.service
UNIT

# 4. crisp: its venv in /opt/crisp, crispd.service, /etc/crisp/crisp.toml and /etc/crictl.yaml. kind nodes use
#    the systemd cgroup driver (the kubelet takes it from crisp's RuntimeConfig) and kindnet's CNI config, which
#    appears only after the node started: CNI only, so that NetworkReady waits for it. Last, so that the one
#    daemon-reload of the installer's `systemctl enable` reads the kubelet's drop-in too; on a live node the
#    installer then starts crispd (Type=notify: it returns once crispd serves CRI), an image build leaves that to
#    the node's boot.
"$DEPLOY/install.sh" install --driver systemd --cni-only "${wheels[@]}"
say "done: crisp is this node's container runtime"
