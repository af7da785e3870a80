"""How a log entry reads on the text channels (SMS, push, WhatsApp, Apprise): an API send (kind
"message") carries its rendered parts in payload["parts"][locale][channel] (the send API renders
the organization's template); any other entry reads as its Kind's title and body."""
from notifications.kinds import KINDS


def entry_parts(entry, channel: str, locale: str | None = None) -> dict | None:
    """The entry's rendered part for `channel` in `locale` (else the send's default locale, else
    "en", else the first locale), or None when the entry has none (not an API send, or no part for
    this channel)."""
    payload = entry.payload or {}
    parts = payload.get("parts")
    if not isinstance(parts, dict) or not parts:
        return None
    by_locale = None
    for candidate in (locale, payload.get("locale"), "en"):
        if candidate and isinstance(parts.get(candidate), dict):
            by_locale = parts[candidate]
            break
    if by_locale is None:
        by_locale = next((v for v in parts.values() if isinstance(v, dict)), None)
    part = (by_locale or {}).get(channel)
    return part if isinstance(part, dict) else None


def entry_title_body(entry, channel: str, locale: str | None = None) -> tuple[str, str]:
    """(title, body): the send's part (`title`/`body`, or `text` as the body), else the Kind's."""
    part = entry_parts(entry, channel, locale)
    if part is not None:
        title, body = str(part.get("title") or ""), str(part.get("body") or part.get("text") or "")
        if title or body:
            return title, body
    view = entry.view()
    kind = KINDS.get(entry.kind)
    if kind is None:
        return entry.kind, ""
    return kind.title(view), kind.body(view)


def entry_text(entry, channel: str, locale: str | None = None) -> str:
    """One entry as plain text: the part's `text` when the send rendered one, else title and body."""
    part = entry_parts(entry, channel, locale)
    if part is not None and part.get("text"):
        return str(part["text"])
    title, body = entry_title_body(entry, channel, locale)
    return f"{title}\n{body}" if title and body else (title or body)


def run_text(entries: list, channel: str, *, limit: int, locale: str | None = None, late: bool = False) -> str:
    """A run of entries as one text of at most `limit` characters: one entry as itself; several as
    one line each in seq order, then "… and N more (#a–#b)" for what does not fit. A single
    entry longer than the limit is returned whole (the channel refuses it as permanent)."""
    prefix = "(late) " if late else ""
    if len(entries) == 1:
        return prefix + entry_text(entries[0], channel, locale)
    first, last = entries[0].seq, entries[-1].seq
    header = f"{prefix}{len(entries)} updates (#{first}–#{last}):"
    lines = [header]
    for index, entry in enumerate(entries):
        line = "• " + " ".join(entry_text(entry, channel, locale).split())
        rest = len(entries) - index - 1
        tail = f"… and {rest} more (#{entries[index + 1].seq}–#{last})" if rest else ""
        if len("\n".join([*lines, line, tail]).rstrip()) > limit:
            remaining = len(entries) - index
            lines.append(f"… and {remaining} more (#{entry.seq}–#{last})")
            break
        lines.append(line)
    return "\n".join(lines)[:limit]
