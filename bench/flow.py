"""``bench.run --agent flow``: the turns of a conversation-flow agent against the single-prompt agent's.

With ``--agent flow`` the benchmark's Parley also has the agent ``bench-flow`` (a conversation flow, below) on a
number of its own, and the ``flow`` phase runs closed-loop turns (as the ``turns`` phase does) against, in turn,
the single-prompt agent (``single``), the flow with texts that keep the chat at its node (``flow``) and the flow
with texts that move it (``flow_transition``), ``repeats`` times each, each run on conversations of its own.
Reported: the medians of CPU ms per turn and turns per second of each, ``cpu_ratio`` = flow / single-prompt CPU
per turn (the issue's target: <= 1.25) and ``transition_cpu_ratio`` = flow_transition / single (for information).

The flow is about the size of a real one's busiest node: the chat sits in ``desk``, a conversation node with a
prompt instruction, one equation edge (evaluated by Parley on every text; it never holds here) and two prompt
edges, and the flow has one global node (its condition offered on every text, like the prompt edges) with a
go-back condition. The fake LLM (``bench/fake_openai.py: move_or_echo``) echoes a text, as it does the
single-prompt agent's, so a ``flow`` turn is one model call at ``desk`` (with the three transitions offered),
like a single-prompt turn: the difference is what the flow costs Parley per turn. A ``flow_transition`` text holds
``[move]``: the fake calls the first transition offered, so the chat goes ``desk`` -> ``booking`` -> ``desk``...,
and each such turn is two model calls (the transition, then the new node's reply) and a recorded transition.
"""

from __future__ import annotations

import statistics
from typing import Any

FLOW_AGENT_ID = "bench-flow"
FLOW_NUMBER = "+15035550101"
FLOW_USERS = 4_000_000          # +1415NNNNNNN: the flow phase's conversations (single and flow runs apart)
RUN_STRIDE = 100_000
OFFSETS = {"single": 0, "flow": 30_000, "flow_transition": 60_000}   # within a run's stride
AGENTS = tuple(OFFSETS)         # the order of a round of runs
MOVE = "[move]"                 # in a text: the bench's fake LLM takes a transition (bench/fake_openai.py)
TARGET_RATIO = 1.25
TARGET = f"<= {TARGET_RATIO} x single-prompt CPU per turn"


def _prompt_edge(edge_id: str, prompt: str, to: str) -> dict[str, Any]:
    return {"id": edge_id, "transition_condition": {"type": "prompt", "prompt": prompt}, "destination_node_id": to}


def flow_agent(burst_window_ms: int) -> dict[str, Any]:
    """The flow agent's file (Retell's chat-agent shape with its flow inline)."""
    desk = {
        "id": "desk", "name": "Front desk", "type": "conversation",
        "instruction": {"type": "prompt", "text": "Answer questions about visits and hours. The user is "
                                                  "{{user_number}}."},
        "edges": [
            {"id": "closed", "transition_condition": {"type": "equation", "operator": "&&", "equations": [
                {"left": "{{booking_open}}", "operator": "==", "right": "false"}]}, "destination_node_id": "closed"},
            _prompt_edge("book", "The user wants to book a visit", "booking"),
            _prompt_edge("bye", "The user says goodbye", "goodbye"),
        ],
    }
    booking = {"id": "booking", "name": "Booking", "type": "conversation",
               "instruction": {"type": "prompt", "text": "Ask for the user's name and a preferred day."},
               "edges": [_prompt_edge("booked", "The user gave a name and a day", "desk")]}
    human = {"id": "human", "name": "Wants a person", "type": "conversation",
             "instruction": {"type": "static_text", "text": "Call us at (503) 555-0100."},
             "global_node_setting": {"condition": "The user asks for a person", "go_back_conditions": [
                 {"id": "back", "transition_condition": {"type": "prompt", "prompt": "The user goes on by text"}}]}}
    closed = {"id": "closed", "type": "end", "instruction": {"type": "static_text", "text": "We are closed."}}
    goodbye = {"id": "goodbye", "type": "end", "instruction": {"type": "static_text", "text": "Bye!"}}
    return {"agent_name": "Bench flow", "burst_window_ms": burst_window_ms, "end_chat_after_silence_ms": 3_600_000,
            "conversation_flow": {"start_speaker": "user", "start_node_id": "desk",
                                  "model_choice": {"type": "cascading", "model": "gpt-test"},
                                  "global_prompt": "You are the front desk.",
                                  "default_dynamic_variables": {"booking_open": "true"},
                                  "nodes": [desk, booking, human, closed, goodbye]}}


def flow_number() -> dict[str, Any]:
    return {"phone_number": FLOW_NUMBER, "nickname": "Bench flow",
            "inbound_sms_agents": [{"agent_id": FLOW_AGENT_ID, "weight": 1}], "daily_segment_limit": 100_000_000}


def flow_users(conversations: int, run: int, agent: str) -> list[str]:
    """The conversations of flow-phase run ``run`` for ``agent`` (one of ``AGENTS``)."""
    first = FLOW_USERS + run * RUN_STRIDE + OFFSETS[agent]
    return [f"+1415{first + i:07d}" for i in range(conversations)]


def tag(agent: str, run: int) -> str:
    """What the run's texts start with: ``[move]`` in those of ``flow_transition``."""
    return f"{agent}{run}" + (f" {MOVE}" if agent == "flow_transition" else "")


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per agent, and the ratios of flow to single-prompt CPU per turn (None if a run failed)."""
    out: dict[str, Any] = {"runs": runs}
    for name, results in runs.items():
        cpu = [r["cpu_ms_per_turn"] for r in results if "cpu_ms_per_turn" in r]
        out[f"{name}_cpu_ms_per_turn"] = statistics.median(cpu) if len(cpu) == len(results) else None
        out[f"{name}_turns_per_s"] = statistics.median(r["turns_per_s"] for r in results)
    single = out["single_cpu_ms_per_turn"]
    for name, ratio in (("flow", "cpu_ratio"), ("flow_transition", "transition_cpu_ratio")):
        measured = out.get(f"{name}_cpu_ms_per_turn")
        out[ratio] = round(measured / single, 3) if single and measured is not None else None
    return out


def rows(flow: dict[str, Any]) -> list[tuple[str, str]]:
    """The table's rows for the flow phase: (metric, value)."""
    def fmt(value: Any) -> str:
        return "n/a" if value is None else str(value)

    return [
        ("5. turns/s: single prompt / flow / flow moving", f"{fmt(flow.get('single_turns_per_s'))} / "
                                                          f"{fmt(flow.get('flow_turns_per_s'))} / "
                                                          f"{fmt(flow.get('flow_transition_turns_per_s'))}"),
        ("5. CPU ms per turn: single prompt / flow / flow moving",
         f"{fmt(flow.get('single_cpu_ms_per_turn'))} / {fmt(flow.get('flow_cpu_ms_per_turn'))} / "
         f"{fmt(flow.get('flow_transition_cpu_ms_per_turn'))}"),
        ("5. flow moving (2 model calls) / single prompt", fmt(flow.get("transition_cpu_ratio"))),
        ("5. flow / single-prompt CPU per turn", fmt(flow.get("cpu_ratio"))),
    ]
