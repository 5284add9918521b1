"""The Twilio resources a number's onboarding touches, served by ``FakeTwilio`` beside its Messages.

Every host's paths are here (``api.twilio.com``'s IncomingPhoneNumbers, AvailablePhoneNumbers and Addresses,
``messaging.twilio.com``'s Services, their PhoneNumbers and US A2P campaign, and BrandRegistrations,
``trusthub.twilio.com``'s CustomerProfiles, TrustProducts, EndUsers and SupportingDocuments): Parley reaches
them all through one ``TWILIO_API_BASE_URL``. Records are answered in Twilio's JSON (snake_case fields); forms
arrive in Twilio's PascalCase. A test moves a registration along with ``set_brand`` / ``set_campaign``, and
``evaluation`` makes the next Trust Hub evaluation noncompliant.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Authorize = Callable[[web.Request, str], bool]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ACCOUNT = web.RequestKey("account", str)
LIST_FIELDS = {"MessageSamples", "OptInKeywords", "OptOutKeywords", "HelpKeywords"}


def sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()   # A2PProfile: a2p_profile


def _value(name: str, values: list[str]) -> Any:
    if name in LIST_FIELDS:
        return values
    value = values[-1]
    return {"true": True, "false": False}.get(value, value)


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "status": status,
                              "more_info": f"https://www.twilio.com/docs/errors/{code}"}, status=status)


def _page(key: str, items: list[dict[str, Any]]) -> web.Response:
    return web.json_response({key: items, "meta": {"key": key, "page": 0, "page_size": 50, "next_page_url": None}})


@dataclass
class NumberResources:
    """What an account owns and what is for sale; the Messaging Services, brands, campaigns and Trust Hub."""

    authorized: Authorize
    owned: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)   # account -> E.164 -> number
    for_sale: list[dict[str, Any]] = field(default_factory=list)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    brands: dict[str, dict[str, Any]] = field(default_factory=dict)
    campaigns: dict[str, dict[str, Any]] = field(default_factory=dict)   # QE sid -> campaign
    trust: dict[str, dict[str, Any]] = field(default_factory=dict)       # BU/IT/RD/AD sid -> Trust Hub record
    evaluation: list[dict[str, Any]] = field(default_factory=list)       # the next evaluation's failures
    requests: list[tuple[str, str]] = field(default_factory=list)        # (method, path) of every request here

    # What a test sets up ------------------------------------------------------------------------------------

    def own(self, account: str, number: str, *, sms: bool = True, sms_url: str = "", sms_method: str = "POST"
            ) -> dict[str, Any]:
        record = {"sid": sid("PN"), "account_sid": account, "phone_number": number, "friendly_name": number,
                  "sms_url": sms_url, "sms_method": sms_method, "status": "in-use",
                  "capabilities": {"voice": True, "sms": sms, "mms": sms, "fax": False}}
        self.owned.setdefault(account, {})[number] = record
        return record

    def offer(self, number: str, *, sms: bool = True, toll_free: bool = False, region: str = "OR") -> None:
        self.for_sale.append({"phone_number": number, "friendly_name": number, "iso_country": "US",
                              "region": region, "toll_free": toll_free,
                              "capabilities": {"voice": True, "SMS": sms, "MMS": sms}})

    def service(self, account: str, *numbers: str, inbound_request_url: str = "https://old.example.com/sms",
                use_inbound_webhook_on_number: bool = False) -> dict[str, Any]:
        record: dict[str, Any] = {"sid": sid("MG"), "account_sid": account, "friendly_name": "existing",
                  "inbound_request_url": inbound_request_url, "inbound_method": "POST",
                  "use_inbound_webhook_on_number": use_inbound_webhook_on_number, "numbers": []}
        for number in numbers:
            record["numbers"].append(self.owned[account][number]["sid"])
        self.services[record["sid"]] = record
        return record

    def set_brand(self, status: str, *, failure_reason: str | None = None, brand_score: int | None = None) -> None:
        """Move every brand to ``status`` (APPROVED, FAILED...), as Twilio's review does."""
        for brand in self.brands.values():
            brand.update(status=status, failure_reason=failure_reason, brand_score=brand_score)
            brand["errors"] = [{"code": 30794, "description": failure_reason}] if failure_reason else []

    def set_campaign(self, status: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        """Move every campaign to ``status`` (VERIFIED, FAILED...)."""
        for campaign in self.campaigns.values():
            campaign.update(campaign_status=status, errors=errors or [])

    # Serving -------------------------------------------------------------------------------------------------

    def routes(self, router: web.UrlDispatcher) -> None:
        api = "/2010-04-01/Accounts/{account}"
        served: list[tuple[str, str, Handler]] = [
            ("GET", api + "/IncomingPhoneNumbers.json", self._list_numbers),
            ("POST", api + "/IncomingPhoneNumbers.json", self._buy),
            ("POST", api + "/IncomingPhoneNumbers/{sid}.json", self._update_number),
            ("GET", api + "/AvailablePhoneNumbers/{country}/{kind}.json", self._search),
            ("POST", api + "/Addresses.json", self._trust_create),
            ("GET", "/v1/Services", self._list_services),
            ("POST", "/v1/Services", self._create_service),
            ("POST", "/v1/Services/{sid}", self._update_service),
            ("GET", "/v1/Services/{sid}/PhoneNumbers/{number}", self._service_number),
            ("POST", "/v1/Services/{sid}/PhoneNumbers", self._add_service_number),
            ("POST", "/v1/Services/{sid}/Compliance/Usa2p", self._create_campaign),
            ("GET", "/v1/Services/{sid}/Compliance/Usa2p/{campaign}", self._campaign),
            ("POST", "/v1/a2p/BrandRegistrations", self._create_brand),
            ("GET", "/v1/a2p/BrandRegistrations/{sid}", self._brand),
        ]
        for kind in ("CustomerProfiles", "TrustProducts", "EndUsers", "SupportingDocuments"):
            served.append(("POST", f"/v1/{kind}", self._trust_create))
        for kind in ("CustomerProfiles", "TrustProducts"):
            served += [("POST", f"/v1/{kind}/{{sid}}", self._trust_update),
                       ("POST", f"/v1/{kind}/{{sid}}/EntityAssignments", self._assign),
                       ("POST", f"/v1/{kind}/{{sid}}/Evaluations", self._evaluate)]
        for method, path, handler in served:
            router.add_route(method, path, self._guarded(handler))

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            self.requests.append((request.method, request.path))
            account = request.match_info.get("account") or _user(request)
            if not self.authorized(request, account):
                return _error(401, 20003, "Authenticate")
            request[ACCOUNT] = account
            return await handler(request)
        return guarded

    async def _form(self, request: web.Request) -> dict[str, Any]:
        form = await request.post()
        return {snake(name): _value(name, [str(v) for v in form.getall(name)]) for name in set(form.keys())}

    # api.twilio.com

    async def _list_numbers(self, request: web.Request) -> web.Response:
        mine = self.owned.get(request[ACCOUNT], {})
        wanted = request.query.get("PhoneNumber")
        items = [n for number, n in mine.items() if wanted in (None, number)]
        return web.json_response({"incoming_phone_numbers": items, "next_page_uri": None, "page": 0})

    async def _update_number(self, request: web.Request) -> web.Response:
        found = [n for n in self.owned.get(request[ACCOUNT], {}).values() if n["sid"] == request.match_info["sid"]]
        if not found:
            return _error(404, 20404, "The requested resource was not found")
        found[0].update(await self._form(request))
        return web.json_response(found[0])

    async def _search(self, request: web.Request) -> web.Response:
        toll_free = request.match_info["kind"] == "TollFree"
        area, sms = request.query.get("AreaCode"), request.query.get("SmsEnabled")
        items = [n for n in self.for_sale if n["toll_free"] == toll_free
                 and (area is None or n["phone_number"][2:5] == area)
                 and (sms != "true" or n["capabilities"]["SMS"])
                 and n["iso_country"] == request.match_info["country"]]
        size = int(request.query.get("PageSize", "50"))
        return web.json_response({"available_phone_numbers": items[:size], "uri": request.path})

    async def _buy(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        offered = [n for n in self.for_sale if n["phone_number"] == form.get("phone_number")]
        if not offered:
            return _error(400, 21422, "PhoneNumber is not available")
        self.for_sale.remove(offered[0])
        record = self.own(request[ACCOUNT], offered[0]["phone_number"], sms=offered[0]["capabilities"]["SMS"])
        record.update(form)
        return web.json_response(record, status=201)

    # messaging.twilio.com

    async def _list_services(self, request: web.Request) -> web.Response:
        return _page("services", [s for s in self.services.values() if s["account_sid"] == request[ACCOUNT]])

    async def _create_service(self, request: web.Request) -> web.Response:
        record: dict[str, Any] = {"sid": sid("MG"), "account_sid": request[ACCOUNT],
                                  "use_inbound_webhook_on_number": False,
                  "inbound_request_url": None, "inbound_method": "POST", "numbers": []}
        record.update(await self._form(request))
        self.services[record["sid"]] = record
        return web.json_response(record, status=201)

    async def _update_service(self, request: web.Request) -> web.Response:
        service = self.services.get(request.match_info["sid"])
        if service is None:
            return _error(404, 20404, "The requested resource was not found")
        service.update(await self._form(request))
        return web.json_response(service)

    async def _service_number(self, request: web.Request) -> web.Response:
        service = self.services.get(request.match_info["sid"])
        if service is None or request.match_info["number"] not in service["numbers"]:
            return _error(404, 20404, "The requested resource was not found")
        return web.json_response({"sid": request.match_info["number"], "service_sid": service["sid"]})

    async def _add_service_number(self, request: web.Request) -> web.Response:
        service = self.services.get(request.match_info["sid"])
        if service is None:
            return _error(404, 20404, "The requested resource was not found")
        number = (await self._form(request))["phone_number_sid"]
        if number in service["numbers"]:
            return _error(409, 21710, "Phone Number is already in the Messaging Service")
        service["numbers"].append(number)
        return web.json_response({"sid": number, "service_sid": service["sid"]}, status=201)

    async def _create_brand(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        for bundle in ("customer_profile_bundle_sid", "a2p_profile_bundle_sid"):
            if form.get(bundle) not in self.trust:
                return _error(400, 21601, f"{bundle}: no such bundle")
        record = {"sid": sid("BN"), "account_sid": request[ACCOUNT], "status": "PENDING", "brand_type": "STANDARD",
                  "failure_reason": None, "errors": [], "brand_score": None, **form}
        self.brands[record["sid"]] = record
        return web.json_response(record, status=201)

    async def _brand(self, request: web.Request) -> web.Response:
        brand = self.brands.get(request.match_info["sid"])
        return web.json_response(brand) if brand else _error(404, 20404, "The requested resource was not found")

    async def _create_campaign(self, request: web.Request) -> web.Response:
        service = self.services.get(request.match_info["sid"])
        form = await self._form(request)
        brand = self.brands.get(form.get("brand_registration_sid", ""))
        if service is None or brand is None:
            return _error(404, 20404, "The requested resource was not found")
        if brand["status"] != "APPROVED":
            return _error(400, 21714, "Brand registration is not approved")
        record = {"sid": sid("QE"), "account_sid": request[ACCOUNT], "messaging_service_sid": service["sid"],
                  "campaign_status": "IN_PROGRESS", "errors": [], **form}
        self.campaigns[record["sid"]] = record
        return web.json_response(record, status=201)

    async def _campaign(self, request: web.Request) -> web.Response:
        campaign = self.campaigns.get(request.match_info["campaign"])
        return web.json_response(campaign) if campaign else _error(404, 20404, "The requested resource was not found")

    # trusthub.twilio.com (and the address a customer profile's document names)

    async def _trust_create(self, request: web.Request) -> web.Response:
        kind = request.path.rsplit("/", 1)[-1]
        prefix = {"CustomerProfiles": "BU", "TrustProducts": "BU", "EndUsers": "IT", "SupportingDocuments": "RD",
                  "Addresses.json": "AD"}[kind]
        record = {"sid": sid(prefix), "account_sid": request[ACCOUNT], "kind": kind, "status": "draft",
                  "assigned": [], **(await self._form(request))}
        self.trust[record["sid"]] = record
        return web.json_response(record, status=201)

    async def _trust_update(self, request: web.Request) -> web.Response:
        record = self.trust.get(request.match_info["sid"])
        if record is None:
            return _error(404, 20404, "The requested resource was not found")
        record.update(await self._form(request))
        return web.json_response(record)

    async def _assign(self, request: web.Request) -> web.Response:
        record = self.trust.get(request.match_info["sid"])
        assigned = (await self._form(request)).get("object_sid")
        if record is None or assigned not in self.trust:
            return _error(404, 20404, "The requested resource was not found")
        record["assigned"].append(assigned)
        return web.json_response({"sid": sid("BV"), "object_sid": assigned}, status=201)

    async def _evaluate(self, request: web.Request) -> web.Response:
        record = self.trust.get(request.match_info["sid"])
        if record is None:
            return _error(404, 20404, "The requested resource was not found")
        failures, self.evaluation = self.evaluation, []
        return web.json_response({"sid": sid("EL"), "status": "noncompliant" if failures else "compliant",
                                  "results": failures}, status=201)


def _user(request: web.Request) -> str:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Basic":
        return ""
    return base64.b64decode(encoded).decode().partition(":")[0]
