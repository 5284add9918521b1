"""What Parley keeps but does not act on, in an agent or a Retell LLM: nothing is ignored silently.

An export from Retell loads as it is: fields Parley does not know are kept (``extra="allow"``) and given back.
``unsupported`` names each of them, and each known field Parley stores without acting on it (a tool type that
cannot run in a chat, a Retell capacity tier...), as ``<field path>: <why>`` lines. ``parley check`` lists
them (``--strict`` fails on them), the API's create and update answers carry them as ``unsupported``, and
``parley serve`` logs one warning for each agent file that has any.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from service.retell.models import AgentSwapTool, BackupModelRef, ChatAgent, ModelRef, SendSmsTool, UnsupportedTool

NOT_USED = "stored, not used by Parley"


def unsupported(model: BaseModel) -> list[str]:
    """Every field of ``model`` (and of the models in it) Parley stores without acting on."""
    out: list[str] = []
    _walk(model, "", out)
    return out


def _walk(model: BaseModel, path: str, out: list[str]) -> None:
    out += [f"{path}{name}: {why}" if name else f"{path.rstrip('.')}: {why}" for name, why in _not_acted_on(model)]
    if isinstance(model, UnsupportedTool):
        return   # the whole tool is reported; its own fields add nothing
    out += [f"{path}{name}: {NOT_USED}" for name in (model.model_extra or {})]
    for name, info in type(model).model_fields.items():
        _value(getattr(model, name), f"{path}{info.alias or name}", out)   # as Retell names it


def _value(value: Any, path: str, out: list[str]) -> None:
    if isinstance(value, BaseModel):
        _walk(value, path + ".", out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, BaseModel):
                label = getattr(item, "name", None)
                _walk(item, f"{path}.{index}{f' ({label})' if label else ''}.", out)


def _not_acted_on(model: BaseModel) -> list[tuple[str, str]]:
    """The known fields of ``model`` that Parley keeps without acting on, and why ("" names the model itself)."""
    if isinstance(model, UnsupportedTool):
        return [("", f"a {model.type} tool does not run in a chat: the model is not offered it")]
    why = []
    if isinstance(model, ChatAgent) and model.language not in ("en-US", ["en-US"]):
        why.append(("language", f"{model.language!r} is not passed to the model: say in the prompt which "
                                "language to write in"))
    if isinstance(model, ModelRef) and model.tier is not None:
        why.append(("tier", f"{model.tier!r} is a Retell capacity tier; Parley calls the configured LLM server the "
                            "same way whatever the tier"))
    if isinstance(model, BackupModelRef) and model.kick_in_timeout_ms is not None:
        why.append(("kick_in_timeout_ms", "not used: the backup model answers when the primary fails, not after a "
                                          "delay"))
    if isinstance(model, SendSmsTool) and model.sms_sender is not None and model.sms_sender.type == "retell_long_code":
        why.append(("sms_sender", "retell_long_code is Retell's shared number; Parley sends from the chat's number"))
    if isinstance(model, AgentSwapTool) and model.webhook_setting not in (None, "only_source_agent"):
        why.append(("webhook_setting", f"{model.webhook_setting!r} is not followed: after a swap the chat's events "
                                       "go to the first agent's webhook (only_source_agent)"))
    return why
