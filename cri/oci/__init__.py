"""CRI configs + image config -> OCI runtime spec (config.json) for the executor.

`build_container_spec(SpecInputs)` builds a container's spec (an exec's process is `runtime.bundle.exec_process`);
`NodeFacts.probe()` (once) and `inspect_host()` (per request, in a worker thread) gather what they need from the
host, `LayeredFiles` reads the image's /etc/passwd and /etc/group from its unmounted layers.
"""

from cri.oci.host import HostPaths, NodeFacts, inspect_host
from cri.oci.mounts import ImageVolume, PodFiles, image_volume
from cri.oci.resources import oci_resources
from cri.oci.signals import cri_signal, resolve_stop_signal
from cri.oci.spec import PodContext, SpecInputs, SpecOptions, build_container_spec
from cri.oci.user import ImageFiles, LayeredFiles, StaticFiles

__all__ = [
    "HostPaths",
    "ImageFiles",
    "ImageVolume",
    "LayeredFiles",
    "NodeFacts",
    "PodContext",
    "PodFiles",
    "SpecInputs",
    "SpecOptions",
    "StaticFiles",
    "build_container_spec",
    "cri_signal",
    "image_volume",
    "inspect_host",
    "oci_resources",
    "resolve_stop_signal",
]
