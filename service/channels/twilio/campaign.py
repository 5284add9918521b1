"""An A2P 10DLC campaign drafted from the agents on its numbers, and checked against the reasons campaigns are
rejected, before anything is submitted and paid for.

``draft`` writes what Twilio's US A2P campaign asks for (use-case description, message flow, sample messages,
opt-in / opt-out / help texts and keywords) from the agents attached to the numbers: their names, prompts,
begin messages and the numbers' ``help_message``. ``check`` reads a campaign (drafted or written by hand) the
way a reviewer does and answers one ``Finding`` per problem, each naming the field, what is wrong and what to
write instead: the published rejection reasons (no brand name, no opt-in description, no opt-out language,
samples that do not match what the agent does, vague descriptions) and Twilio's own length rules. Both are
deterministic: no model is asked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, Field

from service.catalog.store import Agent

USE_CASES = ("CUSTOMER_CARE", "ACCOUNT_NOTIFICATION", "DELIVERY_NOTIFICATION", "MARKETING", "MIXED",
             "LOW_VOLUME", "2FA", "POLLING_VOTING", "PUBLIC_SERVICE_ANNOUNCEMENT", "SECURITY_ALERT")
UseCase = Literal["CUSTOMER_CARE", "ACCOUNT_NOTIFICATION", "DELIVERY_NOTIFICATION", "MARKETING", "MIXED",
                  "LOW_VOLUME", "2FA", "POLLING_VOTING", "PUBLIC_SERVICE_ANNOUNCEMENT", "SECURITY_ALERT"]
# Twilio's bounds on a US A2P campaign's fields (characters; samples: how many).
DESCRIPTION_CHARS = (40, 4096)
FLOW_CHARS = (40, 2048)
SAMPLE_CHARS = (20, 1024)
SAMPLES = (2, 5)
REPLY_CHARS = (20, 320)
OPT_OUT_KEYWORDS = ["STOP", "UNSUBSCRIBE", "END", "QUIT", "STOPALL", "REVOKE", "OPTOUT", "CANCEL"]
OPT_IN_KEYWORDS = ["START", "YES", "UNSTOP"]
HELP_KEYWORDS = ["HELP", "INFO"]
CONSENT_WORDS = ("consent", "agree", "opt in", "opt-in", "opts in", "sign up", "signs up", "check", "text ",
                 "texting", "subscribe", "provide their", "enter their")
STOPWORDS = frozenset((
    "about", "above", "after", "again", "against", "also", "always", "answer", "answers", "asked",
    "asking", "because", "been", "before", "being", "below", "between", "both", "cannot", "could",
    "does", "doing", "down", "during", "each", "from", "further", "have", "having", "here", "into",
    "just", "keep", "like", "make", "more", "most", "must", "only", "other", "over", "own", "same",
    "should", "some", "such", "than", "that", "their", "them", "then", "there", "these", "they", "this",
    "those", "through", "under", "until", "very", "what", "when", "where", "which", "while", "will",
    "with", "would", "your", "you're", "yourself", "user", "users", "customer", "customers", "message",
    "messages", "reply", "replies", "text", "texts", "chat", "agent", "help", "please", "thank",
    "thanks", "hello", "today", "tomorrow", "know", "need", "want", "time", "sure", "okay", "good",
    "great"
))
_URL = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)
_PHONE = re.compile(r"\+?1?[\s.-]?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4}")
_VARIABLE = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")
_WORD = re.compile(r"[a-z][a-z'-]{3,}")


class Campaign(BaseModel):
    """What Twilio's US A2P campaign (``Services/{sid}/Compliance/Usa2p``) is created with."""

    use_case: UseCase = "CUSTOMER_CARE"
    description: str = ""
    message_flow: str = ""
    message_samples: list[str] = Field(default_factory=list)
    opt_in_message: str | None = None
    opt_out_message: str = ""
    help_message: str = ""
    opt_in_keywords: list[str] = Field(default_factory=lambda: list(OPT_IN_KEYWORDS))
    opt_out_keywords: list[str] = Field(default_factory=lambda: list(OPT_OUT_KEYWORDS))
    help_keywords: list[str] = Field(default_factory=lambda: list(HELP_KEYWORDS))
    has_embedded_links: bool = False
    has_embedded_phone: bool = False


