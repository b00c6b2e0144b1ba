# mmdebstrap --customize-hook: create the guest's venv /opt/crisp-tests from the wheels the host prepared (crisp's
# dependencies and pytest), at host speed; the guest then only installs crisp's own wheel when it boots.
#   venv.sh ROOT WHEELS_DIR OUT
set -eu
R=$1 WHEELS=$2 OUT=$3
mkdir -p "$R/tmp/crisp-wheels"
cp "$WHEELS"/*.whl "$R/tmp/crisp-wheels/"
chroot "$R" python3 -m venv /opt/crisp-tests
chroot "$R" sh -c '/opt/crisp-tests/bin/pip install -q --no-cache-dir --no-index --disable-pip-version-check /tmp/crisp-wheels/*.whl'
rm -rf "$R/tmp/crisp-wheels"
chroot "$R" /opt/crisp-tests/bin/pip freeze --disable-pip-version-check > "$OUT/venv-packages.txt"
