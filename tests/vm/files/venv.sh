# mmdebstrap --customize-hook: the guest's venvs, from the wheels the host prepared, at host speed (under TCG pip
# and the byte-compiling it does take minutes):
# - /opt/crisp-tests, the test runner's: crisp's dependencies and pytest; the guest installs crisp's own wheel into it
#   when it boots;
# - /opt/crisp/venv, the one deploy/install.sh makes on a node (`python3 -m venv`, pip included), with crisp's
#   run-time dependencies (REQUIREMENTS) and not crisp: the systemd guest's installer then installs crisp's wheel
#   into it from the wheelhouse with no dependency left to fetch or build.
#   venv.sh ROOT WHEELS_DIR OUT REQUIREMENTS
set -eu
R=$1 WHEELS=$2 OUT=$3 REQUIREMENTS=$4
mkdir -p "$R/tmp/crisp-wheels"
cp "$WHEELS"/*.whl "$R/tmp/crisp-wheels/"
cp "$REQUIREMENTS" "$R/tmp/crisp-wheels/node-requirements.txt"
chroot "$R" python3 -m venv /opt/crisp-tests
chroot "$R" sh -c '/opt/crisp-tests/bin/pip install -q --no-cache-dir --no-index --disable-pip-version-check /tmp/crisp-wheels/*.whl'
chroot "$R" python3 -m venv /opt/crisp/venv
chroot "$R" /opt/crisp/venv/bin/pip install -q --no-cache-dir --no-index --disable-pip-version-check \
    --find-links /tmp/crisp-wheels -r /tmp/crisp-wheels/node-requirements.txt
rm -rf "$R/tmp/crisp-wheels"
chroot "$R" /opt/crisp-tests/bin/pip freeze --disable-pip-version-check > "$OUT/venv-packages.txt"
chroot "$R" /opt/crisp/venv/bin/pip freeze --disable-pip-version-check > "$OUT/node-venv-packages.txt"
