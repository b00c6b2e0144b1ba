"""crispd and systemd: the D-Bus client for unit calls, the unit properties of OCI resources, sd_notify.

Only crispd speaks D-Bus (the shim and the executor never do). Every call is asyncio and bounded by a timeout;
importing these modules touches nothing. The D-Bus client (runtime.systemd.manager, runtime.systemd.bus, and
jeepney under them) is not imported here: only the systemd cgroup driver and `crispd doctor` need it, and loaded
at start it cost every crispd some 1.4 MB of RSS.

    from runtime.systemd.manager import Systemd
    systemd = Systemd(bus="auto")                          # connects on first use
    await systemd.start_transient_unit("crisp-<id>.scope", scope_properties(...) + resource_properties(res))
    await systemd.set_unit_properties("crisp-<id>.scope", resource_properties(res))
    await systemd.stop_unit("crisp-<id>.scope"); await systemd.reset_failed_unit("crisp-<id>.scope")
    notify("READY=1")                                      # sd_notify, when started by systemd (Type=notify)
"""

from runtime.systemd.notify import notify
from runtime.systemd.properties import Property, resource_properties, scope_properties, slice_properties

__all__ = [
    "Property",
    "notify",
    "resource_properties",
    "scope_properties",
    "slice_properties",
]
