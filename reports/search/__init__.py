"""Search over an organization's trackers, time-entry notes and comments (Postgres full-text
search), the search log, and the hourly top-10 of queries served from the Redis cache."""
