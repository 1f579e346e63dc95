"""Device mesh from config: axes ``data``, ``fsdp``, ``tensor``; one size may be -1 (auto)."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_axis_sizes(sizes: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces a single -1 by whatever makes the product equal ``num_devices``."""
    sizes = tuple(int(s) for s in sizes)
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1 (auto), got {dict(zip(MESH_AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices cannot be split with fixed axes {dict(zip(MESH_AXES, sizes))}")
        sizes = tuple(num_devices // known if s == -1 else s for s in sizes)
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, but {num_devices} are in use"
        )
    return sizes


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` over ``devices`` (default: all) with axes (data, fsdp, tensor).

    With one size -1 the mesh spans every device; fully specified sizes whose product is smaller
    than the device count use the first devices (e.g. ``make_mesh(1, 1, 1)`` is one device).
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = (data, fsdp, tensor)
    if -1 not in sizes and math.prod(sizes) < len(devices):
        devices = devices[: math.prod(sizes)]  # fully specified smaller mesh: the first devices
    shape = resolve_axis_sizes(sizes, len(devices))
    try:
        device_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # CPU or irregular topologies: a plain reshape is fine
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)
