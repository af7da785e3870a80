"""The rendered parts of a send: the organization's template of its kind, in the locale of its
recipients (recipient -> organization default -> "en", notifications.templating), rendered in the
sandbox once per locale needed, for the send's channels."""
from dataclasses import dataclass

from config.errors import ApplicationError
from notifications.categories import CATEGORIES
from notifications.errors import NotificationsError
from notifications.templating import template_render, template_resolve_locales


@dataclass(frozen=True)
class Rendered:
    parts: dict[str, dict[str, dict]]  # locale -> channel -> field -> text
    category: str  # the template's category ("transactional", "promotional", "billing", ...)
    priority: str  # the category's lane: "transactional" or "promotional"
    channels: tuple[str, ...]  # the channels the template has parts for
    locale: str  # the locale the recipients get (theirs, else the organization's, else "en")


def send_render(*, organization_id: int, kind: str, locales: set[str | None], data: dict,
                channels: list[str] | None, templates: dict | None = None) -> Rendered:
    """Resolve and render the kind's template for every recipient locale (one query to resolve,
    one sandboxed render per distinct template). 400 `unknown_template` naming `kind` when the
    organization has none; 400 `template_render_error` (channel, field, line) when `data` does not
    fit it. `templates`: a cache of resolved templates shared by the sends of one batch (kind and
    locales -> templates)."""
    wanted = sorted(locales, key=str) or [None]
    key = (kind, tuple(wanted))
    resolved = templates.get(key) if templates is not None else None
    if resolved is None:
        resolved = _templates_resolve(organization_id=organization_id, kind=kind, locales=wanted)
        if templates is not None:
            templates[key] = resolved
    templates = resolved
    parts: dict[str, dict[str, dict]] = {}
    for template in templates.values():
        if template.locale not in parts:
            parts[template.locale] = template_render(template=template, data=data, channels=channels)
    first = next(iter(templates.values()))
    category = CATEGORIES.get(first.category)
    return Rendered(parts=parts, category=first.category,
                    priority=category.priority if category else "transactional",
                    channels=tuple(first.parts), locale=first.locale)


def _templates_resolve(*, organization_id: int, kind: str, locales: list[str | None]) -> dict:
    try:
        return template_resolve_locales(organization_id=organization_id, kind=kind, locales=locales)
    except ApplicationError as exc:
        if exc.code != NotificationsError.UNKNOWN_TEMPLATE:
            raise
        raise ApplicationError(f"No template {kind!r} in this organization.", code=NotificationsError.UNKNOWN_TEMPLATE,
                               extra={"fields": {"kind": ["No template has this key."]}, **exc.extra}) from None
