"""The demo driver behind ``scripts/demo``: the product's headline story, narrated as it happens.

On a fresh SQLite store (the embedded default) it starts the Authority (``mission-ledger serve``,
its issuer its own loopback URL, push to loopback allowed), mints the principals with
``mission-ledger tokens create``, and then, against the real HTTP API: the agent's harness
proposes a Mission, an approver approves it, the agent delegates a narrower child Mission to a
sub-agent, two example Services (``examples/erp_service.py``, built on the receiver SDK, each in
its own process: one push, one poll) subscribe and see their verification SET come back, checks
allow, the operator revokes the parent, both Services receive ``mission-revoked`` and
``mission-cascaded``, checks deny with the reason code, and ``mission-ledger audit verify``
passes. Every process is stopped at the end, on failure and on Ctrl-C.

Latency is measured on one clock (this machine's): from the revocation's ledger timestamp (the
instant the command stamped its event, just before the commit) to the instant the Service held
the verified SET (the ``at`` of the Service's ``--json`` line).

Run it through ``scripts/demo`` (which prepares ``.venv``); ``--report FILE`` writes the outcome
as JSON (what ``tests/e2e/test_demo.py`` asserts on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import io
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "examples" / "erp_service.py"
PROPOSAL = ROOT / "examples" / "proposal.json"
CHILD_AUTHORITY = ROOT / "examples" / "child-authority.json"
LISTENING = re.compile(r"listening on (http://\S+)")
TOKEN = re.compile(r"\b(mlt_[0-9a-f]{32}_[A-Za-z0-9_-]{43})\b")
CALL_RESOURCE = "https://erp.example.com/invoices/2030-q3/17"
REVOKE_REASON = "task finished early"
SUB_AGENT = "agent:ocr-helper"
STOP_TIMEOUT = 15.0  # seconds a process gets to stop after SIGTERM before SIGKILL
ENV_DROPPED = (
    "MISSION_LEDGER_DATABASE_URL",
    "MISSION_LEDGER_DATA",
    "MISSION_LEDGER_ACTOR",
    "MISSION_LEDGER_ISSUER",
    "MISSION_LEDGER_RECEIVER_TOKEN",
)
DESCRIPTION = """\
Watch the Mission ledger's headline story on this machine, in about ten seconds.

  1. The Authority starts on a fresh embedded SQLite store (a temporary directory).
  2. The agent's harness proposes a Mission; an approver approves it.
  3. The agent delegates a narrower child Mission to a sub-agent.
  4. Two example Services (examples/erp_service.py, on the receiver SDK), each in its own
     process, subscribe over OpenID SSF: one by push (RFC 8935), one by poll (RFC 8936).
  5. Checks allow, for the parent and the child.
  6. The operator revokes the parent: both Services receive mission-revoked and, for the
     child, mission-cascaded; the revoke-to-receiver latency is measured.
  7. Checks now deny, with the reason code; `mission-ledger audit verify` passes.

