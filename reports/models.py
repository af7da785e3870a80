"""Async reports, search log and activity log (roadmap step 5)."""
