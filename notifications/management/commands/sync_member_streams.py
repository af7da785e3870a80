"""Make every member's SMS, WhatsApp and push streams match their phone and devices again: run it
after configuring one of those channels (or restoring its credentials). Streams follow profile
changes; while a channel has no credentials it has no reachable destination and its streams are
deactivated, so without this members who set a phone earlier get `suppressed` rows."""
from django.core.management.base import BaseCommand

from notifications.preferences import member_streams_resync


class Command(BaseCommand):
    help = "Re-sync every member's phone and device delivery streams (after configuring SMS, WhatsApp or push)."

    def add_arguments(self, parser):
        parser.add_argument("--batch", type=int, default=500, help="Users per transaction.")

    def handle(self, *args, batch: int, **options):
        count = member_streams_resync(batch=batch)
        self.stdout.write(f"synced the phone and device streams of {count} member(s)")
