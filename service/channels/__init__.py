"""The channels Parley talks on, and the providers behind them.

A channel is registered here by name; its rules are a ``conversations.channel.Channel``. Twilio carries
both (``channels.twilio``: the inbound webhook, the status callback, signatures and the REST gateway),
telling them apart by the address prefix (``whatsapp:+1...``; ``service.address``). A new channel is a
module (or folder) here, an entry in ``CHANNELS`` and its name in the numbers' ``channels`` field
(``retell.models.ChannelName``); a new provider is a folder like ``twilio/`` with its webhook handlers
(listed in ``api.routes``) and its gateway. ``dev`` is the console's dev phone (``channels.dev``): no provider,
its replies stay in Parley.
"""

from __future__ import annotations

from collections.abc import Mapping

from service.address import DEV, SMS
from service.channels.dev import DevChannel
from service.channels.sms import SmsChannel
from service.channels.whatsapp import WhatsAppChannel
from service.conversations.channel import Channel

CHANNELS: Mapping[str, Channel] = {SMS: SmsChannel(), "whatsapp": WhatsAppChannel(), DEV: DevChannel()}

