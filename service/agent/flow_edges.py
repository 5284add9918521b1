"""The ways out of a conversation flow's node that the walk weighs at a user's text (``flow.FlowTurn``): the node's
edges, the global nodes (``global_node_setting``: from every node but themselves, not while cooling down) and the
go-back conditions of a global node the chat entered as one. ``by_equations``: the first whose equations hold, the
model not asked; ``by_prompts``: the ones the model judges, as transition tools named ``transition_to_<node id>``
(the edge's destination, or the global node; an edge out of a component by its own id; ``transition_to_back`` for a
go-back), described by the condition's prompt."""

from __future__ import annotations

from service.agent.equations import holds
from service.agent.flow_place import Place, Target, TransitionType, tool_names
from service.retell.flows import (
    ConversationFlow,
    ConversationNode,
    Edge,
    EquationCondition,
    EquationPromptCondition,
    Node,
    PromptCondition,
)

GlobalCondition = PromptCondition | EquationCondition | EquationPromptCondition


def globals_at(flow: ConversationFlow, place: Place, path: str) -> list[tuple[Node, GlobalCondition]]:
    """The global nodes offered at ``path`` and their conditions: not the node itself, not one cooling down."""
    out: list[tuple[Node, GlobalCondition]] = []
    for node in flow.nodes:
        setting = node.global_node_setting
        if setting is None or node.id == path:
            continue
        left = place.left.get(node.id)
        if setting.cool_down and left is not None and place.steps - left < setting.cool_down:
            continue
        out.append((node, setting.condition))
    return out


def go_backs(flow: ConversationFlow, place: Place, path: str) -> list[Edge]:
    """The go-back conditions of the global node the chat is at, when it entered it as a global node."""
    if not place.back or place.back[-1][1] != path:
        return []
    node = flow.node(path)
    return node.global_node_setting.go_back_conditions if node and node.global_node_setting else []


def by_equations(flow: ConversationFlow, place: Place, path: str, node: ConversationNode,
                 values: dict[str, str]) -> Target | None:
    """The first way out whose equations hold: ``node``'s equation edges, the global nodes' equation conditions
    (an equation_prompt with no prompt), the go-back equations."""
    for edge in node.edges:
        cond = edge.transition_condition
        if isinstance(cond, EquationCondition) and holds(cond.equations, cond.operator, values):
            return Target("normal", edge)
    for glob, condition in globals_at(flow, place, path):
        if isinstance(condition, PromptCondition) or (isinstance(condition, EquationPromptCondition)
                                                      and condition.prompt_condition is not None):
            continue   # the model judges it (by_prompts)
        if holds(condition.equations, condition.operator, values):
            return Target("global", to=glob.id)
    for edge in go_backs(flow, place, path):
        cond = edge.transition_condition
        if isinstance(cond, EquationCondition) and holds(cond.equations, cond.operator, values):
            return Target("global_go_back", edge, to=place.back[-1][0])
    return None


def by_prompts(flow: ConversationFlow, place: Place, path: str, node: Node, values: dict[str, str]) -> list[Target]:
    """The transitions the model may call at ``node``, named for it."""
    found: list[tuple[TransitionType, Edge | None, str | None, str, str]] = []
    for edge in getattr(node, "edges", []):
        if isinstance(edge.transition_condition, PromptCondition):
            found.append(("normal", edge, None, edge.destination_node_id or edge.id,
                          edge.transition_condition.prompt))
    if isinstance(node, ConversationNode):
        for glob, cond in globals_at(flow, place, path):
            if isinstance(cond, EquationPromptCondition) and cond.prompt_condition is not None and \
                    holds(cond.equations, cond.operator, values):
                found.append(("global", None, glob.id, glob.id, cond.prompt_condition.prompt))
            elif isinstance(cond, PromptCondition):
                found.append(("global", None, glob.id, glob.id, cond.prompt))
        for edge in go_backs(flow, place, path):
            if isinstance(edge.transition_condition, PromptCondition):
                found.append(("global_go_back", edge, place.back[-1][0], "back",
                              edge.transition_condition.prompt))
    names = tool_names([label for *_, label, _ in found])
    return [Target(kind, edge, to, name, prompt) for (kind, edge, to, _, prompt), name in zip(found, names,
                                                                                          strict=True)]


def says_as_written(place: Place, path: str, node: ConversationNode) -> bool:
    return node.instruction.type == "static_text" and path not in place.seen
