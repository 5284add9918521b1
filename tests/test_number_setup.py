"""Import, buy and delete a number through the real twilio client against the fake Twilio: webhooks set,
previous values put back, Twilio's errors as clear 4xx with its code."""

from __future__ import annotations

from typing import Any

from retell import AsyncRetell

from service.channels.twilio.numbers import NUMBERS

from .conftest import ACCOUNT_SID, OTHER_NUMBER, PUBLIC_URL, MakeParley, Parley, api_json

PARLEY_SMS = PUBLIC_URL + "/twilio/sms"
NEW = "+15035550150"


def owned(parley: Parley, number: str) -> dict[str, Any]:
    return parley.twilio.numbers.owned[ACCOUNT_SID][number]


async def test_import_sets_the_webhook_and_delete_puts_back_the_old_one(parley: Parley) -> None:
    owned(parley, NEW).update(sms_url="https://old.example.com/hook", sms_method="GET")
    number = await api_json(parley, "POST", "/import-phone-number", 201, json={"phone_number": NEW})
    assert number["warnings"] == []
    assert (owned(parley, NEW)["sms_url"], owned(parley, NEW)["sms_method"]) == (PARLEY_SMS, "POST")
    await api_json(parley, "DELETE", f"/delete-phone-number/{NEW}", 204)
    assert (owned(parley, NEW)["sms_url"], owned(parley, NEW)["sms_method"]) == ("https://old.example.com/hook",
                                                                                 "GET")
    assert await parley.redis.exists(f"parley:{{catalog}}:number:{NEW}:twilio") == 0


async def test_import_through_retell_sdk_answers_its_phone_number_object(parley: Parley, retell: AsyncRetell) -> None:
    number = await retell.phone_number.import_(phone_number=NEW, termination_uri="sunny.pstn.twilio.com",
                                               nickname="Sunny")
    assert number.phone_number == NEW and number.nickname == "Sunny"
    assert number.model_extra and number.model_extra["unsupported"] == ["termination_uri: stored, not used by Parley"]
    assert owned(parley, NEW)["sms_url"] == PARLEY_SMS


async def test_a_number_in_a_messaging_service_defers_to_its_own_webhook(parley: Parley) -> None:
    service = parley.twilio.numbers.service(ACCOUNT_SID, NEW)
    await api_json(parley, "POST", "/import-phone-number", 201, json={"phone_number": NEW})
    assert service["use_inbound_webhook_on_number"] is True
    assert service["inbound_request_url"] == "https://old.example.com/sms"   # untouched
    await api_json(parley, "DELETE", f"/delete-phone-number/{NEW}", 204)
    assert service["use_inbound_webhook_on_number"] is False


async def test_with_the_flag_the_service_inbound_url_is_set_instead(parley: Parley) -> None:
    service = parley.twilio.numbers.service(ACCOUNT_SID, NEW)
    await api_json(parley, "POST", "/import-phone-number", 201,
                   json={"phone_number": NEW, "twilio_messaging_service_url": True})
    assert (service["inbound_request_url"], service["use_inbound_webhook_on_number"]) == (PARLEY_SMS, False)
    await api_json(parley, "DELETE", f"/delete-phone-number/{NEW}", 204)
    assert service["inbound_request_url"] == "https://old.example.com/sms"


async def test_a_service_shared_by_two_parley_numbers_is_put_back_after_the_last(parley: Parley) -> None:
    other = "+15035550151"
    service = parley.twilio.numbers.service(ACCOUNT_SID, NEW, other)
    for number in (NEW, other):
        await api_json(parley, "POST", "/import-phone-number", 201, json={"phone_number": number})
    await api_json(parley, "DELETE", f"/delete-phone-number/{NEW}", 204)
    assert service["use_inbound_webhook_on_number"] is True   # the other number still relies on it
    await api_json(parley, "DELETE", f"/delete-phone-number/{other}", 204)
    assert service["use_inbound_webhook_on_number"] is False


async def test_the_parley_field_leaves_twilio_alone(parley: Parley) -> None:
    owned(parley, NEW)["sms_url"] = "https://mine.example.com"
    await api_json(parley, "POST", "/import-phone-number", 201, json={"phone_number": NEW, "twilio_webhooks": False})
    await api_json(parley, "DELETE", f"/delete-phone-number/{NEW}", 204)
    assert owned(parley, NEW)["sms_url"] == "https://mine.example.com"
    assert parley.twilio.numbers.requests == []


async def test_an_update_switching_twilio_webhooks_puts_back_or_sets_again(parley: Parley) -> None:
    owned(parley, NEW)["sms_url"] = "https://mine.example.com"
    await api_json(parley, "POST", "/import-phone-number", 201, json={"phone_number": NEW})
    await api_json(parley, "PATCH", f"/update-phone-number/{NEW}", json={"twilio_webhooks": False})
    assert owned(parley, NEW)["sms_url"] == "https://mine.example.com"
    await api_json(parley, "PATCH", f"/update-phone-number/{NEW}", json={"nickname": "no rewiring"})
    assert owned(parley, NEW)["sms_url"] == "https://mine.example.com"
    await api_json(parley, "PATCH", f"/update-phone-number/{NEW}", json={"twilio_webhooks": True})
    assert owned(parley, NEW)["sms_url"] == PARLEY_SMS
    await api_json(parley, "DELETE", f"/delete-phone-number/{NEW}", 204)
    assert owned(parley, NEW)["sms_url"] == "https://mine.example.com"


