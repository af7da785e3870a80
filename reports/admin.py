"""Admin for reports (roadmap step 5)."""
