"""Factories for notifications, delivery streams and delivery records."""
import factory
from django.utils import timezone

from notifications.models import Channel, Delivery, DeliveryStream, Notification
from tests.organizations.factories import OrganizationFactory, UserFactory


class NotificationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Notification

    organization = factory.SubFactory(OrganizationFactory)
    recipient = factory.SubFactory(UserFactory)
    event = None
    seq = factory.LazyAttribute(lambda o: o.event.seq if o.event else None)
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
