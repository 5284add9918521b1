"""Reading ``agents/``: one chat agent per ``*.yaml``/``*.json`` file, numbers in ``phone-numbers.yaml``.

An agent carries its engine inline: a Retell LLM under ``retell_llm`` or a conversation flow under
``conversation_flow`` (each becomes its own read-only object, ``llm_<agent id>`` or ``cf_<agent id>`` unless the
file gives the id). ``load(settings)`` validates everything and raises one ``ConfigError`` listing every problem as
``<file>: <field>: <what was expected>``; ``parley serve`` stops on it and ``parley check`` prints it. The
URLs Parley will call and a tool's headers are checked against the outbound policy (``catalog.targets``),
and so is ``PARLEY_WEBHOOK_URL``. What a file holds that Parley does not act on (``retell.unsupported``) is
collected per agent in ``Declared.unsupported``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from service.catalog import components, targets
from service.errors import ConfigError, OutboundRefused
from service.outbound import OutboundPolicy
from service.retell.flows import AgentSwapNode
from service.retell.models import ENGINES_NOT_RUN, AgentSwapTool, ChatAgent, PhoneNumber
from service.retell.unsupported import unsupported
from service.settings import Settings
from service.validation import describe

NUMBERS_FILE_STEMS = ("phone-numbers", "phone_numbers")
AGENT_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class Declared:
    """What the files declare, validated: agents by id, numbers by E.164, and the file of each object.

    ``files`` maps (kind, id) to the file that declares it, kind being ``agent``, ``retell llm``, ``conversation
    flow`` or ``number``: such objects are read-only through the API.
    """

    agents: dict[str, ChatAgent] = field(default_factory=dict)
    numbers: dict[str, PhoneNumber] = field(default_factory=dict)
    files: dict[tuple[str, str], Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # By "<file>: agent <id>": the fields it (and its inline Retell LLM or flow) holds that Parley does not act on.
    unsupported: dict[str, list[str]] = field(default_factory=dict)

    def declared_in(self, kind: str, object_id: str) -> Path | None:
        return self.files.get((kind, object_id))


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return orjson.loads(text)
    return yaml.safe_load(text)


# Files are self-contained: ``parley check`` reads them without Redis, and a file's agent must not change when an
# object the API owns does. So a file does not name a stored engine in response_engine.
_NAMED = ("; response_engine cannot name a Retell LLM or conversation flow kept by the API: files are read on "
          "their own (parley check reads no store), so put it in the file under retell_llm or conversation_flow")


def _load_agent(path: Path, catalog: Declared, problems: list[str], policy: OutboundPolicy) -> None:
    data = _read(path)
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a mapping of chat-agent fields, got {type(data).__name__}")
        return
    data.setdefault("agent_id", path.stem)
    engine = data.get("response_engine")
    if isinstance(engine, dict) and engine.get("type") in ENGINES_NOT_RUN:
        problems.append(f"{path}: response_engine.type {engine['type']!r}: {ENGINES_NOT_RUN[engine['type']]}; "
                        "an agent file carries its Retell LLM (retell_llm) or conversation flow (conversation_flow)")
        return
    inline = [name for name in ("retell_llm", "conversation_flow") if isinstance(data.get(name), dict)]
    if len(inline) != 1:
        problems.append(f"{path}: an agent file carries its engine inline, as a mapping: retell_llm or "
                        "conversation_flow (exactly one)" + (_NAMED if not inline and engine is not None else ""))
        return
    engine_kind, engine_id_field, prefix = (("retell llm", "llm_id", "llm_") if inline == ["retell_llm"]
                                            else ("conversation flow", "conversation_flow_id", "cf_"))
    engine_id = data[inline[0]].setdefault(engine_id_field, f"{prefix}{data['agent_id']}")
    try:
        agent = ChatAgent.model_validate(data)
    except ValidationError as exc:
        problems.extend(f"{path}: {line}" for line in describe(exc, data=data))
        return
    if agent.agent_id in catalog.agents:
        problems.append(f"{path}: agent_id {agent.agent_id!r} is already declared in "
                        f"{catalog.declared_in('agent', agent.agent_id)}")
        return
    problems.extend(f"{path}: {line}" for line in targets.agent_problems(agent, policy))
    catalog.agents[agent.agent_id] = agent
    catalog.files[("agent", agent.agent_id)] = path
    catalog.files[(engine_kind, engine_id)] = path
    if agent.conversation_flow is not None:
        catalog.warnings.extend(f"{path}: conversation_flow.{w}" for w in agent.conversation_flow.warnings())
        catalog.warnings.extend(
            f"{path}: conversation_flow.{where}: names the shared component {node.component_id!r}, which the API "
            "must have created (POST /create-conversation-flow-component): a file cannot check it"
            for where, node in components.shared_nodes(agent.conversation_flow))
    catalog.warnings.extend(f"{path}: {w}" for w in agent.warnings())
    if not_acted_on := unsupported(agent):
        catalog.unsupported[f"{path}: agent {agent.agent_id}"] = not_acted_on


def _load_numbers(path: Path, catalog: Declared, problems: list[str], policy: OutboundPolicy) -> None:
    data = _read(path)
    if isinstance(data, dict) and "phone_numbers" in data:
        data = data["phone_numbers"]
    if data is None:
        return
    if not isinstance(data, list):
        problems.append(f"{path}: expected a list of phone numbers, got {type(data).__name__}")
        return
    for index, item in enumerate(data):
        try:
            number = PhoneNumber.model_validate(item)
        except ValidationError as exc:
            problems.extend(f"{path}: {line}" for line in describe(exc, prefix=f"[{index}]."))
            continue
        if number.phone_number in catalog.numbers:
            problems.append(f"{path}: [{index}]: {number.phone_number} is listed twice")
            continue
        problems.extend(f"{path}: {line}" for line in targets.number_problems(number, policy, prefix=f"[{index}]."))
        catalog.numbers[number.phone_number] = number
        catalog.files[("number", number.phone_number)] = path


def _swap_targets(catalog: Declared, settings: Settings) -> None:
    """An ``agent_swap`` (tool or flow node) to an agent no file declares works only if the API created it: said
    at load."""
    for agent_id, agent in catalog.agents.items():
        where = catalog.files[("agent", agent_id)]
        unknown = f"which no file in {settings.agents_dir} declares: the swap works only if the API created it"
        llm = agent.retell_llm
        tools = [*llm.general_tools, *(t for state in llm.states for t in state.tools)] if llm else []
        for tool in tools:
            if isinstance(tool, AgentSwapTool) and tool.agent_id not in catalog.agents:
                catalog.warnings.append(f"{where}: agent_swap tool {tool.name!r} names agent {tool.agent_id!r}, "
                                        f"{unknown} (otherwise the model is told it failed)")
        flow = agent.conversation_flow
        graphs = [("", flow), *((f"components ({c.name}) ", c) for c in flow.components)] if flow else []
        for label, graph in graphs:
            for node in graph.nodes:
                if isinstance(node, AgentSwapNode) and node.agent_id not in catalog.agents:
                    catalog.warnings.append(f"{where}: conversation_flow {label}agent_swap node {node.id!r} names "
                                            f"agent {node.agent_id!r}, {unknown} (otherwise the node takes its edge)")


def _cross_check(catalog: Declared, settings: Settings, problems: list[str]) -> None:
    _swap_targets(catalog, settings)
    tokens = settings.twilio_tokens()
    for e164, number in catalog.numbers.items():
        where = catalog.files[("number", e164)]
        for listing in ("inbound_sms_agents", "outbound_sms_agents"):
            for ref in getattr(number, listing):
                if ref.agent_id not in catalog.agents:
                    problems.append(
                        f"{where}: {e164}: {listing} names agent {ref.agent_id!r}, which no file in "
                        f"{settings.agents_dir} declares (known: {', '.join(sorted(catalog.agents)) or 'none'})"
                    )
        account = number.twilio_account_sid or settings.twilio_account_sid
        if account is None:
            catalog.warnings.append(
                f"{where}: {e164}: no twilio_account_sid and no TWILIO_ACCOUNT_SID: its webhooks will be refused"
            )
        elif account not in tokens:
            catalog.warnings.append(
                f"{where}: {e164}: no auth token for account {account} (TWILIO_AUTH_TOKEN or "
                "PARLEY_TWILIO_ACCOUNTS): its webhooks will be refused and sends will fail"
            )


def load(settings: Settings) -> Declared:
    """Read and validate every agent and number file; raise ``ConfigError`` listing all problems."""
    directory = settings.agents_dir
    if not directory.is_dir():
        raise ConfigError(f"{directory}: agents directory not found (set PARLEY_AGENTS_DIR)")
    policy = OutboundPolicy.from_settings(settings)
    try:
        if settings.webhook_url:
            policy.check_url(settings.webhook_url)
    except OutboundRefused as exc:
        raise ConfigError(f"PARLEY_WEBHOOK_URL: {exc}") from None
    catalog = Declared()
    problems: list[str] = []
    files = sorted(p for p in directory.iterdir() if p.suffix in AGENT_SUFFIXES and p.is_file())
    for path in files:
        try:
            if path.stem in NUMBERS_FILE_STEMS:
                _load_numbers(path, catalog, problems, policy)
            else:
                _load_agent(path, catalog, problems, policy)
        except (yaml.YAMLError, orjson.JSONDecodeError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}")
    _cross_check(catalog, settings, problems)
    if problems:
        raise ConfigError("invalid agent files:\n  " + "\n  ".join(problems))
    return catalog
