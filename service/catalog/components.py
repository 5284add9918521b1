"""How conversation flows name shared components (``component_type: shared``), and what becomes of a flow when
the shared component it names is deleted: Retell's rule, a local copy in the flow (``components``).

A component node names a shared component by its ``conversation_flow_component_id``, in a flow's own nodes or
in the nodes of one of its local components. A shared component's nodes may name another shared component too.
"""

from __future__ import annotations

from collections.abc import Iterator

from service.retell.flows import Component, ComponentNode, ConversationFlow, ConversationFlowComponent

Graph = ConversationFlow | Component   # a shared component is a Component too


def shared_nodes(graph: Graph, prefix: str = "") -> Iterator[tuple[str, ComponentNode]]:
    """Each component node of ``graph`` (and of a flow's local components) naming a shared component, with the
    path of its ``component_id`` field as errors name it."""
    for index, node in enumerate(graph.nodes):
        if isinstance(node, ComponentNode) and node.component_type == "shared":
            yield f"{prefix}nodes.{index} ({node.id}).component_id", node
    for index, component in enumerate(getattr(graph, "components", None) or []):
        yield from shared_nodes(component, f"{prefix}components.{index} ({component.name}).")


def names(graph: Graph, component_id: str) -> bool:
    """Whether ``graph`` has a node naming the shared component ``component_id``."""
    return any(node.component_id == component_id for _, node in shared_nodes(graph))


def missing(graph: Graph, known: set[str]) -> list[str]:
    """A problem line for each node naming a shared component that is not in ``known``."""
    return [f"{where}: no shared conversation flow component has the id {node.component_id!r} (create it with "
            "POST /create-conversation-flow-component, or use a local one: component_type local)"
            for where, node in shared_nodes(graph) if node.component_id not in known]


def with_local_copy(flow: ConversationFlow, shared: ConversationFlowComponent) -> ConversationFlow:
    """``flow`` with ``shared`` copied into its ``components`` and each node that named it naming the copy
    (``component_type: local``): what Retell does to the flows a deleted shared component was linked to. The copy
    keeps the component's name where it is free (else ``<name> (<id>)``) and is known by the shared id."""
    taken = {known for c in flow.components for known in (c.name, c.id) if known}
    component_id = shared.conversation_flow_component_id
    name = shared.name if shared.name not in taken else f"{shared.name} ({component_id})"
    local_id = component_id if component_id not in taken | {name} else f"{component_id}-local"
    copy = Component.model_validate({**shared.model_dump(exclude={"conversation_flow_component_id",
                                                                 "user_modified_timestamp"}),
                                     "name": name, "id": local_id})

    def relinked(graph: Graph) -> list[object]:
        return [node.model_copy(update={"component_type": "local", "component_id": local_id})
                if isinstance(node, ComponentNode) and node.component_type == "shared"
                and node.component_id == component_id else node for node in graph.nodes]

    components = [c.model_copy(update={"nodes": relinked(c)}) for c in flow.components]
    return flow.model_copy(update={"nodes": relinked(flow), "components": [*components, copy]})
