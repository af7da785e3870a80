"""Test support shared by tests and benchmarks: a fake Slack Web API (`fakeslack`) and a harness
that runs the real processes (Daphne, Celery workers, beat) against the test database (`stack`)."""
