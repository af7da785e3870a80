"""Load idempotent demo data: one organization, three members, a tracker. Prints the logins."""
from django.core.management.base import BaseCommand
from django.db import transaction

from organizations.models import Membership, Organization, User
from organizations.services import organization_create

DEMO_PASSWORD = "herald-demo-2026"
DEMO_USERS = [
    ("alice", "alice@example.com", Membership.Role.OWNER, True),
    ("bob", "bob@example.com", Membership.Role.ADMIN, False),
    ("carol", "carol@example.com", Membership.Role.MEMBER, False),
]


class Command(BaseCommand):
    help = "Create (or keep) the demo organization and users and print how to sign in."

    @transaction.atomic
    def handle(self, *args, **options):
        users = {}
        for username, email, _role, staff in DEMO_USERS:
            user, created = User.objects.get_or_create(username=username, defaults={"email": email})
            if created:
                user.set_password(DEMO_PASSWORD)
                user.is_staff = user.is_superuser = staff
                user.save()
            users[username] = user
        organization = Organization.objects.filter(slug="acme").first()
        if organization is None:
            organization = organization_create(creator=users["alice"], name="Acme", slug="acme")
        for username, _email, role, _staff in DEMO_USERS:
            Membership.objects.get_or_create(organization=organization, user=users[username],
                                             defaults={"role": role})
        self.stdout.write(self.style.SUCCESS("Demo data ready: organization 'Acme' with a tracker."))
        self.stdout.write("  Web:   http://127.0.0.1:8000/        Admin: http://127.0.0.1:8000/admin/")
        self.stdout.write("  Docs:  http://127.0.0.1:8000/api/docs/")
        for username, _email, role, staff in DEMO_USERS:
            extra = " (staff: admin site)" if staff else ""
            self.stdout.write(f"  Login: {username} / {DEMO_PASSWORD}  [{role}]{extra}")
