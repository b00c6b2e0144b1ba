#!/bin/bash
# deploy/install.sh: put crisp on a node, or take it off again. Run as root; running it twice changes nothing.
#
#   deploy/install.sh [install] [--wheels DIR] [--driver systemd|cgroupfs] [--cni-only] [--no-start] [--root DIR]
#   deploy/install.sh uninstall [--purge] [--root DIR]
#
# install puts
#   /opt/crisp/venv                 crisp in a venv of its own: from --wheels DIR with no index (`make dist` makes
#                                   dist/wheelhouse), else from this checkout with its dependencies from PyPI
#   /etc/systemd/system/crispd.service   the unit (deploy/crispd.service)
#   /etc/crisp/crisp.toml           a default config, kept when one is there: the systemd cgroup driver when PID 1
#                                   is systemd (else cgroupfs; --driver says otherwise), CNI only with --cni-only
#   /etc/crictl.yaml                pointing at crisp (one that pointed elsewhere is kept as crictl.yaml.crisp-saved)
# and, under a running systemd, enables crispd and (re)starts it (--no-start: enable only; containers are never
# touched by a restart). Without a running systemd (an image build) the unit is only enabled.
# uninstall stops and disables crispd and removes what install put (the saved crictl.yaml comes back; crisp.toml only
# when it is still the one install wrote); --purge also removes /etc/crisp, /var/lib/crisp and /run/crisp.
# Containers go on running without crispd: remove the pods first (crictl rmp -fa).
# --root DIR: everything below DIR, and no systemctl (tests).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
action=install wheels="" driver="" cni_only=0 start=1 purge=0 root=""
while [ $# -gt 0 ]; do
    case "$1" in
        install|uninstall) action=$1 ;;
        --wheels) wheels=$(cd "$2" && pwd); shift ;;
        --driver) driver=$2; shift ;;
        --cni-only) cni_only=1 ;;
        --no-start) start=0 ;;
        --purge) purge=1 ;;
        --root) root=$(cd "$2" && pwd); shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$driver" in ""|systemd|cgroupfs) ;; *) echo "install.sh: --driver is systemd or cgroupfs" >&2; exit 2 ;; esac

PREFIX=$root/opt/crisp VENV=$root/opt/crisp/venv UNIT=$root/etc/systemd/system/crispd.service
CONFIG=$root/etc/crisp/crisp.toml CRICTL=$root/etc/crictl.yaml SAVED=$root/etc/crictl.yaml.crisp-saved
STAMP=$PREFIX/crisp.toml.sha256  # the checksum of the crisp.toml install wrote: uninstall removes only that one

say() { echo "crisp: $*"; }
# a running systemd as PID 1 (sd_booted's test); never with --root
systemd_running() { [ -z "$root" ] && [ -d /run/systemd/system ]; }
# systemctl works in an image build too (enable only makes links), but not below --root
have_systemctl() { [ -z "$root" ] && command -v systemctl >/dev/null; }

default_config() {
    local d=$driver
    [ -n "$d" ] || { if [ -d /run/systemd/system ]; then d=systemd; else d=cgroupfs; fi; }
    echo "# written by deploy/install.sh; every key not here has its default (\`crispd config\` prints them all)"
    echo "[cgroup]"
    if [ "$d" = systemd ]; then
        echo 'driver = "systemd"                # PID 1 is systemd: the kubelet gets cgroupDriver systemd from crisp'
    else
        echo 'driver = "cgroupfs"'
    fi
    if [ "$cni_only" = 1 ]; then
        echo "[network]"
        echo 'backend = "cni"                   # NetworkReady only once a CNI config is in /etc/cni/net.d'
    fi
}

