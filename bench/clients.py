"""What the official clients cost, and Parley's requests beside them: ``.venv/bin/python -m bench.clients [--calls N]
[--repeats R] [--out FILE]``.

With the bench's fake OpenAI and fake Twilio in processes of their own, this process's CPU time per sequential
call (``time.process_time``) for: the ``openai`` client's ``chat.completions.create`` (on its aiohttp transport),
``service.agent.llm.LLM.complete`` (Parley's request, ``agent/completions.py``) and a plain aiohttp POST of the
same JSON; the ``twilio`` client's ``messages.create_async`` (as ``TwilioGateway.client`` builds it),
``TwilioGateway.send`` (Parley's request) and a plain aiohttp form POST of the same fields. Each measurement:
200 warm-up calls, then ``--calls``; interleaved for ``--repeats`` rounds; medians. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
from openai import AsyncOpenAI, DefaultAioHttpClient
from pydantic import SecretStr

from service.agent.llm import LLM
from service.channels.twilio.gateway import TwilioGateway
from service.metrics import Metrics
from service.settings import Settings

from .procs import ROOT, Procs, free_port, python_module, wait_http

ACCOUNT_SID = "AC" + "be" * 16      # as bench/run.py
AUTH_TOKEN = "bench-auth-token"
OPENAI_KEY = "sk-test"              # the only key the fake OpenAI accepts
AGENT_NUMBER, USER_NUMBER = "+15035550100", "+14155550123"
STATUS_CALLBACK = "http://bench.local/twilio/status?chat_id=chat_0123456789abcdef"
WARMUP = 200
OUT = ROOT / "bench" / "clients.json"
VARIANTS = ("openai client", "Parley LLM.complete", "plain aiohttp (LLM)",
            "twilio client", "Parley TwilioGateway.send", "plain aiohttp (Twilio)")

SYSTEM = ("You are the front desk of Harbor Dental. The user is +14155550123.\n\n## Role\nAnswer questions about "
          "opening hours (Monday to Friday, 8 am to 6 pm; Saturday, 9 am to 1 pm), the address (1200 Harbor Way, "
          "Suite 4), parking (free, behind the building) and insurance (most PPO plans). Book, move or cancel "
          "appointments when asked; confirm the day and time back to the user.\n\n## Channel\nYou are texting "
          "with the user by SMS. Reply in plain text, no markdown. Keep each reply short, at most about 459 "
          "characters. If the user says goodbye or has nothing more to ask, end the chat.")
HISTORY = [("user", "Hi, are you open on Saturday?"),
           ("assistant", "Hi! Yes, Saturdays from 9 am to 1 pm. Would you like to book a visit?"),
           ("user", "Yes please, a cleaning this Saturday morning if you can"),
           ("assistant", "I have 9:30 am or 11:00 am this Saturday. Which one suits you?"),
           ("user", "9:30 works"),
           ("assistant", "Done: a cleaning on Saturday at 9:30 am. Anything else I can help with?")]
TOOLS = [{"type": "function", "function": {"name": "end_chat", "description": "End the chat.",
                                           "parameters": {"type": "object", "properties": {}}}}]
MESSAGES: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM},
                                  *({"role": r, "content": c} for r, c in HISTORY),
                                  {"role": "user", "content": "Is parking free?"}]
REPLY = "Yes, parking is free, in the lot behind the building. See you on Saturday at 9:30 am!"


async def measure(call: Callable[[], Awaitable[Any]], calls: int) -> tuple[float, float]:
    """CPU and wall µs per call over ``calls`` sequential calls, after ``WARMUP`` calls."""
    for _ in range(WARMUP):
        await call()
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.process_time() - cpu) * 1e6 / calls, (time.perf_counter() - wall) * 1e6 / calls


async def run(llm_base: str, twilio_base: str, calls: int, repeats: int) -> dict[str, Any]:
    settings = Settings(openai_api_key=SecretStr(OPENAI_KEY), openai_base_url=llm_base, twilio_account_sid=ACCOUNT_SID,
                        twilio_auth_token=SecretStr(AUTH_TOKEN), twilio_api_base_url=twilio_base)
    metrics = Metrics()
    llm, gateway = LLM(settings, metrics), TwilioGateway(settings, metrics)   # as service/app.py builds them
    llm_url = llm_base.rstrip("/") + "/chat/completions"
    llm_body = {"model": "gpt-test", "messages": MESSAGES, "temperature": 0.0, "tools": TOOLS,
                "tool_choice": "auto"}    # what LLM.complete sends; serialized on every call, as it does
    llm_headers = {"Authorization": f"Bearer {OPENAI_KEY}", "Content-Type": "application/json"}
    twilio_url = f"{twilio_base.rstrip('/')}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    credentials = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    twilio_headers = {"Authorization": "Basic " + credentials}
    form = {"To": USER_NUMBER, "From": AGENT_NUMBER, "Body": REPLY, "StatusCallback": STATUS_CALLBACK}

    official = AsyncOpenAI(api_key=OPENAI_KEY, base_url=llm_base, max_retries=0, http_client=DefaultAioHttpClient())
    async with aiohttp.ClientSession() as http:
        async def official_llm() -> str:
            completion = await official.chat.completions.create(
                model="gpt-test", temperature=0.0, messages=cast(Any, MESSAGES), tools=cast(Any, TOOLS),
                tool_choice="auto")
            return completion.choices[0].message.content or ""

        async def parley_llm() -> str:
            completion = await llm.complete(model="gpt-test", temperature=0.0, messages=MESSAGES, tools=TOOLS)
            return completion.content

        async def plain_llm() -> str:
            async with http.post(llm_url, data=orjson.dumps(llm_body), headers=llm_headers) as response:
                response.raise_for_status()
                return str(orjson.loads(await response.read())["choices"][0]["message"]["content"] or "")

        async def official_twilio() -> str:
            message = await gateway.client(ACCOUNT_SID).messages.create_async(
                to=USER_NUMBER, from_=AGENT_NUMBER, body=REPLY, status_callback=STATUS_CALLBACK)
            return str(message.sid)

        async def parley_twilio() -> str:
            sent = await gateway.send(account_sid=ACCOUNT_SID, from_=AGENT_NUMBER, to=USER_NUMBER, body=REPLY,
                                      status_callback=STATUS_CALLBACK)
            return sent.sid

        async def plain_twilio() -> str:
            async with http.post(twilio_url, data=form, headers=twilio_headers) as response:
                response.raise_for_status()
                return str(orjson.loads(await response.read())["sid"])

        variants = dict(zip(VARIANTS, (official_llm, parley_llm, plain_llm, official_twilio, parley_twilio,
                                       plain_twilio), strict=True))
        for name, call in variants.items():     # each must work before anything is timed
            if not await call():
                raise RuntimeError(f"{name}: an empty answer")
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
        try:
            for repeat in range(repeats):
                for name, call in variants.items():
                    runs[name].append(await measure(call, calls))
                    print(f"repeat {repeat + 1}/{repeats}, {name}: {runs[name][-1][0]:.0f} µs CPU per call",
                          file=sys.stderr, flush=True)
        finally:
            await official.close()
            await llm.close()
            await gateway.close()
    return {name: {"cpu_us_per_call": round(statistics.median(c for c, _ in r), 1),
                   "wall_us_per_call": round(statistics.median(w for _, w in r), 1),
                   "cpu_us_runs": [round(c, 1) for c, _ in r], "wall_us_runs": [round(w, 1) for _, w in r]}
            for name, r in runs.items()}


def fake_count(url: str) -> int:
    with urllib.request.urlopen(url + "/stats", timeout=5.0) as response:
        return int(json.loads(response.read())["count"])


def report(results: dict[str, Any], calls: int, repeats: int, load: list[float]) -> tuple[str, dict[str, float]]:
    cpu = {name: results[name]["cpu_us_per_call"] for name in VARIANTS}
    openai_client, parley_llm, plain_llm, twilio_client, parley_twilio, plain_twilio = (cpu[n] for n in VARIANTS)
    diffs = {"openai_minus_plain_us": round(openai_client - plain_llm, 1),
             "parley_llm_minus_plain_us": round(parley_llm - plain_llm, 1),
             "twilio_minus_plain_us": round(twilio_client - plain_twilio, 1),
             "parley_twilio_minus_plain_us": round(parley_twilio - plain_twilio, 1)}
    diffs["per_turn_us"] = round(diffs["parley_llm_minus_plain_us"] + diffs["parley_twilio_minus_plain_us"], 1)
    diffs["per_turn_clients_us"] = round(diffs["openai_minus_plain_us"] + diffs["twilio_minus_plain_us"], 1)
    rows = [(name, f"{cpu[name]:.0f}", f"{results[name]['wall_us_per_call']:.0f}",
             " / ".join(f"{c:.0f}" for c in results[name]["cpu_us_runs"])) for name in VARIANTS]
    rows += [("openai client - plain", f"{diffs['openai_minus_plain_us']:+.0f}", f"x{openai_client / plain_llm:.2f}",
              ""),
             ("Parley LLM - plain", f"{diffs['parley_llm_minus_plain_us']:+.0f}", f"x{parley_llm / plain_llm:.2f}", ""),
             ("twilio client - plain", f"{diffs['twilio_minus_plain_us']:+.0f}",
              f"x{twilio_client / plain_twilio:.2f}", ""),
             ("Parley Twilio - plain", f"{diffs['parley_twilio_minus_plain_us']:+.0f}",
              f"x{parley_twilio / plain_twilio:.2f}", ""),
             ("per turn, Parley (one of each)", f"{diffs['per_turn_us']:+.0f}", "", ""),
             ("per turn, the official clients", f"{diffs['per_turn_clients_us']:+.0f}", "", "")]
    head = ("variant", "CPU µs/call", "wall µs/call", "CPU µs per repeat")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = [f"Client overhead — {calls} sequential calls x {repeats} repeats (median), after {WARMUP} warm-up "
             f"calls — Python {platform.python_version()}, nproc {os.cpu_count()}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in [head, tuple("-" * w for w in widths), *rows]]
    lines.append(f"CPU is this process's only (the fakes run apart). Load average {load}: if it is high, the "
                 f"machine was busy; run it again.")
    return "\n".join(lines), diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per variant and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the six variants, interleaved")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeats < 1:
        parser.error("--calls and --repeats must be at least 1")
    work_dir = Path(tempfile.mkdtemp(prefix="parley-clients-"))
    procs = Procs(work_dir)
    procs.handle_signals()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    try:
        twilio_port, llm_port = free_port(), free_port()
        procs.start("fake-twilio", python_module("bench.fake_twilio", "--port", str(twilio_port),
                                                 "--account", f"{ACCOUNT_SID}:{AUTH_TOKEN}"))
        procs.start("fake-openai", python_module("bench.fake_openai", "--port", str(llm_port)))
        twilio_base, llm_root = f"http://127.0.0.1:{twilio_port}", f"http://127.0.0.1:{llm_port}"
        wait_http(procs, "fake-twilio", twilio_base + "/stats")
        wait_http(procs, "fake-openai", llm_root + "/stats")
        results = asyncio.run(run(llm_root + "/v1", twilio_base, args.calls, args.repeats))
        counts = {"fake_openai": fake_count(llm_root), "fake_twilio": fake_count(twilio_base),
                  "expected_each": 3 * (1 + args.repeats * (WARMUP + args.calls))}
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc}); stopping the fakes", file=sys.stderr)
        return 130
    except BaseException:
        for name in procs.procs:
            print(f"--- {name} log (tail) ---\n{procs.tail(name, 15)}", file=sys.stderr)
        raise
    finally:
        procs.stop_all()
        shutil.rmtree(work_dir, ignore_errors=True)
    load = [round(x, 2) for x in os.getloadavg()]
    text, diffs = report(results, args.calls, args.repeats, load)
    print(text)
    out = {"machine": {"python": platform.python_version(), "nproc": os.cpu_count(), "load_average": load,
                       "load_average_at_start": load_at_start},
           "plan": {"calls": args.calls, "repeats": args.repeats, "warmup": WARMUP},
           "variants": results, **diffs, "requests_at_fakes": counts}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"(JSON in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
