"""`crispd doctor`: every check in order, the report, the exit status (cri/doctor/report.py)."""

from __future__ import annotations

import sys

from cri.config import Config
from cri.doctor.cgroups import check_cgroups
from cri.doctor.kernel import check_kernel
from cri.doctor.network import check_network, check_registries
from cri.doctor.node import check_crispd, check_disk, check_handlers, check_socket
from cri.doctor.report import Check, exit_code, render


def run_checks(config: Config) -> list[Check]:
    running = check_crispd(config)  # first: a running crispd knows the pod CIDR in force (maybe the kubelet's)
    return [*check_cgroups(config), *check_kernel(config), *check_network(config, running.pod_cidr),
            *check_registries(config), check_socket(config), check_handlers(config), *check_disk(config),
            running.check]


def doctor(config: Config) -> int:
    checks = run_checks(config)
    sys.stdout.write(render(checks))
    return exit_code(checks)