install_venv() {
    python3 -c 'import venv, ensurepip' 2>/dev/null \
        || { echo "install.sh: python3 with venv is needed (Debian: apt-get install python3-venv)" >&2; exit 1; }
    command -v catatonit >/dev/null || echo "install.sh: warning: catatonit is missing; pods that share their PID" \
        "namespace need it as PID 1 (Debian: apt-get install catatonit)" >&2
    mkdir -p "$PREFIX"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    local had_crisp=0
    "$VENV/bin/python" -I -c 'import importlib.metadata as m; m.version("crisp")' 2>/dev/null && had_crisp=1
    local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
    if [ -n "$wheels" ]; then
        "${pip[@]}" install --no-index --find-links "$wheels" --upgrade crisp
        # the same version built again (a development build) replaces one installed before this run (a fresh
        # venv got it just now: pip is slow enough to run once where once will do)
        if [ "$had_crisp" = 1 ]; then
            "${pip[@]}" install --no-index --find-links "$wheels" --force-reinstall --no-deps crisp
        fi
    else
        "${pip[@]}" install --upgrade "$REPO"
    fi
    say "$("$VENV/bin/crispd" version) in $VENV"
}

install_files() {
    mkdir -p "$(dirname "$UNIT")" "$(dirname "$CONFIG")"
    install -m 0644 "$HERE/crispd.service" "$UNIT"
    if [ ! -e "$CONFIG" ]; then
        default_config > "$CONFIG"
        sha256sum "$CONFIG" | cut -d' ' -f1 > "$STAMP"
        say "wrote $CONFIG"
    else
        say "kept $CONFIG"
    fi
    if [ -e "$CRICTL" ] && ! cmp -s "$CRICTL" "$HERE/crictl.yaml" && [ ! -e "$SAVED" ]; then
        mv "$CRICTL" "$SAVED"
        say "saved the previous $CRICTL as $SAVED"
    fi
    install -m 0644 "$HERE/crictl.yaml" "$CRICTL"
}

do_install() {
    install_venv
    install_files
    if systemd_running; then
        systemctl enable crispd.service  # and a daemon-reload, which reads the new unit (systemctl's own)
        if [ "$start" = 1 ]; then
            systemctl restart crispd.service  # Type=notify: returns once crispd serves
            say "crispd is $(systemctl is-active crispd.service)"
        fi
    elif have_systemctl; then
        systemctl enable crispd.service
    else
        say "no systemd here: start it with $VENV/bin/crispd --config /etc/crisp/crisp.toml"
    fi
}

do_uninstall() {
    # a pod left behind still has mounts there (namespace pins, root file systems): never delete through them
    if [ "$purge" = 1 ] && grep -qE " ($root/var/lib/crisp|$root/run/crisp)(/| )" /proc/self/mountinfo; then
        echo "install.sh: crisp's pods still have mounts below /var/lib/crisp or /run/crisp: remove the pods" \
             "(crictl rmp -fa) before --purge" >&2
        exit 1
    fi
    if systemd_running; then
        systemctl disable --now crispd.service 2>/dev/null || true
        systemctl reset-failed crispd.service 2>/dev/null || true
    elif have_systemctl; then
        systemctl disable crispd.service 2>/dev/null || true
    fi
    rm -f "$UNIT"
    systemd_running && systemctl daemon-reload
    if [ -e "$CONFIG" ] && [ -e "$STAMP" ] && [ "$(sha256sum "$CONFIG" | cut -d' ' -f1)" = "$(cat "$STAMP")" ]; then
        rm -f "$CONFIG"
        rmdir "$(dirname "$CONFIG")" 2>/dev/null || true
    fi
    if [ -e "$CRICTL" ] && cmp -s "$CRICTL" "$HERE/crictl.yaml"; then
        rm -f "$CRICTL"
    fi
    [ -e "$SAVED" ] && mv "$SAVED" "$CRICTL"
    rm -rf "$PREFIX"
    if [ "$purge" = 1 ]; then
        rm -rf "$root/etc/crisp" "$root/var/lib/crisp" "$root/run/crisp"
    fi
    say "uninstalled"
}

[ "$(id -u)" = 0 ] || { echo "install.sh: run it as root" >&2; exit 1; }
"do_$action"
