"""Twilio's A2P 10DLC resources, through the official client: the business's Trust Hub customer profile and A2P
bundle, the brand registration, a Messaging Service holding the numbers, and its US A2P campaign.

The steps follow Twilio's guide for registering through the API: a secondary customer profile (business
information and an authorized representative as end users, the address as a supporting document), evaluated
and submitted; an A2P messaging profile bundle naming that profile, evaluated and submitted; then a
``BrandRegistrations`` record naming both (a low-volume standard brand skips the automatic secondary vetting).
Once the brand is approved, the numbers go into a Messaging Service and its ``UsAppToPerson`` campaign is
created. Each call's error becomes ``TwilioRefused`` (``rest.call``); a noncompliant evaluation is an
``InvalidRequest`` naming what Twilio found missing.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from twilio.base import values
from twilio.rest import Client

from service.channels.twilio.campaign import Campaign
from service.channels.twilio.rest import call
from service.errors import InvalidRequest

# Twilio's Trust Hub policies: a secondary customer profile, and an A2P messaging profile bundle.
CUSTOMER_PROFILE_POLICY = "RNdfbf3fae0e1107f8aded0e7cead80bf5"
A2P_BUNDLE_POLICY = "RNb0d4771c2c98518d916a3d4cd70a8f8b"
BrandType = Literal["low_volume_standard", "standard"]


class Address(BaseModel):
    street: str = Field(min_length=1)
    city: str = Field(min_length=1)
    region: str = Field(min_length=2, description="state or province, like OR")
    postal_code: str = Field(min_length=3)
    country: str = Field(default="US", pattern=r"^[A-Z]{2}$")


class Business(BaseModel):
    """The business that sends the texts, as Twilio's customer profile records it."""

    name: str = Field(min_length=1, description="the legal name, exactly as on the tax registration")
    type: Literal["Sole Proprietorship", "Partnership", "Limited Liability Corporation", "Co-operative",
                  "Non-profit Corporation", "Corporation"]
    registration_number: str = Field(min_length=1, description="the EIN (US) or the registration number")
    registration_identifier: Literal["EIN", "CBN", "CRN", "VAT", "Other"] = "EIN"
    industry: str = Field(min_length=1, description="Twilio's industry value, like HEALTHCARE or RETAIL")
    website: str = Field(min_length=1)
    regions: str = Field(default="USA_AND_CANADA", description="Twilio's business_regions_of_operation")
    company_type: Literal["private", "public", "non-profit", "government"] = "private"
    stock_exchange: str | None = None
    stock_ticker: str | None = None
    address: Address


class Contact(BaseModel):
    """The authorized representative Twilio and the carriers may contact."""

    first_name: str = Field(min_length=1)
    last_name: str = Field(min_length=1)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    phone_number: str = Field(pattern=r"^\+[1-9][0-9]{1,14}$")
    title: str = Field(min_length=1, description="business title, like Owner")
    job_position: Literal["Director", "GM", "VP", "CEO", "CFO", "General Counsel", "Other"] = "Other"


async def _evaluated(what: str, evaluations: Any) -> None:
    result = await call(f"evaluating the {what}", evaluations.create_async(
        policy_sid=CUSTOMER_PROFILE_POLICY if what == "customer profile" else A2P_BUNDLE_POLICY))
    if result.status != "compliant":
        reasons = [str(r.get("failure_reason") or r.get("friendly_name") or r) for r in (result.results or [])]
        raise InvalidRequest(f"Twilio found the {what} incomplete: " + ("; ".join(reasons) or "no reason given"))


async def customer_profile(client: Client, business: Business, contact: Contact, email: str) -> str:
    """A secondary customer profile with the business, its representative and its address, submitted."""
    hub = client.trusthub.v1
    profile = await call("creating the customer profile", hub.customer_profiles.create_async(
        friendly_name=business.name, email=email, policy_sid=CUSTOMER_PROFILE_POLICY))
    info = await call("recording the business", hub.end_users.create_async(
        friendly_name=business.name, type="customer_profile_business_information", attributes={
            "business_name": business.name, "business_identity": "direct_customer", "business_type": business.type,
            "business_industry": business.industry,
            "business_registration_identifier": business.registration_identifier,
            "business_registration_number": business.registration_number,
            "business_regions_of_operation": business.regions, "website_url": business.website,
            "social_media_profile_urls": ""}))
    person = await call("recording the authorized representative", hub.end_users.create_async(
        friendly_name=f"{contact.first_name} {contact.last_name}", type="authorized_representative_1", attributes={
            "first_name": contact.first_name, "last_name": contact.last_name, "email": contact.email,
            "phone_number": contact.phone_number, "business_title": contact.title,
            "job_position": contact.job_position}))
    place = business.address
    address = await call("recording the business address", client.addresses.create_async(
        customer_name=business.name, street=place.street, city=place.city, region=place.region,
        postal_code=place.postal_code, iso_country=place.country))
    document = await call("recording the address document", hub.supporting_documents.create_async(
        friendly_name=f"{business.name} address", type="customer_profile_address",
        attributes={"address_sids": address.sid}))
    assignments = hub.customer_profiles(profile.sid).customer_profiles_entity_assignments
    for part in (info.sid, person.sid, document.sid):
        await call("adding to the customer profile", assignments.create_async(object_sid=part))
    await _evaluated("customer profile", hub.customer_profiles(profile.sid).customer_profiles_evaluations)
    await call("submitting the customer profile",
               hub.customer_profiles(profile.sid).update_async(status="pending-review"))
    return str(profile.sid)


