"""Prometheus metrics of one worker's recorder (registered beside server/metrics.py's)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from server.recording.manager import RecordingManager


class RecordingCollector(Collector):
    """What an operator must hear of before a recording is at risk: objects the archive store
    has not taken (and whether it refuses them), recordings held back by their disk or the
    database, seals left to retry, and the free space recordings are written to."""

    def __init__(self, recorder: RecordingManager) -> None:
        self._recorder = recorder

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        status = self._recorder.store_status()
        yield GaugeMetricFamily(
            "vteller_archive_pending_objects",
            "Spooled objects not yet in the archive store",
            status.pending_count,
        )
        yield GaugeMetricFamily(
            "vteller_archive_pending_bytes",
            "Bytes spooled for the archive store",
            status.pending_bytes,
        )
        yield GaugeMetricFamily(
            "vteller_archive_upload_failures",
            "Consecutive failed attempts to store in the archive (0: all well)",
            status.consecutive_failures,
        )
        yield GaugeMetricFamily(
            "vteller_archive_rejected_objects",
            "Objects the archive store refused for good, kept in the spool's rejected/ directory",
            status.rejected_count,
        )
        yield CounterMetricFamily(
            "vteller_archive_retention_mismatches",
            "Uploads whose retention read back from the store was not the COMPLIANCE retention "
            "asked for (kept in the spool; the bucket's configuration needs fixing)",
            status.retention_mismatches,
        )
        yield GaugeMetricFamily(
            "vteller_recordings_retrying_writes",
            "Live recordings whose spool, journal or chain write is being retried",
            self._recorder.retrying_count,
        )
        yield GaugeMetricFamily(
            "vteller_recordings_unsealed",
            "Stopped or recovered recordings not sealed yet (retried every minute), those whose "
            "stop waits for their disk included",
            self._recorder.unsealed_count,
        )
        if self._recorder.free_bytes is not None:
            yield GaugeMetricFamily(
                "vteller_recording_disk_free_bytes",
                "Free space of the spool's or the journals' disk, the lesser, as measured at "
                "each recording start and every minute (below store.min_free_mb none starts)",
                self._recorder.free_bytes,
            )
