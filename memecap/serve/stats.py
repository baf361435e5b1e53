"""What the server has done, for /metrics (Prometheus' text format) and /health."""
from __future__ import annotations

import bisect
import threading
from collections import Counter

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds


class ServerStats:
    def __init__(self):
        self._lock = threading.Lock()
        self.responses: Counter = Counter()  # HTTP status of /caption answers
        self.in_flight = 0  # /caption requests received and not yet answered
        self.batches = 0
        self.batched_images = 0
        self.batch_seconds = 0.0
        self.largest_batch = 0
        self._latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0

    def received(self) -> None:
        with self._lock:
            self.in_flight += 1

    def answered(self, status: int, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.responses[status] += 1
            self._latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._latency_sum += seconds

    def batch_done(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batches += 1
            self.batched_images += size
            self.batch_seconds += seconds
            self.largest_batch = max(self.largest_batch, size)

    def prometheus(self, *, waiting: int) -> str:
        with self._lock:
            lines = ["# HELP memecap_requests_total /caption requests answered, by HTTP status",
                     "# TYPE memecap_requests_total counter"]
            lines += [f'memecap_requests_total{{status="{code}"}} {n}' for code, n in sorted(self.responses.items())]
            lines += ["# HELP memecap_request_seconds time from a /caption request's arrival to its answer",
                      "# TYPE memecap_request_seconds histogram"]
            cumulative = 0
            for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self._latency_counts):
                cumulative += count
                lines.append(f'memecap_request_seconds_bucket{{le="{bound}"}} {cumulative}')
            lines += [f"memecap_request_seconds_sum {self._latency_sum:.6f}",
                      f"memecap_request_seconds_count {cumulative}",
                      "# HELP memecap_batches_total model calls (batches captioned)",
                      "# TYPE memecap_batches_total counter", f"memecap_batches_total {self.batches}",
                      "# HELP memecap_batched_images_total images captioned in those batches",
                      "# TYPE memecap_batched_images_total counter",
                      f"memecap_batched_images_total {self.batched_images}",
                      "# HELP memecap_batch_seconds_total time the model spent captioning",
                      "# TYPE memecap_batch_seconds_total counter",
                      f"memecap_batch_seconds_total {self.batch_seconds:.6f}",
                      "# HELP memecap_largest_batch the most images captioned together so far",
                      "# TYPE memecap_largest_batch gauge", f"memecap_largest_batch {self.largest_batch}",
                      "# HELP memecap_requests_in_flight /caption requests received and not yet answered",
                      "# TYPE memecap_requests_in_flight gauge", f"memecap_requests_in_flight {self.in_flight}",
                      "# HELP memecap_queue_waiting requests waiting for the model now",
                      "# TYPE memecap_queue_waiting gauge", f"memecap_queue_waiting {waiting}"]
        return "\n".join(lines) + "\n"
