"""Notification categories, declared once: what a template's (or a kind's) category means to
preferences and priorities.

A transactional category (a password reset, a receipt, a security alert) is always delivered: a
member cannot turn it off and quiet hours never hold it. A promotional one is held during the
member's quiet hours and can be turned off. Others (tracker activity, reminders) can be turned off
but are not held. The categories are a fixed vocabulary: templates and preferences name one of them
(a CHECK constraint keeps the rows honest).
"""
from dataclasses import dataclass

from config.errors import ApplicationError


@dataclass(frozen=True)
class Category:
    name: str
    label: str
    transactional: bool = False  # always delivered, never held, cannot be turned off
    promotional: bool = False  # held during quiet hours

    @property
    def priority(self) -> str:
        """The delivery lane: transactional work goes first."""
        return "transactional" if self.transactional else "promotional"


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in [
        Category("transactional", "Transactional (always sent)", transactional=True),
        Category("promotional", "Promotional", promotional=True),
        Category("security", "Security alerts", transactional=True),
        Category("billing", "Billing and receipts", transactional=True),
        Category("account", "Account changes", transactional=True),
        Category("reminders", "Reminders"),
        Category("activity", "Activity in your organizations"),
        Category("product_updates", "Product updates", promotional=True),
        Category("marketing", "Marketing", promotional=True),
        # The categories of the built-in log kinds (notifications.kinds).
        Category("tracker_event", "Tracker starts and stops"),
        Category("profile_updated", "Profile change confirmations", transactional=True),
        Category("comment_reply", "Replies to your comments"),
        Category("report", "Your reports are ready"),
    ]
}
CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)


def template_categories() -> list[Category]:
    """Every category a template (or a preference) may name, in a stable order."""
    return list(CATEGORIES.values())


def category_get(name: str) -> Category:
    try:
        return CATEGORIES[name]
    except KeyError:
        raise ApplicationError(f"Unknown category {name!r}.", code="unknown_category",
                               extra={"category": name, "choices": list(CATEGORY_NAMES)}) from None


def category_is_transactional(name: str) -> bool:
    category = CATEGORIES.get(name)
    return category is not None and category.transactional