class Finding(BaseModel):
    """One thing a reviewer would reject: the field, what is wrong, what to write instead."""

    field: str
    problem: str
    fix: str


class Context(BaseModel):
    """What the draft and the check know beyond the campaign: the brand, how users consent, the agents."""

    brand_name: str
    website: str | None = None
    opt_in: str | None = Field(default=None, description="where and how users agree to receive texts (a web "
                                                         "form's URL and its checkbox wording, a keyword...)")
    outbound: bool = False   # an agent on the numbers starts conversations (needs recorded consent)


def agent_text(agent: Agent) -> str:
    """Everything an agent is told and says first: its name, prompts, begin message, tools' descriptions."""
    parts = [agent.config.agent_name or ""]
    if agent.llm is not None:
        parts += [agent.llm.general_prompt, agent.llm.begin_message or ""]
        parts += [state.state_prompt for state in agent.llm.states]
        parts += [getattr(tool, "description", "") for tool in agent.llm.general_tools]
    if agent.flow is not None:
        parts.append(agent.flow.global_prompt)
        parts += [getattr(tool, "description", "") or "" for tool in agent.flow.tools]
        for node in agent.flow.nodes:
            instruction = getattr(node, "instruction", None)
            parts.append(getattr(instruction, "text", "") if instruction is not None else "")
    return "\n".join(p for p in parts if p)


def _stem(word: str) -> str:
    """A plural made singular, crudely (appointments, haircuts, replies): enough to match a prompt's words."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    return word[:-1] if word.endswith("s") and not word.endswith("ss") and len(word) > 4 else word


def words(text: str) -> set[str]:
    """The content words of ``text`` (4+ letters, no stop words), lower-cased and singular; variables and URLs
    left out."""
    found = _WORD.findall(_URL.sub(" ", _VARIABLE.sub(" ", text.lower())))
    return {_stem(w.strip("'-")) for w in found} - STOPWORDS


def _first_sentence(text: str) -> str:
    flat = " ".join(_VARIABLE.sub(lambda m: f"[{m.group(1)}]", text).split())
    match = re.match(r"(.+?[.!?])(\s|$)", flat)
    return (match.group(1) if match else flat)[:300]


def _sample(text: str) -> str:
    return " ".join(_VARIABLE.sub(lambda m: f"[{m.group(1)}]", text).split())


def _opening(agent: Agent) -> str | None:
    """What the agent sends first: a Retell LLM's ``begin_message``, a flow's start node's static text."""
    if agent.llm is not None:
        return agent.llm.begin_message
    start = agent.flow.start if agent.flow is not None else None
    instruction = getattr(start, "instruction", None)
    return instruction.text if instruction is not None and instruction.type == "static_text" else None


