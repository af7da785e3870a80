"""The template sandbox (notifications.templating.template_render): escapes to Python internals,
loops that render for seconds, amplifying operations and output size are stopped with
`template_render_error` naming the channel, field and line. Rendered from unsaved templates, so the
runtime sandbox is tested on its own (saving rejects most of these earlier: test_templates)."""
import threading
import time

import pytest

from config.errors import ApplicationError
from notifications.models import NotificationTemplate
from notifications.templating import template_render


def _template(source: str, *, channel="sms", field="text", variables=("name",)) -> NotificationTemplate:
    return NotificationTemplate(kind="k", locale="en", category="transactional", variables=list(variables),
                                parts={channel: {field: source}})


def _render_error(source: str, **kwargs) -> dict:
    with pytest.raises(ApplicationError) as caught:
        template_render(template=_template(source, **kwargs), data={"name": "Ann"})
    assert caught.value.code == "template_render_error"
    return caught.value.extra


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ name.__class__.__base__.__subclasses__() }}",
    "{{ ''|attr('__class__') }}",
    "{{ (name|attr('__class__')).__init__ }}",
    "{{ name['__class__'] }}",
    "{{ range.__globals__ }}",
    "{{ dict.__init__.__globals__['os'] }}",
    "{{ name.format.__globals__ }}",
    "{{ '{0.__class__}'.format(name) }}",
])
def test_python_internals_are_unreachable(source):
    extra = _render_error(source)
    assert extra["reason"] in ("security", "undefined")
    assert extra["channel"] == "sms" and extra["field"] == "text" and extra["line"] == 1


@pytest.mark.parametrize("source", [
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ lipsum.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ config }}",
    "{{ request }}",
])
def test_jinja_globals_that_lead_to_internals_are_not_there(source):
    assert _render_error(source)["reason"] in ("undefined", "security")


@pytest.mark.parametrize("source", [
    "{% set l = [1] %}{{ l.append(2) }}",
    "{% set d = {} %}{{ d.update(a=1) }}",
])
def test_containers_cannot_be_mutated(source):
    assert _render_error(source)["reason"] == "security"


def test_a_huge_range_is_refused():
    extra = _render_error("ok\n{% for i in range(10**9) %}x{% endfor %}")
    assert extra["line"] == 2 and "range" in extra["detail"].lower()


def test_a_template_that_renders_for_seconds_is_stopped_at_the_deadline(settings):
    settings.TEMPLATE_RENDER_TIMEOUT_SECONDS = 0.5
    started = time.monotonic()
    extra = _render_error("a\nb\n{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}"
                          "{% endfor %}")
    elapsed = time.monotonic() - started
    assert extra["reason"] == "timeout" and extra["channel"] == "sms"
    assert extra["line"] == 3
    assert elapsed < 5, elapsed  # the limit is 0.5 s; slack for a loaded machine


def test_a_recursive_macro_loop_is_stopped(settings):
    settings.TEMPLATE_RENDER_TIMEOUT_SECONDS = 0.5
    source = ("{% macro f(n) %}{% for i in range(100000) %}{% if n %}{{ f(n - 1) }}{% endif %}{% endfor %}"
              "{% endmacro %}{{ f(5) }}")
    assert _render_error(source)["reason"] in ("timeout", "too_large")


def test_the_deadline_never_leaks_into_later_work(settings):
    """A render that ends right at its deadline must not leave a pending exception behind."""
    settings.TEMPLATE_RENDER_TIMEOUT_SECONDS = 0.05
    for _ in range(5):
        try:
            template_render(template=_template("{% for i in range(100000) %}{{ i }}{% endfor %}"),
                            data={"name": "x"})
        except ApplicationError:
            pass
    settings.TEMPLATE_RENDER_TIMEOUT_SECONDS = 1.0
    total = 0
    for i in range(200000):  # plain Python work after the renders: nothing is raised into it
        total += i
    time.sleep(0.1)
    assert total == sum(range(200000))


def test_renders_in_other_threads_have_their_own_deadline(settings):
    settings.TEMPLATE_RENDER_TIMEOUT_SECONDS = 0.5
    results = {}

    def slow():
        try:
            template_render(template=_template("{% for i in range(100000) %}{% for j in range(100000) %}"
                                               "{% endfor %}{% endfor %}"), data={})
        except ApplicationError as exc:
            results["slow"] = exc.extra["reason"]

    thread = threading.Thread(target=slow)
    thread.start()
    fast = template_render(template=_template("Hi {{ name }}"), data={"name": "Ann"})
    thread.join(10)
    assert fast == {"sms": {"text": "Hi Ann"}}
    assert results == {"slow": "timeout"}


