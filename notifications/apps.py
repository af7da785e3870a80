from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications and delivery"

    def ready(self):
        from django.core.signals import setting_changed

        from notifications import checks  # noqa: F401  (registers the system checks)
        from notifications.channels import registry

        setting_changed.connect(registry.on_setting_changed, dispatch_uid="herald-channels-reset")
