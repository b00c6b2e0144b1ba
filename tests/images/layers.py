"""The layers of the test images, from unpacked Debian packages and the Go helpers (see catalogue.py for the images).

The base layer is what the upstream busybox image holds: Debian's dynamic busybox (not busybox-static, whose shell
runs applets in-process: critest's MaskedPaths spec masks /bin/ls and expects the shell's exec to be refused) with
every applet a hard link in /bin, the glibc it needs, and busybox's /etc/passwd and /etc/group.
"""

from __future__ import annotations

from tests.images.inputs import Package, with_parents
from tests.imagetools import Entry, Layer, directory, file, hardlink, layer, symlink

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# the users and groups of the upstream busybox image
PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = "".join(f"{name}:x:{gid}:{members}\n" for name, gid, members in (
    ("root", 0, ""), ("daemon", 1, ""), ("bin", 2, ""), ("sys", 3, ""), ("adm", 4, ""), ("tty", 5, ""),
    ("disk", 6, ""), ("lp", 7, ""), ("mail", 8, ""), ("kmem", 9, ""), ("wheel", 10, "root"), ("cdrom", 11, ""),
    ("dialout", 18, ""), ("floppy", 19, ""), ("video", 28, ""), ("audio", 29, ""), ("tape", 32, ""),
    ("www-data", 33, ""), ("operator", 37, ""), ("utmp", 43, ""), ("plugdev", 46, ""), ("staff", 50, ""),
    ("lock", 54, ""), ("netdev", 82, ""), ("users", 100, ""), ("nogroup", 65534, ""),
))

# Debian's busybox has no pgrep and no ipcs applet; critest runs `pgrep sleep` (the execSync timeout spec) and
# `ipcs -m` (the HostIpc specs). Two small shell programs stand in, reading /proc as the applets do.
PGREP = b"""#!/bin/sh
# pgrep [-f] [-x] PATTERN: the pids whose name (with -f: whole command line) matches the extended regex PATTERN
full=0; exact=0
while [ $# -gt 1 ]; do
    case $1 in -f) full=1 ;; -x) exact=1 ;; -fx|-xf) full=1; exact=1 ;; *) break ;; esac
    shift
done
[ $# -eq 1 ] || { echo "usage: pgrep [-f] [-x] PATTERN" >&2; exit 2; }
pattern=$1
[ $exact = 1 ] && pattern="^($pattern)\\$"
status=1
for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [ "$pid" = $$ ] && continue
    if [ $full = 1 ]; then name=$(tr '\\0' ' ' < "$dir/cmdline" 2>/dev/null); name=${name% }
    else read -r name < "$dir/comm" 2>/dev/null || continue; fi
    [ -n "$name" ] || continue
    if printf '%s\\n' "$name" | grep -Eq -- "$pattern"; then echo "$pid"; status=0; fi
done
exit $status
"""
IPCS = b"""#!/bin/sh
# ipcs [-m]: the System V shared memory segments of this IPC namespace, from /proc/sysvipc/shm
echo
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch"
[ -r /proc/sysvipc/shm ] || exit 0
tail -n +2 /proc/sysvipc/shm | while read -r key shmid perms size cpid lpid nattch uid rest; do
    printf '0x%08x %-10s %-10s %-10s %-10s %-10s\\n' "$key" "$shmid" "$uid" "$perms" "$size" "$nattch"
done
"""


def ordered(entries: list[Entry]) -> list[Entry]:
    """One entry per name (the last wins), parents first, and every hard link after the file it names."""
    by_name = {e.name.rstrip("/"): e for e in entries}
    plain = sorted((e for e in by_name.values() if e.kind != "hardlink"), key=lambda e: e.name)
    links = sorted((e for e in by_name.values() if e.kind == "hardlink"), key=lambda e: e.name)
    return with_parents(plain) + links