Every process is stopped at the end (also on Ctrl-C). Exit status 0 when every step
behaved; 1 (with the failed step and where the logs are) when one did not; 130 on Ctrl-C."""


class DemoFailure(Exception):
    """A step did not behave; ``str()`` says what was expected and what happened."""


# -- output ---------------------------------------------------------------------------------------

COLOURS = {
    "authority": "34",
    "operator": "31",
    "approver": "32",
    "agent": "36",
    "sub-agent": "36",
    "erp-push": "35",
    "erp-poll": "33",
    "check": "37",
    "audit": "32",
    "demo": "37",
}


class Timeline:
    """Aligned, timestamped lines: ``+SECONDS  WHO  WHAT`` (colour only on a terminal)."""

    def __init__(self, out: TextIO, *, colour: bool) -> None:
        self.out = out
        self.colour = colour
        self.start = time.time()

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def bold(self, text: str) -> str:
        return self.paint(text, "1")

    def dim(self, text: str) -> str:
        return self.paint(text, "2")

    def ok(self, text: str) -> str:
        return self.paint(text, "1;32")

    def bad(self, text: str) -> str:
        return self.paint(text, "1;31")

    def write(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def line(self, who: str, text: str, *, at: float | None = None) -> None:
        offset = (time.time() if at is None else at) - self.start
        stamp = self.dim(f"{offset:+8.2f}s")
        actor = self.paint(f"{who:<10}", COLOURS.get(who, "37"))
        self.write(f"{stamp}  {actor} {text}")

    def more(self, text: str) -> None:
        """A continuation line, aligned under the text of the line before."""
        self.write(" " * 22 + self.dim(text))


def short(identifier: str) -> str:
    return identifier[:8]


def describe_entry(entry: dict[str, Any]) -> str:
    return f"{', '.join(entry['actions'])} on {entry['resource']}"


def receipt_of(event: str, mission: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate: the Service's line for ``event`` about ``mission``."""

    def matches(line: dict[str, Any]) -> bool:
        return line.get("event") == event and line.get("mission") == mission

    return matches


