"""``chat_cost``: an estimate, in cents, of what a chat cost, in Retell's shape.

Two kinds of product: the SMS segments Parley sent in the chat (``Chat.sms_segments``) at the price of the
agent's number, else of the user's country, else ``"*"`` (``PARLEY_SMS_SEGMENT_PRICES``); and the LLM tokens the
chat's turns and its analysis used (``Chat.llm_tokens``, from the usage the LLM server reported), per model, at
``PARLEY_LLM_TOKEN_PRICES`` (cents per million tokens). It is an estimate: Twilio's and the LLM provider's bills
are the truth (carrier fees, a send that fails after Twilio took it, retried requests are not in it). What has
no price is left out; a chat with nothing priced has no ``chat_cost``.
"""

from __future__ import annotations

from typing import Any

from service.chats.model import Chat
from service.settings import Settings
from service.sms.limits import country_of

PER_MILLION = 1_000_000


def _segment_price(chat: Chat, prices: dict[str, float]) -> float | None:
    conv = chat.conversation
    if conv is None:
        return None
    for key in (conv.agent_number, country_of(conv.user_number), "*"):
        if key in prices:
            return prices[key]
    return None


def estimate(chat: Chat, settings: Settings) -> dict[str, Any] | None:
    """The chat's ``chat_cost`` (``product_costs`` and ``combined_cost``, cents), or None when nothing is priced."""
    products: list[dict[str, Any]] = []
    price = _segment_price(chat, settings.sms_segment_prices) if chat.sms_segments else None
    if price is not None:
        products.append({"product": "sms_segments", "unit_price": price, "cost": price * chat.sms_segments})
    for model, (prompt, completion) in sorted(chat.llm_tokens.items()):
        prices = settings.llm_token_prices.get(model) or settings.llm_token_prices.get("*")
        if prices is None:
            continue
        for kind, tokens in (("prompt", prompt), ("completion", completion)):
            unit = prices.get(kind, 0.0) / PER_MILLION
            products.append({"product": f"llm_{kind}_tokens:{model}", "unit_price": unit, "cost": unit * tokens})
    if not products:
        return None
    for product in products:
        product["cost"] = round(product["cost"], 6)
    return {"product_costs": products, "combined_cost": round(sum(p["cost"] for p in products), 6)}