async def a2p_bundle(client: Client, business: Business, profile_sid: str, email: str) -> str:
    """The A2P messaging profile bundle naming the customer profile, submitted."""
    hub = client.trusthub.v1
    bundle = await call("creating the A2P bundle", hub.trust_products.create_async(
        friendly_name=f"{business.name} A2P", email=email, policy_sid=A2P_BUNDLE_POLICY))
    info = await call("recording the A2P messaging profile", hub.end_users.create_async(
        friendly_name=f"{business.name} A2P", type="us_a2p_messaging_profile_information", attributes={
            "company_type": business.company_type, "stock_exchange": business.stock_exchange or "",
            "stock_ticker": business.stock_ticker or ""}))
    assignments = hub.trust_products(bundle.sid).trust_products_entity_assignments
    for part in (info.sid, profile_sid):
        await call("adding to the A2P bundle", assignments.create_async(object_sid=part))
    await _evaluated("A2P bundle", hub.trust_products(bundle.sid).trust_products_evaluations)
    await call("submitting the A2P bundle", hub.trust_products(bundle.sid).update_async(status="pending-review"))
    return str(bundle.sid)


async def brand(client: Client, profile_sid: str, bundle_sid: str, brand_type: BrandType, *, mock: bool) -> str:
    created = await call("registering the brand", client.messaging.v1.brand_registrations.create_async(
        customer_profile_bundle_sid=profile_sid, a2p_profile_bundle_sid=bundle_sid, brand_type="STANDARD",
        skip_automatic_sec_vet=brand_type == "low_volume_standard", mock=mock))
    return str(created.sid)


async def fetch_brand(client: Client, brand_sid: str) -> Any:
    return await call(f"reading brand {brand_sid}", client.messaging.v1.brand_registrations(brand_sid).fetch_async())


async def messaging_service(client: Client, name: str, inbound_url: str | None, number_sids: list[str]) -> str:
    """A Messaging Service for the campaign that defers to each number's own webhook, holding the numbers."""
    extra: dict[str, Any] = {"inbound_request_url": inbound_url, "inbound_method": "POST"} if inbound_url else {}
    service = await call("creating the Messaging Service", client.messaging.v1.services.create_async(
        friendly_name=name, use_inbound_webhook_on_number=True, **extra))
    for number_sid in number_sids:
        await call("adding a number to the Messaging Service",
                   client.messaging.v1.services(service.sid).phone_numbers.create_async(phone_number_sid=number_sid))
    return str(service.sid)


async def campaign(client: Client, service_sid: str, brand_sid: str, plan: Campaign) -> str:
    created = await call("creating the A2P campaign", client.messaging.v1.services(
        service_sid).us_app_to_person.create_async(
        brand_registration_sid=brand_sid, description=plan.description, message_flow=plan.message_flow,
        message_samples=plan.message_samples, us_app_to_person_usecase=plan.use_case,
        has_embedded_links=plan.has_embedded_links, has_embedded_phone=plan.has_embedded_phone,
        opt_in_message=plan.opt_in_message if plan.opt_in_message is not None else values.unset,
        opt_out_message=plan.opt_out_message, help_message=plan.help_message,
        opt_in_keywords=plan.opt_in_keywords, opt_out_keywords=plan.opt_out_keywords,
        help_keywords=plan.help_keywords))
    return str(created.sid)


async def fetch_campaign(client: Client, service_sid: str, campaign_sid: str) -> Any:
    return await call(f"reading campaign {campaign_sid}",
                      client.messaging.v1.services(service_sid).us_app_to_person(campaign_sid).fetch_async())
