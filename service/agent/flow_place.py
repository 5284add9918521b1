"""Where a conversation flow's chat is (``Place``, kept as ``Chat.flow_state``) and the ways out of a node the walk
weighs (``Target``).

A place is a path: a node id, or ``<component node id>/<inner node id>`` inside a component (components nest). It
also keeps the previous node, the global nodes' go-back stack (where the chat was when it entered each), the node
steps taken so far, the step each global node was last left at (for its ``cool_down``), and the nodes that have
spoken (a ``static_text`` is said as written on the first visit only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from service.retell.flows import Edge

TransitionType = Literal["normal", "global", "global_go_back"]
NONE_OF_THESE = "none_of_these"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(slots=True)
class Place:
    node: str | None = None            # the current node's path; None: the start node, not entered yet
    node_name: str | None = None
    previous: str | None = None
    previous_name: str | None = None
    back: list[tuple[str, str]] = field(default_factory=list)   # (where the chat was, the global node it entered)
    steps: int = 0
    left: dict[str, int] = field(default_factory=dict)   # global node id -> the step the chat left it at
    seen: list[str] = field(default_factory=list)        # paths of the nodes that have spoken

    @classmethod
    def of(cls, state: dict[str, Any] | None) -> Place:
        state = state or {}
        return cls(node=state.get("node"), node_name=state.get("node_name"), previous=state.get("previous"),
                   previous_name=state.get("previous_name"),
                   back=[(str(a), str(b)) for a, b in state.get("back", [])], steps=int(state.get("steps", 0)),
                   left={str(k): int(v) for k, v in state.get("left", {}).items()},
                   seen=[str(p) for p in state.get("seen", [])])

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node, "node_name": self.node_name, "steps": self.steps}
        if self.previous is not None:
            out |= {"previous": self.previous, "previous_name": self.previous_name}
        if self.back:
            out["back"] = [list(pair) for pair in self.back]
        if self.left:
            out["left"] = self.left
        if self.seen:
            out["seen"] = self.seen
        return out

    def copy(self) -> Place:
        return Place.of(self.dump())


@dataclass(frozen=True, slots=True)
class Target:
    """A way out: a node's ``edge`` (its destination resolved from where the chat is), or a global node's entry or
    go-back (``to``: the path it leads to). ``name`` and ``prompt``: the transition tool the model may call."""

    kind: TransitionType
    edge: Edge | None = None
    to: str | None = None
    name: str = ""
    prompt: str = ""

    def definition(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.prompt,
                                                 "parameters": {"type": "object", "properties": {}}}}


def tool_names(labels: list[str]) -> list[str]:
    """Transition tool names OpenAI accepts (letters, digits, ``_``, ``-``; at most 64), unique, one per label."""
    out: list[str] = []
    for label in labels:
        base = ("transition_to_" + (_UNSAFE.sub("_", label).strip("_") or "node"))[:56]
        name, number = base, 2
        while name in out or name == NONE_OF_THESE:
            name, number = f"{base}_{number}", number + 1
        out.append(name)
    return out


NONE_TOOL = {"type": "function", "function": {
    "name": NONE_OF_THESE, "description": "None of the other conditions holds.",
    "parameters": {"type": "object", "properties": {}}}}


def parent(path: str) -> str:
    """The path of the component node ``path`` is inside ("" at the top of the flow)."""
    return path.rpartition("/")[0]


def child(prefix: str, node_id: str) -> str:
    return f"{prefix}/{node_id}" if prefix else node_id