@pytest.mark.parametrize("source", [
    "{{ 'x' * 10**9 }}",
    "{{ [1] * 10**9 }}",
    "{{ 2 ** 100000 }}",
    "{{ 'x'.center(10**9) }}",
    "{{ 'x'.ljust(10**9) }}",
    "{{ 'x'.zfill(10**9) }}",
    "{{ 'x'|center(10**9) }}",
    "{{ 'x'|indent(10**8, true) }}",
    "{% set s = 'x' * 1000 %}{{ s.replace('', s) }}",
    "{% set s = 'x' * 1000 %}{{ s|replace('', s) }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '%0999999999d'|format(1) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{:>{w}}'.format(1, w=999999999) }}",
    "{% set s = 'x' * 90000 %}{{ s + s }}",
    "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}"
    "{{ f('x', 40) }}",
    "{{ range(100)|join('x' * 10000) }}",
    "{% for i in range(100000) %}{{ name }}{% endfor %}",
    "{{ range(10)|batch(10**9, 'x')|list }}",
])
def test_amplifying_operations_are_refused_before_they_allocate(source):
    started = time.monotonic()
    extra = _render_error(source)
    assert extra["reason"] in ("too_large", "timeout"), extra
    assert time.monotonic() - started < 5


def test_output_limit_is_per_field(settings):
    settings.TEMPLATE_MAX_OUTPUT_CHARS = 1000
    assert template_render(template=_template("{{ 'x' * 1000 }}"), data={}) == {"sms": {"text": "x" * 1000}}
    assert _render_error("{{ 'x' * 1001 }}")["reason"] == "too_large"


def test_undefined_variable_names_its_line():
    extra = _render_error("Hello\n\n{{ nobody }}", variables=["name", "nobody"])
    assert extra == {"channel": "sms", "field": "text", "line": 3, "reason": "undefined",
                     "detail": "'nobody' is undefined"}


def test_only_declared_variables_are_visible():
    extra = _render_error("{{ secret }}", variables=["name"])
    assert extra["reason"] == "undefined"


def test_html_parts_are_escaped_and_text_parts_are_not():
    template = NotificationTemplate(kind="k", locale="en", category="transactional", variables=["name"], parts={
        "email": {"subject": "Hi {{ name }}", "text": "Hi {{ name }}", "html": "<p>Hi {{ name }}</p>"}})
    rendered = template_render(template=template, data={"name": "<b>Ann & co</b>"})
    assert rendered["email"] == {"subject": "Hi <b>Ann & co</b>", "text": "Hi <b>Ann & co</b>",
                                 "html": "<p>Hi &lt;b&gt;Ann &amp; co&lt;/b&gt;</p>"}


def test_structured_fields_render_every_string_leaf_and_name_the_path():
    template = NotificationTemplate(kind="k", locale="en", category="transactional", variables=["name", "n"], parts={
        "webhook": {"json": {"user": "{{ name }}", "items": ["{{ n }}", 3, True], "nested": {"x": "{{ n * 2 }}"}}},
        "push": {"title": "T", "data": {"who": "{{ name|upper }}"}}})
    rendered = template_render(template=template, data={"name": "ann", "n": 21})
    assert rendered["webhook"]["json"] == {"user": "ann", "items": ["21", 3, True], "nested": {"x": "42"}}
    assert rendered["push"] == {"title": "T", "data": {"who": "ANN"}}
    template.parts["webhook"]["json"]["nested"]["x"] = "{{ n.__class__ }}"
    with pytest.raises(ApplicationError) as caught:
        template_render(template=template, data={"name": "ann", "n": 21}, channels=["webhook"])
    assert caught.value.extra["path"] == "nested.x" and caught.value.extra["field"] == "json"


def test_channels_selects_parts():
    template = NotificationTemplate(kind="k", locale="en", category="transactional", variables=[], parts={
        "sms": {"text": "s"}, "slack": {"text": "k"}, "inapp": {"title": "t", "body": "b"}})
    assert template_render(template=template, data={}, channels=["slack", "inapp", "push"]) == {
        "slack": {"text": "k"}, "inapp": {"title": "t", "body": "b"}}
