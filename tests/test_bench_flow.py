"""``bench.run --agent flow``: its agents load in Parley as the bench writes them and answer the bench's fake model
as the phase says (a text stays at the node, a ``[move]`` text moves), the option adds the flow phase and nothing
else changes without it, and the phase's report holds the medians and their ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from bench import flow as flow_bench
from bench.fake_openai import move_or_echo
from bench.plan import DEFAULT_PHASES, QUICK, QUICK_PHASES
from bench.run import parse_args
from bench.scores import table, verdicts
from bench.stack import ACCOUNT_SID, AGENT_NUMBER, write_agents
from service.catalog import agent_files
from service.retell.flows import ConversationNode, EquationCondition, PromptCondition
from service.settings import Settings

from .conftest import MakeParley, answered


def load(directory: Path) -> agent_files.Declared:
    return agent_files.load(Settings(agents_dir=directory, twilio_account_sid=ACCOUNT_SID,
                                     twilio_auth_token=SecretStr("t")))


def test_the_default_run_writes_one_agent_and_runs_no_flow_phase(tmp_path: Path) -> None:
    args = parse_args([])
    assert args.agent == "single" and args.phases == DEFAULT_PHASES == "ack,turns,cpu,count,slow,slow400"
    write_agents(tmp_path / "agents", QUICK)
    assert sorted(p.name for p in (tmp_path / "agents").iterdir()) == ["bench.yaml", "phone-numbers.yaml"]
    assert list(load(tmp_path / "agents").numbers) == [AGENT_NUMBER]


def test_agent_flow_adds_the_flow_agent_on_its_own_number_and_the_phase(tmp_path: Path) -> None:
    assert parse_args(["--agent", "flow", "--quick"]).phases == f"{QUICK_PHASES},flow"
    assert parse_args(["--agent", "flow", "--phases", "flow"]).phases == "flow"
    write_agents(tmp_path / "agents", QUICK, flow=True)
    catalog = load(tmp_path / "agents")
    assert catalog.warnings == [] and catalog.unsupported == {}
    assert [a.agent_id for a in catalog.numbers[flow_bench.FLOW_NUMBER].inbound_sms_agents] == ["bench-flow"]
    assert [a.agent_id for a in catalog.numbers[AGENT_NUMBER].inbound_sms_agents] == ["bench"]
    flow = catalog.agents["bench-flow"].conversation_flow
    assert flow is not None and flow.warnings() == []
    desk = flow.start
    assert isinstance(desk, ConversationNode) and desk.instruction.type == "prompt"
    kinds = [type(edge.transition_condition) for edge in desk.edges]
    assert kinds == [EquationCondition, PromptCondition, PromptCondition]
    assert [n.id for n in flow.nodes if n.global_node_setting and n.global_node_setting.go_back_conditions] == [
        "human"]


def test_the_flow_phase_needs_agent_flow(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--phases", "turns,flow"])
    assert "the flow phase needs --agent flow" in capsys.readouterr().err


async def test_the_bench_flow_stays_at_its_node_or_moves_as_the_fake_model_is_told(
    tmp_path: Path, make_parley: MakeParley,
) -> None:
    write_agents(tmp_path / "bench", QUICK, flow=True)
    parley = await make_parley(agent=yaml.safe_load((tmp_path / "bench" / "bench-flow.yaml").read_text()))
    parley.llm.respond = move_or_echo
    # A flow turn: one model call at desk, offered its two prompt edges and the global node; the fake echoes.
    assert await answered(parley, "flow0 round 0") == "You said: flow0 round 0"
    [at_desk] = parley.llm.requests
    assert [t["function"]["name"] for t in at_desk["tools"]] == [
        "transition_to_booking", "transition_to_goodbye", "transition_to_human"]
    assert (await parley.chat_of())["current_node"] == "Front desk"
    # A flow_transition turn: the transition, then the new node's reply; two model calls.
    text = f"{flow_bench.tag('flow_transition', 0)} round 1"
    assert await answered(parley, text) == f"You said: {text}"
    assert len(parley.llm.requests) == 3 and "tools" not in parley.llm.requests[2]
    assert (await parley.chat_of())["current_node"] == "Booking"
    assert await answered(parley, text) == f"You said: {text}"
    chat = await parley.chat_of()
    assert chat["current_node"] == "Front desk"
    assert [(m["former_node_id"], m["new_node_id"]) for m in chat["message_with_tool_calls"]
            if m["role"] == "node_transition"] == [("desk", "booking"), ("booking", "desk")]


def run(cpu_ms: float, turns_per_s: float) -> dict[str, Any]:
    return {"turns": 400, "turns_per_s": turns_per_s, "cpu_ms_per_turn": cpu_ms}


def test_the_report_has_the_medians_and_their_ratios() -> None:
    summary = flow_bench.summarize({"single": [run(5.0, 190), run(4.0, 200), run(6.0, 180)],
                                    "flow": [run(6.0, 170), run(5.5, 175), run(9.0, 120)],
                                    "flow_transition": [run(10.0, 90), run(11.0, 80), run(9.5, 95)]})
    assert summary["single_cpu_ms_per_turn"] == 5.0 and summary["flow_cpu_ms_per_turn"] == 6.0
    assert summary["single_turns_per_s"] == 190 and summary["flow_turns_per_s"] == 170
    assert summary["flow_transition_cpu_ms_per_turn"] == 10.0 and summary["flow_transition_turns_per_s"] == 90
    assert summary["cpu_ratio"] == 1.2 and summary["transition_cpu_ratio"] == 2.0
    results: dict[str, Any] = {"flow": summary}
    results["targets"] = verdicts(results, QUICK)
    flow_row = [v for v in results["targets"] if v["name"] == "flow_cpu_ratio"]
    assert flow_row == [{"name": "flow_cpu_ratio", "value": 1.2, "target": "<= 1.25 x single-prompt CPU per turn",
                         "pass": True}]
    machine = {"date": "now", "nproc": 2, "python": "3.11", "quick": True, "pinned": False}
    lines = table(results, QUICK, machine).splitlines()
    assert [line.split("  ")[0] for line in lines if line.startswith("5.")] == [
        "5. turns/s: single prompt / flow / flow moving", "5. CPU ms per turn: single prompt / flow / flow moving",
        "5. flow moving (2 model calls) / single prompt", "5. flow / single-prompt CPU per turn"]
    assert lines[-3].split("  ")[0] == "5. CPU ms per turn: single prompt / flow / flow moving"
    assert lines[-3].split()[-5:] == ["5.0", "/", "6.0", "/", "10.0"]
    assert lines[-1].split() == ["5.", "flow", "/", "single-prompt", "CPU", "per", "turn", "1.2", "<=", "1.25", "x",
                                 "single-prompt", "CPU", "per", "turn", "PASS"]


def test_a_failed_run_leaves_the_ratio_unknown_and_the_default_report_has_no_flow_rows() -> None:
    failed = {"turns_per_s": 0.0, "error": "warm-up round not answered within 60 s"}
    summary = flow_bench.summarize({"single": [run(5.0, 190)], "flow": [failed], "flow_transition": [run(9, 90)]})
    assert summary["flow_cpu_ms_per_turn"] is None and summary["cpu_ratio"] is None
    assert summary["transition_cpu_ratio"] == 1.8
    assert [v["pass"] for v in verdicts({"flow": summary}, QUICK) if v["name"] == "flow_cpu_ratio"] == [None]
    plain: dict[str, Any] = {}
    plain["targets"] = verdicts(plain, QUICK)
    assert "flow_cpu_ratio" not in {v["name"] for v in plain["targets"]}
    machine = {"date": "now", "nproc": 2, "python": "3.11", "quick": True, "pinned": False}
    assert not [line for line in table(plain, QUICK, machine).splitlines() if line.startswith("5.")]
