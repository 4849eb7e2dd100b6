"""The connector runtime: rate-limited uploader actors, retries, and the job's journal.

An upload job runs like this::

    job = UploadJob.start(connector, plan, num_uploaders=4, requests_per_second=10)
    for chunk in prediction_stream:
        job.submit(chunk)           # journaled as pending, batched, sent to uploaders
    summary = job.finish()          # waits, writes the journal and the dead letter

- The driver calls ``connector.check_mode`` (nothing is sent for an unsupported mode), opens
  the job's `Journal`, starts one `RateLimiter` actor, and calls ``connector.prepare`` with
  the connector bound to a `LimiterGate`, so that even ``prepare``'s requests are limited.
- ``num_uploaders`` uploader actors (``num_cpus=0``) each hold a copy of the prepared
  connector bound to a `LimiterGate` on the same limiter: every HTTP request of the job,
  from any process, waits for the shared rate and in-flight limits.
- ``submit`` records each prediction as pending *before* sending it, batches predictions
  and hands batches to the least busy uploader; at most ``max_batches_in_flight`` batches
  are out at once, beyond which ``submit`` waits (backpressure on the producer).
- An uploader delivers a batch with `call_with_retries`. A batch that still fails (a
  non-retryable error, or retries spent) is split: each item is delivered alone, once
  more (with the full retry policy after a non-retryable batch error, which isolates a
  poison item; with a single attempt after spent retries, so that a server that is down
  costs one more request per item, not another round of backoff). An item that fails
  alone is dead, with the error as its reason.
- The uploaders report outcomes to the driver, the journal's only writer. Predictions
  carrying an ``error`` are never sent; they are recorded dead ("prediction failed: ...").
- A re-run with the same ``job_id`` skips what the journal says was delivered;
  `UploadJob.resume` re-sends the pending and dead items from their stored payloads.

Connectors must make deliveries idempotent (check before create): a retry after a lost
answer, or a resume after a crash mid-request, must not create duplicates.

The parts: `limiter` (`RateLimiter`, `LimiterGate`, `new_rate_limiter`), `uploader`
(`Uploader`, `BatchOutcome`, `new_uploader`, `DEFAULT_RETRY`) and `job` (`UploadJob`,
`RUNTIME_OPTIONS`, `PREDICTION_FAILED`); for deployment monitors, `monitor_target`
(`MonitorTarget`, what a platform implements) and `monitor` (`MonitorJob`: a bounded queue
that never blocks the server, sender actors, a dead letter). Every public name is
importable from this package.
"""

from __future__ import annotations

from connectors.journal import job_dir
from connectors.runtime.job import PREDICTION_FAILED, RUNTIME_OPTIONS, UploadJob
from connectors.runtime.limiter import LimiterGate, RateLimiter, new_rate_limiter
from connectors.runtime.monitor import MonitorJob, MonitorSender
from connectors.runtime.monitor_target import MONITOR_OPTIONS, MonitorTarget
from connectors.runtime.uploader import DEFAULT_RETRY, BatchOutcome, Uploader, new_uploader

__all__ = [
    "BatchOutcome",
    "DEFAULT_RETRY",
    "LimiterGate",
    "MONITOR_OPTIONS",
    "MonitorJob",
    "MonitorSender",
    "MonitorTarget",
    "PREDICTION_FAILED",
    "RUNTIME_OPTIONS",
    "RateLimiter",
    "UploadJob",
    "Uploader",
    "job_dir",
    "new_rate_limiter",
    "new_uploader",
]
