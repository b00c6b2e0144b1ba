"""The NRI v1alpha1 message classes (runtime/nri/schema.py built at import), as attributes: `api.PodSandbox`,
`api.CreateContainerRequest`, ...; enum values as module constants (`api.RUN_POD_SANDBOX`, `api.CONTAINER_RUNNING`).
"""

from __future__ import annotations

from typing import Any

from runtime import protodesc
from runtime.nri import schema

NRI_VERSION = schema.NRI_VERSION
PACKAGE = schema.PACKAGE
RUNTIME_SERVICE = f"{PACKAGE}.Runtime"
PLUGIN_SERVICE = f"{PACKAGE}.Plugin"

FILE_DESCRIPTOR_PROTO = protodesc.build_file("nri/pkg/api/api.proto", PACKAGE, schema.MESSAGES, schema.ENUMS,
                                             schema.SERVICES)
DESCRIPTOR, _CLASSES = protodesc.message_classes(FILE_DESCRIPTOR_PROTO)

for _name, _cls in _CLASSES.items():
    if "." not in _name:
        globals()[_name] = _cls
for _enum in DESCRIPTOR.enum_types_by_name.values():
    for _value in _enum.values:
        globals()[_value.name] = _value.number


def message_class(name: str) -> Any:
    return _CLASSES[name]


def __getattr__(name: str) -> Any:
    """Reached only for names the protocol does not have (and types the dynamic attributes above as Any)."""
    raise AttributeError(f"module {__name__!r} has no attribute {name!r} (not part of NRI {NRI_VERSION})")


def event_mask(*events: int) -> int:
    """ConfigureResponse.events: bit (event - 1) for each event."""
    mask = 0
    for event in events:
        mask |= 1 << (event - 1)
    return mask


def mask_has(mask: int, event: int) -> bool:
    return bool(mask & (1 << (event - 1)))


# every event a plugin may subscribe to (NRI's ValidEvents): RUN_POD_SANDBOX .. VALIDATE_CONTAINER_ADJUSTMENT
VALID_EVENTS = event_mask(*range(1, len(schema.EVENTS) - 1))
