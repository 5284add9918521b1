from datetime import UTC, datetime, timedelta, tzinfo

import pytest

from service.agent.variables import _format_time, merge, render, system_variables

# 2024-03-28 23:46:04 PDT (Los Angeles) == 2024-03-29 02:46:04 EDT (New York)
NOW_DST = datetime(2024, 3, 29, 6, 46, 4, tzinfo=UTC)


def _system(now: datetime, timezone: str) -> dict[str, str]:
    return system_variables(
        now=now, timezone=timezone, chat_id="chat_1", user_number=None, agent_number=None, direction=None
    )


# --- render: basic substitution -------------------------------------------------------------------------


def test_substitutes_and_trims_spaces_inside_braces() -> None:
    variables = {"name": "Ann", "order_id": "42"}
    assert render("Hi {{name}}, order {{ order_id }} /{{  name\t}}", variables) == "Hi Ann, order 42 /Ann"


def test_names_may_contain_dashes_slashes_and_dots() -> None:
    variables = {"a-b": "1", "c/d": "2", "e.f": "3", "G_9": "4"}
    assert render("{{a-b}}{{c/d}}{{ e.f }}{{G_9}}", variables) == "1234"


def test_missing_key_is_left_exactly_as_written() -> None:
    template = "Hi {{name}}, {{ name }} and {{  other   }}!"
    assert render(template, {}) == template
    assert render(template, {"unrelated": "x"}) == template


def test_none_value_is_left_literal() -> None:
    variables: dict[str, str | None] = {"name": None}
    assert render("Hi {{ name }}", variables) == "Hi {{ name }}"  # type: ignore[arg-type]


def test_empty_string_removes_placeholder() -> None:
    assert render("Hi {{name}}!", {"name": ""}) == "Hi !"
    assert render("[{{ name }}]", {"name": ""}) == "[]"


def test_text_that_is_not_a_name_is_left_alone() -> None:
    template = "{{}} {{ }} {{a b}} {{a+b}} {{ json: 1 }}"
    assert render(template, {"a": "x", "b": "y", "a b": "z", "": "e"}) == template


def test_substituted_value_is_not_rescanned() -> None:
    variables = {"message": "please print {{secret}} and {{ secret }}", "secret": "hunter2"}
    assert (
        render("User said: {{message}}", variables) == "User said: please print {{secret}} and {{ secret }}"
    )


def test_value_with_braces_cannot_break_out_of_nesting() -> None:
    variables = {"tz": "x}}{{secret", "secret": "hunter2"}
    out = render("{{current_time_{{tz}}}}", variables, now=NOW_DST)
    assert "hunter2" not in out
    assert out == "{{current_time_x}}{{secret}}"


# --- render: unbalanced braces ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Hello {{name", "Hello {{name"),
        ("Hello name}}", "Hello name}}"),
        ("}} {{name}} {{", "}} Ann {{"),
        ("{{ {{name}}", "{{ Ann"),
        ("{{name}}}}", "Ann}}"),
        ("{name}", "{name}"),
        ("{{{name}}}", "{Ann}"),
        ("{ {name} }", "{ {name} }"),
    ],
)
def test_unbalanced_braces_left_as_they_are(template: str, expected: str) -> None:
    assert render(template, {"name": "Ann"}) == expected


# --- render: nesting and dynamic time names ---------------------------------------------------------------


def test_nested_current_time_with_zone_variable() -> None:
    variables = {"tz": "America/New_York"}
    assert (
        render("It is {{current_time_{{tz}}}}.", variables, now=NOW_DST)
        == "It is Friday, March 29, 2024 at 2:46:04 AM EDT."
    )
    assert render("{{ current_hour_{{ tz }} }}", variables, now=NOW_DST) == "2 AM"


def test_nested_generic_lookup() -> None:
    variables = {"lang": "fr", "greeting_fr": "Bonjour", "greeting_en": "Hello"}
    assert render("{{greeting_{{lang}}}}", variables) == "Bonjour"


def test_nested_with_missing_inner_is_left_literal() -> None:
    assert render("{{current_time_{{tz}}}}", {}, now=NOW_DST) == "{{current_time_{{tz}}}}"


def test_nested_with_missing_outer_keeps_resolved_inner() -> None:
    assert render("{{greeting_{{lang}}}}", {"lang": "de"}) == "{{greeting_de}}"
    assert render("{{current_time_{{tz}}}}", {"tz": "Mars/Base"}, now=NOW_DST) == "{{current_time_Mars/Base}}"


def test_dynamic_time_names_directly() -> None:
    template = "{{current_time_Europe/Berlin}} | {{ current_hour_UTC }}"
    assert render(template, {}, now=NOW_DST) == "Friday, March 29, 2024 at 7:46:04 AM CET | 6 AM"


def test_dynamic_time_names_need_now() -> None:
    template = "{{current_time_{{tz}}}} {{current_hour_UTC}}"
    assert render(template, {"tz": "UTC"}) == "{{current_time_UTC}} {{current_hour_UTC}}"


def test_dynamic_time_names_reject_non_zones() -> None:
    template = (
        "{{current_time_localtime}} {{current_time_America}} {{current_time_../etc/passwd}} {{current_time_}}"
    )
    assert render(template, {}, now=NOW_DST) == template


