"""Install a pure-Python wheel (crisp's own) into the environment of the interpreter that runs this file.

The guest does this at every boot; pip takes ~6 s to start under TCG, this ~2 s. It handles what crisp's wheel
has (packages, dist-info, console scripts) and refuses anything else (platform wheels, .data directories).
Stdlib only: it runs before anything of crisp is installed.  Usage: python install_wheel.py WHEEL
"""

from __future__ import annotations

import compileall
import configparser
import sys
import sysconfig
import zipfile
from pathlib import Path

SCRIPT = """#!{python}
import sys
from {module} import {function}
sys.exit({function}())
"""


def install(wheel: Path) -> list[Path]:
    """Unpack `wheel` into purelib, write its console scripts, compile it; returns the scripts written."""
    paths = sysconfig.get_paths()
    purelib, scripts_dir = Path(paths["purelib"]), Path(paths["scripts"])
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info"))
        if "Root-Is-Purelib: true" not in archive.read(f"{dist_info}/WHEEL").decode():
            raise SystemExit(f"{wheel.name} is not a pure-Python wheel: install it with pip")
        if any(name.split("/")[0].endswith(".data") for name in names):
            raise SystemExit(f"{wheel.name} has a .data directory: install it with pip")
        archive.extractall(purelib)
        for info in archive.infolist():  # zipfile drops the modes: crisp-monitor must stay executable
            mode = info.external_attr >> 16
            if mode & 0o111 and not info.is_dir():
                (purelib / info.filename).chmod(mode & 0o7777)
        entry_points = configparser.ConfigParser(delimiters=("=",), interpolation=None)
        entry_points.optionxform = str  # type: ignore[assignment,method-assign]  # keep the names' case
        if f"{dist_info}/entry_points.txt" in names:
            entry_points.read_string(archive.read(f"{dist_info}/entry_points.txt").decode())
    (purelib / dist_info / "INSTALLER").write_text("crisp-vm\n")
    written = []
    if entry_points.has_section("console_scripts"):
        for name, target in entry_points.items("console_scripts"):
            module, _, function = target.strip().partition(":")
            script = scripts_dir / name
            script.write_text(SCRIPT.format(python=sys.executable, module=module, function=function))
            script.chmod(0o755)
            written.append(script)
    for top in {name.split("/")[0] for name in names} - {dist_info}:
        if (purelib / top).is_dir():
            compileall.compile_dir(purelib / top, quiet=1)
    return written


if __name__ == "__main__":
    for script in install(Path(sys.argv[1])):
        print(f"installed {script}")
