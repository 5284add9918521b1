"""What Parley keeps but does not act on, in an agent, a Retell LLM, a conversation flow or a shared component:
nothing is ignored silently.

An export from Retell loads as it is: fields Parley does not know are kept (``extra="allow"``) and given back.
``unsupported`` names each of them, and each known field Parley stores without acting on it (a tool type that
cannot run in a chat, a Retell capacity tier...), as ``<field path>: <why>`` lines. ``parley check`` lists
them (``--strict`` fails on them), the API's create and update answers carry them as ``unsupported``, and
``parley serve`` logs one warning for each agent file that has any.

A conversation flow runs in a chat node by node (``service.agent.flow``): every node type but the voice-only ones
and ``code``, global nodes, components, each node's ``model_config``/``model_choice``. What it holds for voice calls
(a node's speech and telephony settings) is named with that reason; its canvas layout (``display_position``,
``notes``, ``begin_tag_display_position``) is not: it only places boxes in Retell's editor and changes nothing a
conversation does, so naming it would bury the lines that matter.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from service.retell import flows
from service.retell.flows import (
    AgentSwapNode,
    AppTool,
    BranchNode,
    ComponentNode,
    ConversationNode,
    EndNode,
    ExtractNode,
    FunctionNode,
    McpNode,
    SmsNode,
    UnsupportedNode,
)
from service.retell.models import AgentSwapTool, BackupModelRef, ChatAgent, ModelRef, SendSmsTool, UnsupportedTool

NOT_USED = "stored, not used by Parley"
NODES = (ConversationNode, EndNode, FunctionNode, McpNode, BranchNode, SmsNode, ExtractNode, AgentSwapNode,
         ComponentNode, UnsupportedNode)
CANVAS = {"display_position", "notes", "begin_tag_display_position"}
VOICE = "a voice-call setting: nothing in a chat uses it"
# Fields of a flow, a component or a node that Parley keeps without a field of its own, and why it does not act on
# them (any other is NOT_USED).
FLOW_EXTRAS = {
    **dict.fromkeys(("interruption_sensitivity", "voice_speed", "responsiveness", "boosted_keywords", "stt_mode",
                     "custom_stt_config", "allow_dtmf_interruption", "reminder_trigger_ms", "reminder_max_count",
                     "enable_typing_sound", "custom_sip_headers", "begin_after_user_silence_ms"), VOICE),
    "is_transfer_cf": "a flow for warm call transfers, a voice-call feature; Parley runs it as any flow",
    "flex_mode": "Retell then runs the whole flow as one prompt; Parley runs the graph node by node",
    "tool_call_strict_mode": "not passed to the model: Parley does not ask it for strict tool calls",
    "backup_model": "Retell does not let chat agents use an engine with a backup_model; Parley does not use it "
                    "(model_config.backup is the backup it uses)",
    **dict.fromkeys(("finetune_conversation_examples", "finetune_transition_examples"),
                    "fine-tuning examples are not given to the model"),
}


def unsupported(model: BaseModel) -> list[str]:
    """Every field of ``model`` (and of the models in it) Parley stores without acting on."""
    out: list[str] = []
    _walk(model, "", out)
    return out


def _walk(model: BaseModel, path: str, out: list[str]) -> None:
    out += [f"{path}{name}: {why}" if name else f"{path.rstrip('.')}: {why}" for name, why in _not_acted_on(model)]
    if isinstance(model, UnsupportedTool | UnsupportedNode | AppTool):
        return   # the whole tool or node is reported; its own fields add nothing
    if type(model).__module__ == flows.__name__:   # a flow, a component, a node, an edge...
        # An export spells out Retell's defaults (flex_mode: false, notes: []): a field left off, false or empty
        # asks for nothing Parley does not do.
        out += [f"{path}{name}: {FLOW_EXTRAS.get(name, NOT_USED)}" for name, value in (model.model_extra or {}).items()
                if name not in CANVAS and value not in (None, False, "", [], {})]
    else:
        out += [f"{path}{name}: {NOT_USED}" for name in (model.model_extra or {})]
    for name, info in type(model).model_fields.items():
        _value(getattr(model, name), f"{path}{info.alias or name}", out)   # as Retell names it


def _value(value: Any, path: str, out: list[str]) -> None:
    if isinstance(value, BaseModel):
        _walk(value, path + ".", out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, BaseModel):
                label = item.id if isinstance(item, NODES) else getattr(item, "name", None)   # as validators name
                _walk(item, f"{path}.{index}{f' ({label})' if label else ''}.", out)


def _not_acted_on(model: BaseModel) -> list[tuple[str, str]]:
    """The known fields of ``model`` that Parley keeps without acting on, and why ("" names the model itself)."""
    if isinstance(model, UnsupportedTool):
        return [("", f"a {model.type} tool does not run in a chat: the model is not offered it")]
    if isinstance(model, UnsupportedNode):
        return [("", f"{model.why}: reached at run time, it takes its else edge (or its edge), else ends the chat")]
    if isinstance(model, AppTool):
        return [("", "an integration_app tool (Retell's app marketplace) does not run in Parley")]
    why = _flow_parts(model)
    if isinstance(model, ChatAgent) and model.language not in ("en-US", ["en-US"]):
        why.append(("language", f"{model.language!r} is not passed to the model: say in the prompt which "
                                "language to write in"))
    if isinstance(model, ModelRef) and model.tier is not None:
        why.append(("tier", f"{model.tier!r} is a Retell capacity tier; Parley calls the configured LLM server the "
                            "same way whatever the tier"))
    if isinstance(model, BackupModelRef) and model.kick_in_timeout_ms is not None:
        why.append(("kick_in_timeout_ms", "not used: the backup model answers when the primary fails, not after a "
                                          "delay"))
    if isinstance(model, SendSmsTool | SmsNode) and model.sms_sender is not None and \
            model.sms_sender.type == "retell_long_code":
        why.append(("sms_sender", "retell_long_code is Retell's shared number; Parley sends from the chat's number"))
    if isinstance(model, AgentSwapTool | AgentSwapNode) and model.webhook_setting not in (None, "only_source_agent"):
        why.append(("webhook_setting", f"{model.webhook_setting!r} is not followed: after a swap the chat's events "
                                       "go to the first agent's webhook (only_source_agent)"))
    return why


def _flow_parts(model: BaseModel) -> list[tuple[str, str]]:
    """What a flow or one of its nodes sets that Parley does not act on."""
    why = []
    if isinstance(model, FunctionNode) and model.tool_type == "shared":
        why.append(("tool_type", f"shared tools are kept in Retell's tool store, which Parley does not have: the "
                                 f"node cannot call {model.tool_id!r}"))
    if isinstance(model, FunctionNode | McpNode) and model.speak_during_execution and model.instruction is None:
        # With an instruction, its text is sent before the tool's result (service.agent.flow_nodes).
        why.append(("speak_during_execution", "the node has no instruction: there is nothing to say while it runs"))
    return why
