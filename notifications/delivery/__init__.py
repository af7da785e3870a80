"""The ordering fence: stream locks, head selection, outcome recording, kicks and the sweeper.
It names no channel; it asks the channel registry (notifications.channels.registry)."""
