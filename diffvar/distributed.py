"""Devices and processes: multi-host start-up, the data mesh, global arrays from local rows, gathering.

One process per host; each loads only its rows of every batch. Arrays are sharded over a 1-D mesh axis
'data' (batch) or replicated (parameters); the compiled functions take their shardings from the arguments.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

HEARTBEAT_SECONDS = 20  # a process that stops answering for this long ends the run of all the others
_peers_checked = False  # stop_if_peer_lost() has waited


def initialize(coordinator_address: str | None = None, num_processes: int = 1, process_id: int = 0) -> None:
    """Joins a multi-process run (CPU collectives over gloo) when a coordinator address is given. When one
    process stops, jax's distributed runtime ends the others (SIGABRT) within about HEARTBEAT_SECONDS, at once
    when the stopped one is process 0, which hosts the coordination service (see stop_if_peer_lost)."""
    if coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address, num_processes, process_id, heartbeat_timeout_seconds=HEARTBEAT_SECONDS
        )


def is_chief() -> bool:
    """True on process 0, the one that writes logs, samples and reports."""
    return jax.process_index() == 0


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D 'data' mesh over all devices of all processes, with an Auto axis (shardings follow the arguments)."""
    devices = jax.devices()
    return jax.make_mesh((len(devices),), ("data",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The sharding of a value every device holds whole (parameters, optimizer state)."""
    return NamedSharding(mesh, P())


def global_array(mesh: jax.sharding.Mesh, local: np.ndarray, spec: P = P("data")) -> jax.Array:
    """A global jax.Array from this process's rows `local` (np, batch axis sharded as `spec`)."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), np.asarray(local))


def gather(x: jax.Array) -> np.ndarray:
    """A (possibly multi-process) sharded array as one numpy array on every process."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def stop_if_peer_lost() -> None:
    """Returns only if no other process stopped. In a multi-process run, after an unexpected error, waits
    HEARTBEAT_SECONDS + 10 s: when the error came from another process stopping (a collective's connection
    closed), jax's distributed runtime ends this one (SIGABRT) meanwhile, and the parent that supervises it
    reports that in one line (cli.run). Nothing to wait for in a single-process run, or a second time."""
    global _peers_checked
    if not _peers_checked and jax.distributed.is_initialized() and jax.process_count() > 1:
        _peers_checked = True
        time.sleep(HEARTBEAT_SECONDS + 10)
