"""Prometheus metrics of the delivery pipeline (aggregated across processes in multiprocess mode)."""
import logging

from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger("herald.metrics")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300)

EVENTS_TOTAL = Counter("herald_tracker_events_total", "Tracker events committed", ["action"])
DELIVERIES = Counter("herald_deliveries_total", "Deliveries by channel and outcome", ["channel", "outcome"])
LATENCY = Histogram("herald_event_delivery_seconds", "Event commit to delivery, per channel", ["channel"],
                    buckets=LATENCY_BUCKETS)
DEAD_LETTERS = Counter("herald_dead_letters_total", "Deliveries that became dead letters", ["channel"])
LIMITER = Counter("herald_ratelimit_decisions_total", "Rate limiter grants and waits by scope", ["scope", "outcome"])
STATUS_CALLBACKS = Counter("herald_status_callbacks_total",
                           "Provider status reports by channel and outcome (applied, unchanged, ignored, unknown, "
                           "bad_signature, not_configured; held unknown ones later: applied_late, expired)",
                           ["channel", "outcome"])
PROVIDER_429 = Counter("herald_provider_429_total", "429 responses seen from providers", ["provider"])
BATCH_SIZE = Histogram("herald_coalesced_batch_size", "Events per provider request", ["channel"],
                       buckets=(1, 2, 3, 5, 10, 20, 50, 100))
SWEEPER_KICKS = Counter("herald_sweeper_kicks_total", "Streams re-kicked by the sweeper")



BREAKER_STATE = Gauge("herald_breaker_state", "Circuit breaker state per provider (0 closed, 1 half-open, 2 open)",
                      ["provider"], multiprocess_mode="livemax")

# --- email (notifications.email, notifications.channels.email) ---
EMAIL_SENT = Counter("herald_email_sent_total", "Emails accepted by an SMTP provider", ["provider"])
EMAIL_PROVIDER_FAILURES = Counter("herald_email_provider_failures_total",
                                  "SMTP calls that failed transiently (connection, timeout, 4xx)", ["provider"])
EMAIL_FAILOVERS = Counter("herald_email_failovers_total", "Emails sent by the secondary SMTP provider")
EMAIL_DEFERRED = Counter("herald_email_deferred_total", "Emails held back by the per-recipient daily limit",
                         ["category"])
EMAIL_OUTBOUND = Counter("herald_email_outbound_total", "Account emails (OutboundEmail) by kind and outcome",
                         ["kind", "outcome"])
