"""Train study runs on a Dask cluster: one task per (configuration, seed), the same cache.

``python -m experiments train --scheduler local:N`` starts a ``LocalCluster`` of N
single-threaded worker processes on 127.0.0.1 (no dashboard); ``--scheduler
tcp://HOST:PORT`` joins a running one (``dask scheduler`` / ``dask worker``).  pytest
takes the same option and trains every missing run of the selected families on the
cluster before the tests run (:func:`experiments.plugin.pytest_collection_finish`).

The modules, in the order a run passes through them:

* :mod:`.scheduler` -- what ``--scheduler`` names, and a ``distributed.Client`` for it;
* :mod:`.plan` -- which runs are missing from the cache, and the record of each one's fate;
* :mod:`.submit` -- the client: data scattered once, one task per missing run, cache locks held;
* :mod:`.worker` -- the task on a worker, with the test-only fault hooks;
* :mod:`.landing` -- a finished task's files checked and written into the client's cache;
* :mod:`.progress` -- the bar and the one line per finished run.

How it behaves:

* The client plans as the in-process path does (same keys, same entry names) and
  submits only the runs missing from its cache; cached runs are never submitted.
* A task runs :func:`experiments.runs.train_to`, the in-process training code,
  in a temporary folder on the worker, and returns the entry's files (the model's
  bytes and its metadata).  The client checks the SHA-256 and writes the entry
  through :meth:`ModelCache.get_or_build` (temporary folder, atomic rename); workers
  never write into the client's cache and need no shared filesystem.
* The client loads each family's arrays once and scatters them to every worker
  (``broadcast=True``), so workers need no copy of the datasets and the data
  fingerprint in every key is the client's.  The worker recomputes the key from the
  data it received and its own code; a worker whose code or recipe differs fails
  the task instead of training something else under the client's key.
* TensorFlow on a worker runs on as many intra-op threads as the worker has
  (``--nthreads``), set before the worker's first op.
* While its run is out on the cluster the client holds the run's cache lock, as an
  in-process trainer does while it trains, so a second client or an in-process
  ``get_trained`` waits for the entry instead of training it again; a run whose lock
  another process holds is not submitted but waited for, and submitted only if that
  process did not land it.
* A worker that dies mid-run (killed, out of memory) is replaced by its nanny and the
  scheduler runs the task again elsewhere, up to ``retries`` times
  (``distributed.scheduler.allowed-failures``).  A task that raises is reported with
  its traceback; the other runs still land.  Ctrl-C cancels the runs in flight and
  keeps every entry that has landed.

The package is called ``cluster`` so that ``import distributed`` (Dask's) is never
shadowed by it.
"""