def parse_instant(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- processes ------------------------------------------------------------------------------------


# Loaded here, not after fork: loading a library in a forked child of a threaded process can hang.
_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """Runs in each child between fork and exec. On Linux the child gets SIGTERM should the
    driver die without cleaning up (SIGKILL, a crash): no orphans either way."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Child:
    """A process the demo started: in its own session (Ctrl-C reaches only the driver, which
    stops it in order), its output in ``logs/``; JSON lines from its stdout collected."""

    name: str
    process: asyncio.subprocess.Process
    logs: list[Path]
    lines: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def signal(self, signum: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        self.signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            code = await self.process.wait()
        if self.reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self.reader, 5)
        return code

    def tail(self, lines: int = 12) -> str:
        parts = []
        for log in self.logs:
            if log.exists() and log.stat().st_size:
                text = log.read_text(errors="replace").rstrip().splitlines()[-lines:]
                text = [textwrap.shorten(TOKEN.sub("mlt_…", t), 300) for t in text]
                parts.append(f"--- {log} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(parts)


async def spawn(
    name: str, argv: Sequence[str], logs: Path, *, env: dict[str, str], json_stdout: bool
) -> Child:
    """Start ``argv``; stdout to ``logs/NAME.out`` (and parsed when ``json_stdout``), stderr
    to ``logs/NAME.err``."""
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    with err_path.open("wb") as err, contextlib.ExitStack() as stack:
        stdout: Any = asyncio.subprocess.PIPE
        if not json_stdout:
            stdout = stack.enter_context(out_path.open("wb"))
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=stdout,
            stderr=err,
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
    child = Child(name, process, [out_path, err_path])
    if json_stdout:
        child.reader = asyncio.create_task(_collect(child, out_path))
    return child


async def _collect(child: Child, path: Path) -> None:
    stream = child.process.stdout
    assert stream is not None
    with path.open("w", encoding="utf-8") as log:
        while raw := await stream.readline():
            text = raw.decode(errors="replace")
            log.write(text)
            log.flush()
            with contextlib.suppress(ValueError):
                document = json.loads(text)
                if isinstance(document, dict):
                    child.lines.append(document)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- the demo -------------------------------------------------------------------------------------


@dataclass
class Service:
    """One example Service: its receiver principal and its process."""

    name: str  # on the timeline and in the report
    principal: str  # its receiver principal's name (suffixed on a reused store)
    mode: str
    audience: str
    resource: str
    child: Child | None = None
    stream_id: str = ""
    endpoint: str | None = None

    @property
    def rfc(self) -> str:
        return "RFC 8935" if self.mode == "push" else "RFC 8936"


@dataclass
class Demo:
    args: argparse.Namespace
    tl: Timeline
    work: Path
    data: Path
    logs: Path
    url: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    server: Child | None = None
    services: list[Service] = field(default_factory=list)
    session: aiohttp.ClientSession | None = None
    report: dict[str, Any] = field(default_factory=dict)
    step: str = "setup"
    stopping: bool = False
    delegation_position: int = 0

    # -- helpers ----------------------------------------------------------------------------------

    def children(self) -> list[Child]:
        found = [s.child for s in self.services if s.child is not None]
        return [*found, *([self.server] if self.server else [])]

    async def call(
        self, method: str, path: str, who: str, body: Any = None, *, expect: int = 200
    ) -> Any:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        try:
            async with self.session.request(
                method, self.url + path, json=body, headers=headers
            ) as response:
                text = await response.text()
                status = response.status
        except TimeoutError:
            raise DemoFailure(
                f"{method} {path}: no answer within {self.args.timeout:g} s"
            ) from None
        except aiohttp.ClientError as error:
            raise DemoFailure(f"{method} {path} failed: {error!r}") from None
        if status != expect:
            raise DemoFailure(f"{method} {path} as {who}: HTTP {status}, expected {expect}: {text}")
        return json.loads(text) if text else None

    async def wait_for(
        self,
        child: Child,
        predicate: Callable[[dict[str, Any]], bool],
        what: str,
    ) -> dict[str, Any]:
        """The first JSON line of ``child`` matching ``predicate`` (bounded by --timeout)."""
        deadline = time.monotonic() + self.args.timeout
        while True:
            for line in child.lines:
                if predicate(line):
                    return line
            if not child.running and (child.reader is None or child.reader.done()):
                raise DemoFailure(
                    f"{child.name} exited (status {child.process.returncode}) before {what}"
                )
            if time.monotonic() > deadline:
                raise DemoFailure(f"{child.name}: no {what} within {self.args.timeout:g} s")
            await asyncio.sleep(0.01)

    # -- the story --------------------------------------------------------------------------------

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.args.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self.session = session
            await self.start_authority()
            self.mint_tokens()
            parent, child = await self.propose_approve_delegate()
            await self.start_services()
            before = await self.checks(parent, child, "before")
            revocation = await self.revoke(parent, child)
            await self.receipts(parent, child, revocation)
            after = await self.checks(parent, child, "after", min_position=revocation["position"])
            await self.sub_agent_reads(child, expect="cascaded")
            self.report["checks"] = {"before": before, "after": after}
            await self.audit_verify()

    async def start_authority(self) -> None:
        self.step = "starting the Authority"
        for attempt in range(3):  # the issuer must be known at start: choose the port first
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            argv = [
                *("serve", "--port", str(port), "--issuer", url, "--data", str(self.data)),
                *("--allow-insecure-push", "--allow-private-push-targets"),
            ]
            if attempt == 0:
                self.tl.line("authority", f"mission-ledger serve --port {port} --issuer {url}")
                self.tl.more("  --data STORE --allow-insecure-push --allow-private-push-targets")
            self.server = await spawn(
                "authority",
                [sys.executable, "-m", "mission_ledger", *argv],
                self.logs,
                env=child_env(),
                json_stdout=False,
            )
            found = await self._await_listening(self.server)
            if found:
                self.url = found
                break
            await self.server.stop()
        else:
            raise DemoFailure("the Authority did not start (see logs/authority.err)")
        self.tl.line("authority", f"listening on {self.url} (the issuer: its own URL)")
        self.report["url"] = self.url

    async def _await_listening(self, server: Child) -> str | None:
        deadline = time.monotonic() + max(self.args.timeout, 30)
        out = server.logs[0]
        while time.monotonic() < deadline:
            match = LISTENING.search(out.read_text(errors="replace") if out.exists() else "")
            if match:
                return match.group(1)
            if not server.running:
                return None
            await asyncio.sleep(0.05)
        return None

    def mint_tokens(self) -> None:
        """The principals, minted as an operator would (``mission-ledger tokens create`` on the
        data dir while the server runs), in this process: no Python start-up per token."""
        self.step = "minting tokens"
        assert self.server is not None
        bootstrap = TOKEN.search(self.server.logs[1].read_text(errors="replace"))
        tag = "" if bootstrap else "-" + os.urandom(2).hex()  # a reused store: names are taken
        specs: dict[str, list[str]] = {
            "approver": ["approver", f"bob@example.com{tag}"],
            "agent": ["harness", f"invoice-bot{tag}", "--agent", "agent:invoice-bot"],
            "sub-agent": ["harness", f"ocr-helper{tag}", "--agent", SUB_AGENT],
        }
        if bootstrap:
            self.tokens["operator"] = bootstrap.group(1)
            self.report["operator"] = "bootstrap"
            self.tl.line("operator", "the bootstrap operator's token, printed once at first start")
        else:
            specs = {"operator": ["operator", f"demo-operator{tag}"], **specs}
            self.report["operator"] = "minted"
        self.services = [
            Service(
                "erp-push",
                f"erp-push{tag}",
                "push",
                "https://erp.example.com",
                "https://erp.example.com/invoices/",
            ),
            Service(
                "erp-poll",
                f"erp-poll{tag}",
                "poll",
                "https://reports.erp.example.com",
                "https://erp.example.com/invoices/2030-q3/",
            ),
        ]
        for service in self.services:
            specs[service.name] = [
                *("receiver", service.principal, "--audience", service.audience),
                *("--resource", service.resource),
            ]
        from mission_ledger.cli import main as cli  # the `mission-ledger` console script

        for key, (role, name, *extra) in specs.items():
            argv = ["tokens", "create", "--role", role, "--name", name, *extra]
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli([*argv, "--data", str(self.data)])
            token = out.getvalue().strip()
            if code != 0 or not TOKEN.fullmatch(token):
                raise DemoFailure(f"mission-ledger {' '.join(argv)}: exit {code}: {err.getvalue()}")
            self.tokens[key] = token
            if role == "receiver":
                self.tl.line("operator", "mission-ledger " + " ".join(argv[:6]))
                self.tl.more("  " + " ".join(argv[6:]))
            else:
                self.tl.line("operator", "mission-ledger " + " ".join(argv))

    async def propose_approve_delegate(self) -> tuple[str, str]:
        self.step = "proposal, approval and delegation"
        document = json.loads(PROPOSAL.read_text(encoding="utf-8"))
        proposal = await self.call("POST", "/proposals", "agent", document, expect=201)
        task = document["task"]
        self.tl.line(
            "agent",
            f"{document['agent']} proposes {task['id']} for {document['user']} "
            f"→ proposal {short(proposal['proposal_id'])} ({proposal['state']})",
        )
        self.tl.more(f"  “{textwrap.shorten(task['description'], 70)}”")

        mission = await self.call(
            "POST", f"/proposals/{proposal['proposal_id']}/approve", "approver", {}, expect=201
        )
        parent = mission["mission_id"]
        self.tl.line(
            "approver",
            f"{mission['approval']['approvers'][0].partition(':')[2]} approves → "
            f"Mission {short(parent)} "
            f"v{mission['version']} {self.tl.ok(mission['state'])}",
        )
        for entry in mission["authority_set"]:
            self.tl.more("  " + describe_entry(entry))

        authority = json.loads(CHILD_AUTHORITY.read_text(encoding="utf-8"))
        delegated = await self.call(
            "POST",
            f"/missions/{parent}/delegations",
            "agent",
            {"agent": SUB_AGENT, "authority_set": authority},
            expect=201,
        )
        child = delegated["mission_id"]
        self.tl.line(
            "agent",
            f"delegates to {SUB_AGENT} → child Mission {short(child)} "
            f"v{delegated['version']} {self.tl.ok(delegated['state'])}, a narrower Authority Set:",
        )
        for entry in delegated["authority_set"]:
            self.tl.more("  " + describe_entry(entry))
        self.delegation_position = int(delegated["ledger_position"])
        await self.sub_agent_reads(child, expect="active")
        self.report.update(parent=parent, child=child)
        return parent, child

    async def sub_agent_reads(self, child: str, *, expect: str) -> None:
        document = await self.call("GET", f"/missions/{child}", "sub-agent")
        if document["state"] != expect:
            raise DemoFailure(f"the child Mission is {document['state']}, expected {expect}")
        detail = (
            f"depth {document['parent']['depth']}, parent {short(document['parent']['id'])}"
            if expect == "active"
            else f"v{document['version']}, {document.get('reason') or ''}".rstrip(", ")
        )
        detail = detail.replace(document["parent"]["id"], short(document["parent"]["id"]))
        state = self.tl.ok(expect) if expect == "active" else self.tl.bad(expect)
        self.tl.line(
            "sub-agent", f"{SUB_AGENT} reads its Mission {short(child)}: {state}, {detail}"
        )

    async def start_services(self) -> None:
        self.step = "starting the Services"
        for service in self.services:
            argv = [
                *(sys.executable, str(SERVICE), "--issuer", self.url, "--mode", service.mode),
                *("--listen", "127.0.0.1:0", "--json", "--description", f"demo {service.name}"),
                *(["--caep"] if self.args.caep else []),
            ]
            self.tl.line(
                service.name,
                f"starts examples/erp_service.py --mode {service.mode} --json (its own process)",
            )
            service.child = await spawn(
                service.name,
                argv,
                self.logs,
                env=child_env(MISSION_LEDGER_RECEIVER_TOKEN=self.tokens[service.name]),
                json_stdout=True,
            )

        seen: list[tuple[float, str, str]] = []  # printed in time order once both are up

        async def subscribed(service: Service) -> None:
            assert service.child is not None
            created = await self.wait_for(
                service.child,
                lambda line: line.get("status") == "stream-created",
                "stream (SSF stream create)",
            )
            service.stream_id = created["stream_id"]
            if service.mode == "push":
                listening = await self.wait_for(
                    service.child, lambda line: line.get("status") == "listening", "endpoint"
                )
                service.endpoint = listening["endpoint"]
            where = f" to {service.endpoint}" if service.endpoint else ""
            text = f"subscribed: stream {short(service.stream_id)}, {service.mode}{where}"
            seen.append((created["at"], service.name, text))
            verified = await self.wait_for(
                service.child,
                lambda line: line.get("kind") == "verification",
                "verification SET",
            )
            text = f"verification SET back by {service.mode} ({service.rfc}): {verified['detail']}"
            seen.append((verified["at"], service.name, text))

        await asyncio.gather(*(subscribed(s) for s in self.services))
        for at, who, text in sorted(seen):
            self.tl.line(who, text, at=at)

    async def checks(
        self, parent: str, child: str, phase: str, *, min_position: int | None = None
    ) -> list[dict[str, Any]]:
        """Ask as the Services do: may the agent do this now, under this Mission?"""
        self.step = f"checks {phase} the revocation"
        push, poll = self.services
        asks = [
            (push, "parent", parent, "invoices.read"),
            (poll, "child", child, "invoices.read"),
        ]
        if phase == "before":
            asks.append((poll, "child", child, "invoices.flag"))  # not in the narrower set
        position = self.delegation_position if min_position is None else min_position
        self.tl.line("check", f"POST /missions/{{id}}/check, resource {CALL_RESOURCE}")
        results = []
        for service, label, mission, action in asks:
            answer = await self.call(
                "POST",
                f"/missions/{mission}/check",
                service.name,
                {"action": action, "resource": CALL_RESOURCE, "min_position": position},
            )
            decision, reason = answer["decision"], answer["reason"]
            expected = "allow" if phase == "before" and action == "invoices.read" else "deny"
            if decision != expected:
                raise DemoFailure(f"check {label} {action}: {decision} ({reason}), not {expected}")
            why = reason + (f", state {answer['state']}" if "state" in answer else "")
            verdict = self.tl.ok(decision) if decision == "allow" else self.tl.bad(decision)
            self.tl.line(
                "check",
                f"{service.name} asks: {label:<6} {short(mission)}  {action:<13} "
                f"→ {verdict} ({why})",
            )
            results.append(
                {
                    "service": service.name,
                    "mission": label,
                    "action": action,
                    "decision": decision,
                    "reason": reason,
                    "state": answer.get("state"),
                }
            )
        return results

    async def revoke(self, parent: str, child: str) -> dict[str, Any]:
        self.step = "revoking the parent"
        sent = time.time()
        result = await self.call(
            "POST", f"/missions/{parent}/revoke", "operator", {"reason": REVOKE_REASON}
        )
        answered = time.time()
        if result["state"] != "revoked":
            raise DemoFailure(f"the parent is {result['state']} after revoke")
        commits = {}
        for label, mission in (("parent", parent), ("child", child)):
            history = await self.call("GET", f"/missions/{mission}/events", "operator")
            last = history["events"][-1]
            commits[label] = {"type": last["type"], "timestamp": last["timestamp"]}
        if commits["child"]["type"] != "MissionCascaded":
            raise DemoFailure(f"the child's last event is {commits['child']['type']}")
        committed = parse_instant(commits["parent"]["timestamp"])
        self.tl.line(
            "operator",
            f"revokes parent {short(parent)} (“{REVOKE_REASON}”) → {self.tl.bad('revoked')} "
            f"v{result['version']}, ledger position {result['ledger_position']}",
            at=sent,
        )
        self.tl.more(
            f"  committed {commits['parent']['timestamp']}, the child's cascade in the same "
            "transaction"
        )
        self.tl.more(f"  the call answered {1000 * (answered - committed):.1f} ms after the commit")
        revocation = {
            "position": int(result["ledger_position"]),
            "sent_at": sent,
            "answered_at": answered,
            "committed": {k: parse_instant(v["timestamp"]) for k, v in commits.items()},
        }
        self.report["revocation"] = revocation
        return revocation

    def expected_receipts(self, parent: str, child: str) -> list[tuple[str, str, str]]:
        """(key, event name, Mission id) of each SET every Service must receive."""
        wanted = [
            ("mission-revoked (parent)", "mission-revoked", parent),
            ("mission-cascaded (child)", "mission-cascaded", child),
        ]
        if self.args.caep:
            wanted += [
                ("session-revoked (parent)", "session-revoked", parent),
                ("session-revoked (child)", "session-revoked", child),
            ]
        return wanted

    async def receipts(self, parent: str, child: str, revocation: dict[str, Any]) -> None:
        self.step = "delivery of the revocation"
        labels = {parent: "parent", child: "child"}
        arrivals: list[tuple[float, Service, str, dict[str, Any]]] = []

        async def collect(service: Service) -> None:
            assert service.child is not None
            for column, event, mission in self.expected_receipts(parent, child):
                line = await self.wait_for(
                    service.child,
                    receipt_of(event, mission),
                    f"{event} for the {labels[mission]} Mission",
                )
                arrivals.append((float(line["at"]), service, column, line))

        await asyncio.gather(*(collect(s) for s in self.services))
        latencies: dict[str, dict[str, float]] = {s.name: {} for s in self.services}
        for at, service, column, line in sorted(arrivals, key=lambda item: item[0]):
            label = labels[line["mission"]]
            latency = 1000 * (at - revocation["committed"][label])
            latencies[service.name][column] = round(latency, 3)
            state = line.get("state") or "?"
            note = " (then re-read)" if line.get("resynced") else ""
            self.tl.line(
                service.name,
                f"{line['event']:<17} {label:<6} {short(line['mission'])} → "
                f"{self.tl.bad(f'{state:<8}')}  +{latency:.1f} ms after the commit{note}",
                at=at,
            )
        self.report["services"] = {
            s.name: {
                "delivery": s.mode,
                "stream_id": s.stream_id,
                "received": sorted(latencies[s.name]),
                "latency_ms": latencies[s.name],
            }
            for s in self.services
        }

    async def audit_verify(self) -> None:
        self.step = "audit verify"
        argv = ["audit", "verify", "--json", "--data", str(self.data)]
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "mission_ledger", *argv),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(),
            start_new_session=True,
            preexec_fn=_child_setup,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), max(self.args.timeout, 30))
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise
        (self.logs / "audit-verify.out").write_bytes(out + err)
        try:
            result = json.loads(out)
        except ValueError:
            result = {}
        if process.returncode != 0 or result.get("ok") is not True:
            raise DemoFailure(
                f"mission-ledger audit verify: exit {process.returncode}: "
                f"{(out + err).decode(errors='replace').strip()}"
            )
        self.tl.line(
            "audit",
            f"mission-ledger audit verify → {self.tl.ok('ok')}: {result['events']} events, "
            f"{result['streams']} hash chains recomputed, no break",
        )
        self.report["audit"] = {"ok": True, "exit_code": 0, **result}

    # -- the end ----------------------------------------------------------------------------------

    async def shutdown(self) -> list[str]:
        """Stop every process: the Services first (they delete their streams), then the
        Authority. Returns what did not stop cleanly."""
        self.stopping = True
        problems = []
        for service in self.services:
            if service.child is None:
                continue
            code = await service.child.stop()
            deleted = any(line.get("status") == "stream-deleted" for line in service.child.lines)
            if code != 0:
                problems.append(f"{service.name} exited with status {code}")
            elif self.server is not None and self.server.running and not deleted:
                problems.append(f"{service.name} did not delete its stream")
        if self.server is not None:
            code = await self.server.stop()
            if code != 0:
                problems.append(f"the Authority exited with status {code}")
        return problems

    def kill_all(self) -> None:
        for child in self.children():
            child.signal(signal.SIGKILL)


# -- main -----------------------------------------------------------------------------------------


def summary(demo: Demo, elapsed: float) -> None:
    tl = demo.tl
    services = demo.report.get("services", {})
    columns = [column for column, _, _ in demo.expected_receipts("", "")]
    headers = {  # short headings: the parent is revoked, the child cascaded
        "mission-revoked (parent)": "parent revoked",
        "mission-cascaded (child)": "child cascaded",
        "session-revoked (parent)": "CAEP parent",
        "session-revoked (child)": "CAEP child",
    }
    width = max(len(s.name) for s in demo.services) + 2
    tl.write()
    tl.write(tl.bold("Summary: revoke-to-receiver latency"))
    header = f"  {'Service':<{width}}{'delivery':<18}" + "".join(
        f"{headers[c]:<16}" for c in columns
    )
    tl.write(tl.dim(header.rstrip()))
    for service in demo.services:
        figures = services[service.name]["latency_ms"]
        cells = "".join(f"{f'{figures[c]:.1f} ms':<16}" for c in columns)
        delivery = f"{service.mode} ({service.rfc})"
        tl.write(f"  {service.name:<{width}}{delivery:<18}{cells}".rstrip())
    tl.write(
        tl.dim(
            "  from the revocation's ledger commit (its event timestamp) to the Service holding\n"
            "  the verified SET, on this machine's clock"
        )
    )
    if any(line.get("resynced") for s in demo.services if s.child for line in s.child.lines):
        tl.write(
            tl.dim(
                "  (then re-read): the Services subscribed after these Missions were made, so the\n"
                "  first SET each saw of a Mission was beyond version 1, and it read the Mission\n"
                "  back (GET /missions/{id}) before relying on it. The read follows the receipt\n"
                "  measured, but SETs are handled in order: the child's waited for it"
            )
        )
    after = demo.report["checks"]["after"]
    reasons = ", ".join(f"{c['mission']} {c['reason']} ({c['state']})" for c in after)
    tl.write(f"  checks before: {tl.ok('allow')}; after: {tl.bad('deny')} — {reasons}")
    tl.write(f"  audit verify: {tl.ok('ok')}; finished in {elapsed:.1f} s")


async def main(args: argparse.Namespace) -> int:
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR") and not args.no_colour
    tl = Timeline(sys.stdout, colour=colour)
    work = Path(tempfile.mkdtemp(prefix="mission-ledger-demo-"))
    data = Path(args.data).resolve() if args.data else work / "var"
    logs = work / "logs"
    logs.mkdir()
    demo = Demo(args, tl, work, data, logs)

    tl.write(tl.bold("Mission ledger demo") + " — a revocation and its cascade, end to end")
    tl.write(f"  store: {data} (SQLite){'' if args.data else ', fresh'}")
    tl.write(f"  logs:  {logs}")
    tl.write()

    task = asyncio.current_task()
    assert task is not None
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if demo.stopping:  # a second Ctrl-C while stopping: no more patience
            demo.kill_all()
            return
        interrupted = True
        task.cancel()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)

    failure: str | None = None
    try:
        await demo.run()
    except asyncio.CancelledError:
        if not interrupted:
            raise
        task.uncancel()
    except DemoFailure as error:
        failure = str(error)
    except Exception as error:  # a bug or an unexpected answer: still stop everything
        failure = f"{type(error).__name__}: {error}"
    finally:
        problems = await demo.shutdown()
    failed = failure is not None or interrupted
    if not failed:
        tl.line("demo", f"every process stopped ({', '.join(c.name for c in demo.children())})")
        if problems:
            failure, demo.step = "; ".join(problems), "shutdown"
            failed = True
    demo.report.update(
        ok=not failed,
        step=demo.step,
        failure=failure,
        interrupted=interrupted,
        work_dir=str(work),
        kept=args.keep or (failure is not None and not interrupted),
        processes={c.name: c.process.pid for c in demo.children()},
    )
    if args.report:
        Path(args.report).write_text(json.dumps(demo.report, indent=2) + "\n", encoding="utf-8")

    if interrupted:
        tl.write(tl.bad(f"\ninterrupted during {demo.step}") + "; every process stopped")
    elif failure is not None:
        tl.write(tl.bad(f"\nFAILED during {demo.step}: ") + failure)
        if problems and demo.step != "shutdown":
            tl.write("while stopping: " + "; ".join(problems))
        for child in demo.children():
            tail = child.tail()
            if tail:
                tl.write(tl.dim(tail))
    else:
        summary(demo, time.time() - tl.start)

    keep = bool(demo.report["kept"])
    if keep:
        tl.write(f"kept: {work}" + ("" if args.data else " (store in var/, logs in logs/)"))
    else:
        shutil.rmtree(work, ignore_errors=True)
    if interrupted:
        return 130
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  scripts/demo\n  scripts/demo --keep\n  scripts/demo --caep "
        "--data /tmp/ml-demo",
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="use this SQLite store (created if absent, never deleted) instead of a fresh "
        "temporary one",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (store and logs) afterwards; it is always kept "
        "when a step fails",
    )
    parser.add_argument(
        "--caep",
        action="store_true",
        help="the Services also request CAEP session-revoked, and the demo waits for it",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="the longest any one step may take before the demo fails (default 20)",
    )
    parser.add_argument("--no-colour", "--no-color", action="store_true", help="plain output")
    parser.add_argument("--report", metavar="FILE", help="also write the outcome as JSON here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
