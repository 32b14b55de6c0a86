"""What ``--scheduler`` names (``local:N`` or a scheduler address), and a Dask client for it."""
from __future__ import annotations

from contextlib import contextmanager

DEFAULT_RETRIES = 2


class SchedulerError(ValueError):
    """``--scheduler`` is not ``local:N`` or a scheduler address."""


def parse_scheduler(spec: str) -> tuple[str, int | str]:
    """``("local", N)`` for ``local:N``, ``("address", spec)`` for ``tcp://HOST:PORT``."""
    spec = (spec or "").strip()
    if spec.startswith("local:"):
        try:
            n = int(spec[len("local:"):])
        except ValueError:
            n = 0
        if n < 1:
            raise SchedulerError(f"--scheduler {spec!r}: local:N needs a worker count N >= 1")
        return "local", n
    if "://" in spec or (":" in spec and spec.rsplit(":", 1)[1].isdigit()):
        return "address", spec
    raise SchedulerError(f"--scheduler {spec!r}: expected local:N (N worker processes on this "
                         "machine) or a scheduler address such as tcp://HOST:8786")


@contextmanager
def cluster_client(spec: str, retries: int = DEFAULT_RETRIES, gpus_per_run: float = 0):
    """A ``distributed.Client`` for ``spec``; a local cluster is started here and closed
    (with its worker processes) on exit, whatever happens inside."""
    import dask
    from distributed import Client, LocalCluster

    kind, arg = parse_scheduler(spec)
    if kind == "address":
        with Client(arg, timeout="30s") as client:
            yield client
        return
    if gpus_per_run:
        raise SchedulerError("--gpus-per-run needs workers that declare a GPU resource "
                             "(`dask worker ... --resources GPU=1`); a local:N cluster has none")
    # allowed-failures: how often a task may lose its worker before it fails for good;
    # the local scheduler runs in this process, so this config is the one it reads.
    # worker-saturation 1.0: a worker holds only the runs it executes, so a dying worker
    # takes only those with it (queued ones would count a failed attempt too)
    with dask.config.set({"distributed.scheduler.allowed-failures": retries,
                          "distributed.scheduler.worker-saturation": 1.0}):
        with LocalCluster(n_workers=arg, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None,
                          silence_logs=40) as cluster, Client(cluster) as client:
            yield client
