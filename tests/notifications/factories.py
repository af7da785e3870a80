"""Factories for notifications, delivery streams, delivery records, preferences and emails."""
from datetime import timedelta

import factory
from django.utils import timezone

from notifications.models import (Channel, Delivery, DeliveryStream, EmailDeferral, Notification,
                                  NotificationPreference, OutboundEmail, PreferenceCategory)
from tests.organizations.factories import OrganizationFactory, UserFactory


class NotificationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Notification

    organization = factory.SubFactory(OrganizationFactory)
    recipient = factory.SubFactory(UserFactory)
    entry = None
    seq = factory.LazyAttribute(lambda o: o.entry.seq if o.entry else None)
    kind = "tracker.event"
    title = factory.Sequence(lambda n: f"Notification {n}")
    body = ""
    data = factory.LazyFunction(dict)
    created_at = factory.LazyFunction(timezone.now)
    read_at = None


class DeliveryStreamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DeliveryStream

    organization = factory.SubFactory(OrganizationFactory)
    channel = Channel.INAPP
    destination = ""
    delivered_seq = 0


class DeliveryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Delivery

    stream = factory.SubFactory(DeliveryStreamFactory, channel=Channel.SLACK)
    organization = factory.SelfAttribute("stream.organization")
    channel = factory.SelfAttribute("stream.channel")
    first_seq = 1
    last_seq = factory.SelfAttribute("first_seq")
    status = Delivery.Status.PENDING


class NotificationPreferenceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = NotificationPreference

    user = factory.SubFactory(UserFactory)
    organization = None
    channel = Channel.EMAIL
    category = PreferenceCategory.TRACKER_EVENT
    enabled = True


class OutboundEmailFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = OutboundEmail

    user = factory.SubFactory(UserFactory)
    kind = OutboundEmail.Kind.PROFILE_UPDATED
    to_email = factory.SelfAttribute("user.email")
    subject = "Your profile was updated"
    body_text = "Your profile was updated."
    next_attempt_at = factory.LazyFunction(timezone.now)


class EmailDeferralFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = EmailDeferral

    outbound = factory.SubFactory(OutboundEmailFactory, status=OutboundEmail.Status.DEFERRED)
    user = factory.SelfAttribute("outbound.user")
    category = PreferenceCategory.PROFILE_UPDATED
    release_at = factory.LazyFunction(lambda: timezone.now() + timedelta(days=1))