async def test_without_a_public_url_import_works_and_says_what_to_set(make_parley: MakeParley) -> None:
    parley = await make_parley(public_url=None)
    number = await api_json(parley, "POST", "/import-phone-number", 201, json={"phone_number": NEW})
    [warning] = number["warnings"]
    assert "PARLEY_PUBLIC_URL is not set" in warning and "parley numbers sync" in warning
    assert owned(parley, NEW)["sms_url"] == ""


async def test_twilio_errors_are_clear_4xx_with_twilio_code(parley: Parley) -> None:
    missing = await api_json(parley, "POST", "/import-phone-number", 404, json={"phone_number": "+15035559999"})
    assert "has no number +15035559999" in missing["message"]
    parley.twilio.numbers.own(ACCOUNT_SID, "+15035559998", sms=False)
    no_sms = await api_json(parley, "POST", "/import-phone-number", 422, json={"phone_number": "+15035559998"})
    assert "no SMS capability" in no_sms["message"] and no_sms["twilio_code"] == 21606
    parley.twilio.accounts[ACCOUNT_SID] = "rotated"
    refused = await api_json(parley, "POST", "/import-phone-number", 422, json={"phone_number": NEW})
    assert refused["twilio_code"] == 20003 and "TWILIO_AUTH_TOKEN" in refused["message"]
    assert [n["phone_number"] for n in await api_json(parley, "GET", "/list-phone-numbers")] == ["+15035550100"]


async def test_buying_picks_an_sms_capable_number_in_the_area_code(parley: Parley, retell: AsyncRetell) -> None:
    fake = parley.twilio.numbers
    fake.offer("+14155550001")                 # another area code
    fake.offer("+15035550901", sms=False)      # voice only
    fake.offer("+15035550902")
    number = await retell.phone_number.create(area_code=503, number_provider="twilio", nickname="Bought", extra_body={
        "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]})
    assert number.phone_number == "+15035550902"
    bought = owned(parley, "+15035550902")
    assert (bought["sms_url"], bought["sms_method"], bought["friendly_name"]) == (PARLEY_SMS, "POST", "Bought")
    got = await api_json(parley, "GET", "/get-phone-number/+15035550902")
    assert got["inbound_sms_agents"] == [{"agent_id": "frontdesk", "weight": 1}]
    assert fake.requests[0] == ("GET", "/2010-04-01/Accounts/" + ACCOUNT_SID + "/AvailablePhoneNumbers/US/Local.json")
    none_left = await api_json(parley, "POST", "/create-phone-number", 404, json={"area_code": 212})
    assert "no SMS-capable local US number for sale in area code 212" in none_left["message"]


async def test_buying_a_toll_free_number_warns_about_its_verification(parley: Parley) -> None:
    parley.twilio.numbers.offer("+18885550100", toll_free=True)
    number = await api_json(parley, "POST", "/create-phone-number", 201, json={"toll_free": True})
    assert number["phone_number"] == "+18885550100"
    assert "toll-free verification" in number["warnings"][0]


async def test_a_named_number_without_sms_is_bought_with_a_warning(parley: Parley) -> None:
    parley.twilio.numbers.offer("+15035550903", sms=False)
    number = await api_json(parley, "POST", "/create-phone-number", 201, json={"phone_number": "+15035550903"})
    assert number["warnings"] == ["+15035550903 was bought but has no SMS capability in Twilio: it cannot text "
                                  "(Twilio refuses a text from it with error 21606); release it in the Twilio console"]


async def test_telnyx_is_refused(parley: Parley) -> None:
    refused = await api_json(parley, "POST", "/create-phone-number", 422, json={"number_provider": "telnyx"})
    assert "telnyx is not supported" in refused["message"]
    assert parley.twilio.numbers.requests == []


async def test_a_specific_number_already_imported_is_a_conflict(parley: Parley) -> None:
    await api_json(parley, "POST", "/import-phone-number", 201, json={"phone_number": OTHER_NUMBER})
    await api_json(parley, "POST", "/create-phone-number", 409, json={"phone_number": OTHER_NUMBER})


async def test_every_twilio_host_goes_to_the_one_base_url(parley: Parley) -> None:
    client = parley.client.app[NUMBERS].client(ACCOUNT_SID)
    assert client.messaging.base_url == "https://messaging.twilio.com"   # the client's own host, rewritten on the way
    await client.incoming_phone_numbers.list_async(limit=1)                       # api.twilio.com
    await client.messaging.v1.services.list_async()                              # messaging.twilio.com
    await client.trusthub.v1.end_users.create_async(friendly_name="x", type="authorized_representative_1")  # trusthub
    assert [path for _, path in parley.twilio.numbers.requests] == [
        f"/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers.json", "/v1/Services", "/v1/EndUsers"]
