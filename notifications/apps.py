from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications and delivery"

    def ready(self):
        from django.db import transaction
        from django.db.models.signals import post_delete, post_save

        from notifications import realtime
        from organizations.models import Membership

        def membership_changed(sender, instance, created=True, **kwargs):
            if not created:
                return  # a role change does not change what the member receives

            def tell():
                try:
                    realtime.publish([(realtime.user_group(instance.user_id), {"type": "membership.changed"})])
                except Exception:  # Redis down: the member's next connect reads memberships afresh
                    import logging

                    logging.getLogger("herald.realtime").warning(
                        "membership change not pushed", extra={"user_id": instance.user_id})

            transaction.on_commit(tell)

        post_save.connect(membership_changed, sender=Membership, weak=False, dispatch_uid="herald-membership-saved")
        post_delete.connect(membership_changed, sender=Membership, weak=False, dispatch_uid="herald-membership-deleted")
