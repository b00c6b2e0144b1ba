# mmdebstrap --customize-hook: fetch the kernel package (without installing it: no initramfs-tools, no hooks),
# put its modules into the root, drop driver trees a virtual machine never needs, and list the modules (with
# their dependencies, in load order) that the initramfs needs.
#   customize.sh ROOT OUT "PRUNE_DIRS" "INITRD_MODULES"
set -eu
R=$1 OUT=$2 PRUNE=$3 INITRD_MODULES=$4
kpkg=$(chroot "$R" apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)
[ -n "$kpkg" ] || { echo "cannot resolve linux-image-amd64" >&2; exit 1; }
mkdir -p "$R/tmp/kdl"; chroot "$R" chown _apt /tmp/kdl
chroot "$R" sh -c "cd /tmp/kdl && apt-get -q download $kpkg" >&2
chroot "$R" sh -c 'dpkg-deb -x /tmp/kdl/*.deb /tmp/kx'
kv=$(ls "$R/tmp/kx/lib/modules")
mv "$R/tmp/kx/boot/vmlinuz-$kv" "$OUT/vmlinuz"; echo "$kv" > "$OUT/kernel-version"
echo "$kpkg $(chroot "$R" sh -c 'dpkg-deb -f /tmp/kdl/*.deb Version')" > "$OUT/kernel-package"
mkdir -p "$R/usr/lib/modules"; mv "$R/tmp/kx/lib/modules/$kv" "$R/usr/lib/modules/$kv"
for d in $PRUNE; do rm -rf "$R/usr/lib/modules/$kv/kernel/$d"; done
chroot "$R" depmod -a "$kv"
chroot "$R" modprobe -S "$kv" -a --show-depends $INITRD_MODULES > "$OUT/initrd-modules.txt"
rm -rf "$R/tmp/kdl" "$R/tmp/kx"
echo crisp-vm > "$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 crisp-vm\n::1 localhost\n' > "$R/etc/hosts"
chroot "$R" dpkg-query -W -f '${Package} ${Version}\n' > "$OUT/packages.txt"