def busybox_base(busybox: Package, libc: Package, applets: list[str]) -> Layer:
    entries = [directory(d) for d in ("bin", "dev", "etc", "home", "proc", "sys", "usr/bin", "usr/sbin",
                                      "usr/local/bin", "var/spool/mail", "var/www")]
    entries += [directory("root", 0o700), directory("tmp", 0o1777)]
    entries.append(file("bin/busybox", busybox.read("bin/busybox"), 0o755))
    entries += [hardlink(f"bin/{a}", "bin/busybox") for a in applets if a != "busybox" and "/" not in a]
    entries += [file("bin/pgrep", PGREP, 0o755), file("bin/ipcs", IPCS, 0o755)]
    entries += users_and_groups(PASSWD, GROUP)
    entries.append(file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"))
    entries += libc.entries(("lib/", "lib64/"))
    return layer(ordered(entries))


def users_and_groups(passwd: str, group: str) -> list[Entry]:
    shadow = "".join(line.split(":", 1)[0] + ":*:19000:0:99999:7:::\n" for line in passwd.splitlines())
    return [file("etc/passwd", passwd.encode()), file("etc/group", group.encode()),
            file("etc/shadow", shadow.encode(), 0o640)]


def marker(name: str) -> Layer:
    """The layer of `ADD <name> <name>` with an empty file (cri-tools' image-test Dockerfile)."""
    return layer([file(name, b"")])


def predefined_group() -> Layer:
    """`adduser -u 1000 -D default-user && addgroup -g 50000 group-defined-in-image && addgroup default-user
    group-defined-in-image` (cri-tools' image-predefined-group Dockerfile)."""
    return layer(ordered([
        *users_and_groups(PASSWD + "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n",
                          GROUP + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"),
        directory("home/default-user", 0o755, uid=1000, gid=1000),
    ]))


def nonewprivs(nnp: bytes) -> Layer:
    """The nnp helper, setuid root: it prints its effective uid."""
    return layer(ordered([file("usr/local/bin/nnp", nnp, 0o4755)]))


def pause(binary: bytes) -> Layer:
    return layer([file("pause", binary, 0o755)])


HTTPD_FOREGROUND = b"""#!/bin/sh
# a stand-in for Apache's httpd-foreground: busybox's httpd in the foreground on :80
echo "httpd: busybox httpd serving /usr/local/apache2/htdocs on :80" >&2
exec httpd -f -v -p 80 -h /usr/local/apache2/htdocs
"""


def httpd() -> Layer:
    return layer(ordered([
        file("usr/local/apache2/htdocs/index.html", b"<html><body><h1>It works!</h1></body></html>\n"),
        directory("usr/local/apache2/logs"),
        file("usr/local/bin/httpd-foreground", HTTPD_FOREGROUND, 0o755),
    ]))


NGINX_CONF = b"""user nginx;
worker_processes 1;
pid /var/run/nginx.pid;
error_log /var/log/nginx/error.log warn;
events {
    worker_connections 256;
}
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /var/log/nginx/access.log;
    sendfile on;
    keepalive_timeout 65;
    include /etc/nginx/conf.d/*.conf;
}
"""


def nginx(binary: Package, common: Package, libraries: list[Package], port: int) -> Layer:
    """Debian's nginx with the libraries it links, set up like the upstream nginx image: master and worker,
    pid in /var/run/nginx.pid, logs to the container's stdout and stderr, the default page on `port`."""
    entries = [file("usr/sbin/nginx", binary.read("usr/sbin/nginx"), 0o755)]
    for lib in libraries:
        entries += lib.entries()
    entries += [
        file("etc/nginx/nginx.conf", NGINX_CONF),
        file("etc/nginx/mime.types", common.read("etc/nginx/mime.types")),
        file("etc/nginx/conf.d/default.conf", (
            f"server {{\n    listen {port};\n    server_name localhost;\n"
            "    location / {\n        root /usr/share/nginx/html;\n        index index.html;\n    }\n}\n").encode()),
        file("usr/share/nginx/html/index.html", common.read("usr/share/nginx/html/index.html")),
        *users_and_groups(PASSWD + "nginx:x:101:101:nginx:/var/cache/nginx:/bin/false\n", GROUP + "nginx:x:101:\n"),
        symlink("var/log/nginx/access.log", "/dev/stdout"),
        symlink("var/log/nginx/error.log", "/dev/stderr"),
        directory("var/lib/nginx"), directory("var/cache/nginx"), directory("run"), symlink("var/run", "/run"),
    ]
    return layer(ordered(entries))