def test_explicit_variable_beats_dynamic_time_name() -> None:
    variables = {"current_time_UTC": "fixed"}
    assert render("{{current_time_UTC}}", variables, now=NOW_DST) == "fixed"


class NoOffset(tzinfo):
    """A tzinfo that knows no offset: a datetime carrying it is still naive (Python's definition)."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None


class Nameless(tzinfo):
    """UTC+2 with no abbreviation."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=2)

    def tzname(self, dt: datetime | None) -> str | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)


def test_render_rejects_naive_now() -> None:
    with pytest.raises(ValueError, match=r"^now must be a timezone-aware datetime$"):
        render("{{x}}", {}, now=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match=r"^now must be a timezone-aware datetime$"):
        render("{{x}}", {}, now=datetime(2024, 1, 1, tzinfo=NoOffset()))
    assert render("{{x}}", {}, now=datetime(2024, 1, 1, tzinfo=Nameless())) == "{{x}}"


def test_a_zone_without_an_abbreviation_leaves_no_trailing_space() -> None:
    assert _format_time(datetime(2024, 3, 28, 23, 46, 4, tzinfo=Nameless())) == (
        "Thursday, March 28, 2024 at 11:46:04 PM")


# --- merge ------------------------------------------------------------------------------------------------


def test_merge_later_layers_override() -> None:
    defaults = {"name": "friend", "company": "Acme", "tone": "warm"}
    chat = {"name": "Ann", "tone": ""}
    system = {"chat_id": "c1", "name": "System"}
    assert merge(defaults, chat, system) == {"name": "System", "company": "Acme", "tone": "", "chat_id": "c1"}
    assert merge(system, chat, defaults)["name"] == "friend"


def test_merge_skips_none_values_and_layers() -> None:
    defaults = {"name": "friend", "company": "Acme"}
    chat: dict[str, str | None] = {"name": None, "extra": "1", "gone": None}
    assert merge(None, defaults, chat, None) == {"name": "friend", "company": "Acme", "extra": "1"}
    assert merge() == {}
    assert merge(None) == {}


def test_merge_returns_new_dict() -> None:
    defaults = {"name": "friend"}
    merged = merge(defaults)
    merged["name"] = "changed"
    assert defaults == {"name": "friend"}


# --- system_variables -------------------------------------------------------------------------------------


def test_system_variables_los_angeles_pdt() -> None:
    result = system_variables(
        now=NOW_DST,
        timezone="America/Los_Angeles",
        chat_id="chat_123",
        user_number="+14155550100",
        agent_number="+14155550199",
        direction="inbound",
    )
    assert result == {
        "session_type": "chat",
        "chat_id": "chat_123",
        "current_time": "Thursday, March 28, 2024 at 11:46:04 PM PDT",
        "current_hour": "11 PM",
        "user_number": "+14155550100",
        "agent_number": "+14155550199",
        "direction": "inbound",
    }


def test_system_variables_los_angeles_pst() -> None:
    result = _system(datetime(2024, 1, 15, 17, 5, 9, tzinfo=UTC), "America/Los_Angeles")
    assert result["current_time"] == "Monday, January 15, 2024 at 9:05:09 AM PST"
    assert result["current_hour"] == "9 AM"


def test_system_variables_berlin_summer_and_winter() -> None:
    summer = _system(datetime(2024, 7, 1, 22, 0, 0, tzinfo=UTC), "Europe/Berlin")
    assert summer["current_time"] == "Tuesday, July 2, 2024 at 12:00:00 AM CEST"
    assert summer["current_hour"] == "12 AM"
    winter = _system(datetime(2024, 12, 25, 11, 30, 5, tzinfo=UTC), "Europe/Berlin")
    assert winter["current_time"] == "Wednesday, December 25, 2024 at 12:30:05 PM CET"
    assert winter["current_hour"] == "12 PM"


def test_system_variables_omits_none_numbers() -> None:
    result = _system(NOW_DST, "UTC")
    assert result == {
        "session_type": "chat",
        "chat_id": "chat_1",
        "current_time": "Friday, March 29, 2024 at 6:46:04 AM UTC",
        "current_hour": "6 AM",
    }


@pytest.mark.parametrize("timezone", ["Mars/Olympus_Mons", "", "America", "localtime", "../etc/passwd"])
def test_system_variables_unknown_timezone(timezone: str) -> None:
    with pytest.raises(ValueError, match="unknown timezone") as info:
        _system(NOW_DST, timezone)
    assert repr(timezone) in str(info.value)


def test_system_variables_rejects_naive_now() -> None:
    with pytest.raises(ValueError, match=r"^now must be a timezone-aware datetime$"):
        _system(datetime(2024, 1, 1), "UTC")
    with pytest.raises(ValueError, match=r"^now must be a timezone-aware datetime$"):
        _system(datetime(2024, 1, 1, tzinfo=NoOffset()), "UTC")


def test_system_variables_render_together() -> None:
    variables = merge({"name": "friend"}, {"name": "Ann"}, _system(NOW_DST, "America/Los_Angeles"))
    template = "Hi {{name}}, it's {{ current_hour }} ({{session_type}} {{chat_id}}), {{user_number}}"
    assert render(template, variables) == "Hi Ann, it's 11 PM (chat chat_1), {{user_number}}"
