"""crispd and systemd: the D-Bus client for unit calls, the unit properties of OCI resources, sd_notify.

Only crispd speaks D-Bus (the shim and the executor never do). Every call is asyncio and bounded by a timeout;
importing these modules touches nothing.

    systemd = Systemd(bus="auto")                          # connects on first use
    await systemd.start_transient_unit("crisp-<id>.scope", scope_properties(...) + resource_properties(res))
    await systemd.set_unit_properties("crisp-<id>.scope", resource_properties(res))
    await systemd.stop_unit("crisp-<id>.scope"); await systemd.reset_failed_unit("crisp-<id>.scope")
    notify("READY=1")                                      # sd_notify, when started by systemd (Type=notify)
"""

from runtime.systemd.bus import BusError
from runtime.systemd.manager import Systemd
from runtime.systemd.notify import notify
from runtime.systemd.properties import Property, resource_properties, scope_properties, slice_properties

__all__ = [
    "BusError",
    "Property",
    "Systemd",
    "notify",
    "resource_properties",
    "scope_properties",
    "slice_properties",
]