def draft(context: Context, agents: Iterable[Agent], help_messages: Iterable[str], *, use_case: UseCase
          ) -> Campaign:
    """A campaign written from the agents and the numbers' help messages."""
    agents = list(agents)
    brand = context.brand_name
    purposes = [_first_sentence(a.llm.general_prompt if a.llm else a.flow.global_prompt if a.flow else "")
                for a in agents]
    purpose = " ".join(f'"{p}"' for p in purposes if p) or "[say what the conversations are about]"
    who = ", ".join(sorted({a.config.agent_name for a in agents if a.config.agent_name})) or "its SMS assistant"
    starts = "texts customers first and answers their replies" if context.outbound else "answers customers who text"
    description = (f"{brand} uses this number for two-way text conversations with its assistant ({who}), which "
                   f"{starts}. The assistant is told: {purpose}")
    consent = context.opt_in or "[say where and how customers agree to receive texts from us]"
    flow = (f"Customers opt in before {brand} texts them: {consent}. " if context.outbound else
            f"Customers start every conversation by texting {brand}'s number; the assistant only replies. ")
    flow += (f"The opt-in tells them the brand ({brand}), that message frequency varies, that message and data "
             "rates may apply, and that they can reply STOP to opt out and HELP for help.")
    samples: list[str] = []
    for agent in agents:
        if opening := _opening(agent):
            samples.append(f"{brand}: {_sample(opening)} Reply STOP to opt out.")
    contact = context.website or "[your website or support phone number]"
    help_text = next((h for h in help_messages if h), None) or f"{brand}: for help, visit {contact}."
    samples.append(help_text if brand.lower() in help_text.lower() else f"{brand}: {help_text}")
    campaign = Campaign(
        use_case=use_case, description=description, message_flow=flow, message_samples=samples[:SAMPLES[1]],
        opt_in_message=(f"{brand}: you are subscribed to texts about {who}. Message frequency varies. Msg & data "
                        "rates may apply. Reply HELP for help, STOP to opt out.") if context.outbound else None,
        opt_out_message=f"{brand}: you are unsubscribed and will receive no more messages. Reply START to resubscribe.",
        help_message=help_text if brand.lower() in help_text.lower() else f"{brand}: {help_text}",
    )
    joined = " ".join(campaign.message_samples)
    campaign.has_embedded_links = bool(_URL.search(joined))
    campaign.has_embedded_phone = bool(_PHONE.search(joined))
    return campaign


def check(campaign: Campaign, context: Context, agents: Iterable[Agent]) -> list[Finding]:
    """What a reviewer would reject in ``campaign``, one finding each (none: ready to submit)."""
    brand = context.brand_name.lower()
    found = _lengths(campaign)
    found += _placeholders(campaign)
    if brand not in campaign.description.lower():
        found.append(Finding(field="description", problem="does not name the brand",
                             fix=f"say who sends the texts: start with {context.brand_name!r}"))
    if len(words(campaign.description)) < 6:
        found.append(Finding(field="description", problem="too vague to tell what the texts are about",
                             fix="say who texts whom, about what, and why (appointments, orders, support...)"))
    flow = campaign.message_flow.lower()
    if not any(w in flow for w in CONSENT_WORDS):
        found.append(Finding(field="message_flow", problem="does not describe how users opt in",
                             fix="say where and how users agree to receive texts (the web form's URL and its "
                                 "checkbox wording, the keyword they text, the paper form)"))
    found += _samples(campaign, context, agents)
    found += _replies(campaign, context)
    return found


def _lengths(campaign: Campaign) -> list[Finding]:
    found: list[Finding] = []
    for field, text, (low, high) in (("description", campaign.description, DESCRIPTION_CHARS),
                                     ("message_flow", campaign.message_flow, FLOW_CHARS)):
        if not low <= len(text) <= high:
            found.append(Finding(field=field, problem=f"{len(text)} characters; Twilio takes {low} to {high}",
                                 fix=f"write {low} to {high} characters"))
    if not SAMPLES[0] <= len(campaign.message_samples) <= SAMPLES[1]:
        found.append(Finding(field="message_samples", problem=f"{len(campaign.message_samples)} samples; Twilio "
                             f"takes {SAMPLES[0]} to {SAMPLES[1]}",
                             fix="give 2 to 5 messages the agent really sends"))
    for index, sample in enumerate(campaign.message_samples):
        if not SAMPLE_CHARS[0] <= len(sample) <= SAMPLE_CHARS[1]:
            found.append(Finding(field=f"message_samples.{index}", problem=f"{len(sample)} characters; Twilio "
                                 f"takes {SAMPLE_CHARS[0]} to {SAMPLE_CHARS[1]}", fix="write a whole message"))
    return found


def _placeholders(campaign: Campaign) -> list[Finding]:
    texts = {"description": campaign.description, "message_flow": campaign.message_flow,
             "help_message": campaign.help_message, "opt_out_message": campaign.opt_out_message,
             **{f"message_samples.{i}": s for i, s in enumerate(campaign.message_samples)}}
    return [Finding(field=field, problem=f"still holds {hole.group(0)}", fix="replace it with the real text")
            for field, text in texts.items() if (hole := re.search(r"\[(say|your) [^\]]*\]", text))]


