"""The channel registry: settings.HERALD_CHANNELS, loaded once, like Django's CACHES.

    HERALD_CHANNELS = {
        "slack": {"BACKEND": "notifications.channels.slack.SlackChannel", "OPTIONS": {"batch_max": 50}},
        ...
    }

Everything that would otherwise list channels (routing, kicks, metrics, preferences, admin)
asks this module. A system check (notifications.checks) validates the setting at start-up.
"""
from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

from notifications.channels.base import Channel


class UnknownChannel(KeyError):
    pass


@cache
def _load() -> dict[str, Channel]:
    channels = {}
    for name, spec in settings.HERALD_CHANNELS.items():
        backend = import_string(spec["BACKEND"])
        channels[name] = backend(name, spec.get("OPTIONS", {}))
    return channels


def get(name: str) -> Channel:
    try:
        return _load()[name]
    except KeyError:
        raise UnknownChannel(name) from None


def all_channels() -> list[Channel]:
    return list(_load().values())


def names() -> list[str]:
    return list(settings.HERALD_CHANNELS)


def reset() -> None:
    """Forget the loaded channels (tests that change HERALD_CHANNELS)."""
    _load.cache_clear()


def on_setting_changed(*, setting: str, **kwargs) -> None:
    if setting == "HERALD_CHANNELS":
        reset()
