"""CRI v1 as crisp speaks it: the messages and services of cri-api `CRI_API_VERSION`.

The published Python stubs (`container-runtime-interface-api` 2.0.1, module `cri_api.v1`) predate the cri-api release
that the pinned kubelet and critest speak: a field they lack is dropped on parsing (`ImageSpec.image_ref`), and the
`Stream*` RPCs are absent. This module takes the stubs' file descriptor, adds what the pinned release has on top of
it (field numbers, names and types are the protocol's published facts, read from that release's `api.proto`), and
builds every message class from the result in a pool of its own. crisp (servicers, stores, spec builder) and its
tests use these classes, never `cri_api.v1` directly.

The module's attributes mirror a generated `api_pb2`: every message class, every top-level enum (as a wrapper) and
its values. `service_methods` routes a service's methods to a servicer (cri/rpcserver.py serves them);
`RuntimeServiceStub` / `ImageServiceStub` are clients on a grpc channel.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal import enum_type_wrapper

from cri.rpcserver import Method
from runtime import protodesc

if TYPE_CHECKING:
    # mypy checks crisp against the published stubs' types; what the pinned release added is Any (__getattr__)
    from cri_api.v1.api_pb2 import *  # noqa: F403

# The cri-api release (k8s.io/cri-api, the staging module of the pinned Kubernetes) whose protocol crisp speaks;
# scripts/tools.versions pins the same release as CRI_API_VERSION.
CRI_API_VERSION = "v0.37.2"
# what Version and Status report as the runtime API version
RUNTIME_API_VERSION = "v1"

# Fields the pinned release added to messages the stubs have: message -> field declarations (runtime/protodesc.py).
_ADDED_FIELDS: dict[str, str] = {
    "Mount": "repeated string mount_options = 11;",
    "ImageSpec": "string image_ref = 20;",
    "RuntimeFeatures": "bool user_namespaces_host_network = 2; bool mount_options = 3;",
}
# Fields whose type the pinned release changed: (message, field, new type). An environment variable's value became
# bytes (the encoding on the wire is the same as a string's; parsing no longer insists on UTF-8).
_RETYPED_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("KeyValue", "value", "bytes"),
)
# Enums whose value names the pinned release prefixed (numbers unchanged): enum -> prefix. A Signal is SIGNAL_SIGTERM.
_PREFIXED_ENUM_VALUES: dict[str, str] = {"Signal": "SIGNAL_"}
# Messages the pinned release added: name -> field declarations.
_ADDED_MESSAGES: dict[str, str] = {
    "StreamPodSandboxesRequest": "PodSandboxFilter filter = 1;",
    "StreamPodSandboxesResponse": "repeated PodSandbox pod_sandboxes = 1;",
    "StreamPodSandboxStatsRequest": "PodSandboxStatsFilter filter = 1;",
    "StreamPodSandboxStatsResponse": "repeated PodSandboxStats pod_sandbox_stats = 1;",
    "StreamContainersRequest": "ContainerFilter filter = 1;",
    "StreamContainersResponse": "repeated Container containers = 1;",
    "StreamImagesRequest": "ImageFilter filter = 1;",
    "StreamImagesResponse": "repeated Image images = 1;",
    "StreamContainerStatsRequest": "ContainerStatsFilter filter = 1;",
    "StreamContainerStatsResponse": "repeated ContainerStats container_stats = 1;",
    "StreamPodSandboxMetricsRequest": "",
    "StreamPodSandboxMetricsResponse": "repeated PodSandboxMetrics pod_sandbox_metrics = 1;",
    "CheckpointPodRequest": """
        string pod_sandbox_id = 1; string output_path = 2; repeated string container_ids = 3;
        map<string, string> options = 4;""",
    "CheckpointPodResponse": "",
    "RestorePodRequest": """
        string checkpoint_path = 1; PodSandboxConfig config = 2; string runtime_handler = 3;
        map<string, string> options = 4; repeated ContainerConfig container_configs = 5;""",
    "RestoredContainer": "string name = 1; string container_id = 2;",
    "RestorePodResponse": "string pod_sandbox_id = 1; repeated RestoredContainer restored_containers = 2;",
}
# RPCs the pinned release added: (service, method, server streaming). Request and response are <method>Request and
# <method>Response.
_ADDED_METHODS: tuple[tuple[str, str, bool], ...] = (
    ("RuntimeService", "StreamPodSandboxes", True),
    ("RuntimeService", "StreamContainers", True),
    ("RuntimeService", "StreamContainerStats", True),
    ("RuntimeService", "StreamPodSandboxStats", True),
    ("RuntimeService", "CheckpointPod", False),
    ("RuntimeService", "RestorePod", False),
    ("RuntimeService", "StreamPodSandboxMetrics", True),
    ("ImageService", "StreamImages", True),
)


def _published_file() -> bytes:
    """The published stubs' serialized file descriptor. Their module is loaded on its own: the `cri_api` package's
    __init__ also imports its grpc client stubs, and so grpcio, whose ~12 MB crispd has no use for."""
    package = importlib.util.find_spec("cri_api")  # finds, never runs, the package's __init__
    if package is None or not package.submodule_search_locations:
        raise RuntimeError("the CRI stubs (container-runtime-interface-api) are not installed")
    path = Path(next(iter(package.submodule_search_locations))) / "v1" / "api_pb2.py"
    spec = importlib.util.spec_from_file_location("cri_api.v1.api_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    serialized: bytes = module.DESCRIPTOR.serialized_pb
    return serialized


def _extended_file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto.FromString(_published_file())
    package = fdp.package
    messages = {m.name: m for m in fdp.message_type}
    for message, declarations in _ADDED_FIELDS.items():
        existing = list(messages[message].field)
        protodesc.add_fields(messages[message], message, declarations, package)
        if any(f.number in {e.number for e in existing} for f in messages[message].field[len(existing):]):
            raise RuntimeError(f"the CRI stubs already have a field of {message} it adds: review cri/api.py")
    for message, name, type_ in _RETYPED_FIELDS:
        (field,) = [f for f in messages[message].field if f.name == name]
        field.type = protodesc.SCALARS[type_]
    for enum in fdp.enum_type:
        prefix = _PREFIXED_ENUM_VALUES.get(enum.name, "")
        for value in enum.value if prefix else ():
            if value.name.startswith(prefix):
                raise RuntimeError(f"the CRI stubs already prefix {enum.name}: review cri/api.py")
            value.name = prefix + value.name
    for message, declarations in _ADDED_MESSAGES.items():
        if message in messages:
            raise RuntimeError(f"the CRI stubs already have {message}: review cri/api.py")
        protodesc.add_fields(fdp.message_type.add(name=message), message, declarations, package)
    services = {s.name: s for s in fdp.service}
    for service, method, streaming in _ADDED_METHODS:
        if any(m.name == method for m in services[service].method):
            raise RuntimeError(f"the CRI stubs already have {service}.{method}: review cri/api.py")
        services[service].method.add(name=method, input_type=f".{package}.{method}Request",
                                     output_type=f".{package}.{method}Response", server_streaming=streaming)
    return fdp


_POOL = descriptor_pool.DescriptorPool()
FILE_DESCRIPTOR_PROTO = _extended_file()
_MESSAGES = message_factory.GetMessages([FILE_DESCRIPTOR_PROTO], pool=_POOL)
DESCRIPTOR = _POOL.FindFileByName(FILE_DESCRIPTOR_PROTO.name)

for _name, _cls in _MESSAGES.items():
    _short = _name.removeprefix(FILE_DESCRIPTOR_PROTO.package + ".")
    if "." not in _short:  # nested classes are attributes of their parent
        globals()[_short] = _cls
for _enum in DESCRIPTOR.enum_types_by_name.values():
    globals()[_enum.name] = enum_type_wrapper.EnumTypeWrapper(_enum)
    for _value in _enum.values:
        globals()[_value.name] = _value.number


def __getattr__(name: str) -> Any:
    """Only reached for names that are no message or enum of the protocol (the dynamic attributes above are typed
    as Any for mypy through this hook)."""
    raise AttributeError(f"module {__name__!r} has no attribute {name!r} (not part of CRI {CRI_API_VERSION})")


def message_class(full_name: str) -> Any:
    return _MESSAGES[full_name]


def _method_class(type_name: str) -> Any:
    return _MESSAGES[type_name.lstrip(".")]


def service_methods(service: str, servicer: Any, fallback: Callable[[str, str], Callable[..., Any]],
                    wrap: Callable[[Method], Method] | None = None) -> list[Method]:
    """Every method of one of the protocol's services, routed to the servicer's attribute of the same name, or to
    `fallback(service, method)` when the servicer has none; `wrap(method)`, if given, replaces each (once, here,
    rather than on every call)."""
    desc = DESCRIPTOR.services_by_name[service]
    methods = []
    for method in desc.methods:
        behaviour = getattr(servicer, method.name, None) or fallback(service, method.name)
        request, response = _method_class(method.input_type.full_name), _method_class(method.output_type.full_name)
        routed = Method(desc.full_name, method.name, behaviour, request.FromString, response.SerializeToString,
                        streaming=method.server_streaming)
        methods.append(routed if wrap is None else wrap(routed))
    return methods


class _Stub:
    _SERVICE = ""

    def __init__(self, channel: Any) -> None:
        desc = DESCRIPTOR.services_by_name[self._SERVICE]
        for method in desc.methods:
            request, response = _method_class(method.input_type.full_name), _method_class(
                method.output_type.full_name)
            make = channel.unary_stream if method.server_streaming else channel.unary_unary
            setattr(self, method.name, make(f"/{desc.full_name}/{method.name}",
                                            request_serializer=request.SerializeToString,
                                            response_deserializer=response.FromString))

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{self._SERVICE} has no method {name!r} in CRI {CRI_API_VERSION}")


class RuntimeServiceStub(_Stub):
    """A client of runtime.v1.RuntimeService on a grpc (or grpc.aio) channel."""

    _SERVICE = "RuntimeService"


class ImageServiceStub(_Stub):
    """A client of runtime.v1.ImageService on a grpc (or grpc.aio) channel."""

    _SERVICE = "ImageService"