def _samples(campaign: Campaign, context: Context, agents: Iterable[Agent]) -> list[Finding]:
    found: list[Finding] = []
    samples = campaign.message_samples
    brand = context.brand_name.lower()
    if samples and not any(brand in s.lower() for s in samples):
        found.append(Finding(field="message_samples", problem="no sample names the brand",
                             fix=f"start at least one sample with {context.brand_name!r}"))
    if samples and not any(re.search(r"\bstop\b", s, re.IGNORECASE) for s in samples):
        found.append(Finding(field="message_samples", problem="no sample has opt-out language",
                             fix="end the first message of a conversation with 'Reply STOP to opt out.'"))
    agents = list(agents)
    if not agents:
        return [*found, Finding(field="phone_numbers", problem="no agent answers or texts from these numbers",
                                fix="attach agents (inbound_sms_agents, outbound_sms_agents) first: the samples must "
                                    "match what they send")]
    known = set().union(*(words(agent_text(a)) for a in agents))
    generic = words(" ".join([context.brand_name, campaign.help_message, campaign.opt_out_message,
                              "reply stop opt out help unsubscribe"]))
    for index, sample in enumerate(samples):
        own = words(sample) - generic
        if len(own & known) < min(2, len(own)):   # one shared word (a verb like "book") is not a match
            found.append(Finding(field=f"message_samples.{index}", problem="mentions nothing the agents on these "
                                 "numbers do (at most one word of their prompts, begin messages or tools)",
                                 fix="use a message the agent really sends; carriers reject traffic that does not "
                                     "match the samples"))
    joined = " ".join(samples)
    if bool(_URL.search(joined)) != campaign.has_embedded_links:
        found.append(Finding(field="has_embedded_links", problem="does not match the samples",
                             fix=f"set it to {str(bool(_URL.search(joined))).lower()}"))
    if bool(_PHONE.search(joined)) != campaign.has_embedded_phone:
        found.append(Finding(field="has_embedded_phone", problem="does not match the samples",
                             fix=f"set it to {str(bool(_PHONE.search(joined))).lower()}"))
    return found


def _replies(campaign: Campaign, context: Context) -> list[Finding]:
    found: list[Finding] = []
    brand = context.brand_name.lower()
    replies = {"opt_out_message": campaign.opt_out_message, "help_message": campaign.help_message}
    if context.outbound:
        replies["opt_in_message"] = campaign.opt_in_message or ""
    for field, text in replies.items():
        low, high = REPLY_CHARS
        if not low <= len(text) <= high:
            found.append(Finding(field=field, problem=f"{len(text)} characters; Twilio takes {low} to {high}",
                                 fix=f"write {low} to {high} characters"))
        elif brand not in text.lower():
            found.append(Finding(field=field, problem="does not name the brand",
                                 fix=f"start it with {context.brand_name!r}"))
    if not re.search(r"unsubscribed|no (more|further) (messages|texts)|opted out", campaign.opt_out_message, re.I):
        found.append(Finding(field="opt_out_message", problem="does not confirm the opt-out",
                             fix="say they are unsubscribed and will receive no more messages"))
    if not (_URL.search(campaign.help_message) or _PHONE.search(campaign.help_message)
            or "@" in campaign.help_message):
        found.append(Finding(field="help_message", problem="gives no way to reach the business",
                             fix="add a support phone number, email address or website"))
    if context.outbound and campaign.opt_in_message is not None:
        text = campaign.opt_in_message.lower()
        for needed, fix in (("stop", "'Reply STOP to opt out'"), ("rates", "'Msg & data rates may apply'"),
                            ("frequency", "how often you text ('Message frequency varies')")):
            if needed not in text:
                found.append(Finding(field="opt_in_message", problem=f"lacks {fix}", fix=f"add {fix}"))
    return found
