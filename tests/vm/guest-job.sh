#!/bin/bash
# The job of a VM tier run (tests/vm/tier.py): install crisp's wheel into the image's venv, copy the tests out of
# the 9p share, run the selected tests with pytest. Every test's result goes to $IO/results.jsonl (tests/vm/plugin.py).
set -euo pipefail
IO=/run/crisp-vm/io
stamp() { echo "$1 $(cut -d' ' -f1 /proc/uptime)" >> "$IO/timings"; }
stamp job-start
export PATH=/opt/crisp-tests/bin:$PATH
# the tests run from a copy, so `import runtime` finds the installed crisp and not the checkout on 9p (deploy/:
# the systemd guest installs crisp with deploy/kind/setup-node.sh)
mkdir -p /tmp/crisp-src
# (and the .deb files `make test` fetched for container root filesystems, if any)
extra=$(cd /mnt/host && ls -d .cache/debs 2>/dev/null || true)
tar -C /mnt/host --exclude=__pycache__ -cf - tests deploy scripts pyproject.toml $extra | tar -C /tmp/crisp-src -xf -
cd /tmp/crisp-src
# crisp from the checkout's wheel, into the guest's venv (no network: the dependencies are already there)
/opt/crisp-tests/bin/python tests/vm/install_wheel.py "$IO"/crisp-wheel/crisp-*.whl
stamp crisp-installed
if [ -d /run/systemd/system ]; then
    # the systemd guest: the tests start on a booted node, as a kind node's kubelet does. While PID 1 was still
    # busy with the boot's jobs under emulation, crisp's D-Bus client twice had no reply to Subscribe for 30 s.
    booted=$(timeout 600 systemctl is-system-running --wait 2>/dev/null || true)
    stamp "booted-${booted:-unknown}"
fi
mapfile -t nodeids < "$IO/nodeids"
stamp pytest-start
export CRISP_VM_GUEST=1 CRISP_VM_RESULTS="$IO/results.jsonl" CRISP_VM_TIMINGS="$IO/timings"
exec /opt/crisp-tests/bin/python -m pytest -p no:cacheprovider -o addopts= --strict-markers -ra -v --tb=long \
    --rootdir /tmp/crisp-src "${nodeids[@]}"
