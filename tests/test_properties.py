"""Properties: a workflow survives a store round-trip; no sequence of API calls breaks the state machine."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import datetime, timedelta, timezone

import rq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from workflow_engine import InvalidTransition, Workflow, WorkflowEngine, WorkflowStatus
from workflow_engine.errors import DuplicateVote
from workflow_engine.models import compact_json, load_json, to_json, utcnow
from workflow_engine.status import TERMINAL, TRANSITIONS
from workflow_engine.stores import open_store

S = WorkflowStatus

# -- model <-> row ---------------------------------------------------------------
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(-(2.0**53), 2.0**53)  # jsonb turns larger integral floats into ints
    | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc)
)


@st.composite
def workflows(draw: st.DrawFn) -> Workflow:
    created = draw(times)
    return Workflow(
        id=uuid.uuid4().hex,
        workflow_type_id=draw(text.filter(str.strip)),
        status=draw(st.sampled_from(list(S))),
        created_by_agent=draw(st.none() | text),
        inputs=draw(st.dictionaries(text, json_values, max_size=5)),
        calculated_savings=draw(st.none() | st.dictionaries(text, json_values, max_size=3)),
        assigned_council_id=draw(st.none() | text),
        result=draw(json_values),
        error=draw(st.none() | text),
        attempts=draw(st.integers(0, 50)),
        created_at=created,
        updated_at=draw(times),
        started_at=draw(st.none() | times),
        finished_at=draw(st.none() | times),
        idempotency_key=draw(st.none() | st.just(uuid.uuid4().hex)),
        max_retries=draw(st.integers(0, 10)),
        retry_backoff=draw(st.floats(0, 100)),
        timeout=draw(st.none() | st.floats(0.001, 1000)),
        job_id=draw(st.none() | text),
    )


any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=any_json)
def test_the_stores_json_decoder_reads_what_json_loads_reads(value: object) -> None:
    written = to_json(value, "value")
    decoded = load_json(written)
    assert compact_json(decoded) == compact_json(json.loads(written))  # 1 and 1.0 told apart
    assert load_json(written.encode()) == decoded


def test_the_stores_json_decoder_falls_back_to_json_loads_where_pydantics_parser_refuses() -> None:
    deep = "[" * 300 + "]" * 300  # past pydantic_core's nesting limit (about 200)
    assert load_json(deep) == json.loads(deep)
    lone = '"\ud800"'  # a str holding a lone surrogate: pydantic_core raises TypeError
    assert load_json(lone) == json.loads(lone) == "\ud800"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wf=workflows())
def test_a_workflow_survives_the_round_trip_through_every_store(database_url: str, wf: Workflow) -> None:
    store = open_store(database_url)
    try:
        [(_, created)] = store.insert([wf])
        assert created
        got = store.get(wf.id)
        assert got == wf
        assert got is not None and Workflow.model_validate(got.to_dict()) == wf
    finally:
        store.close()


# -- the state machine over the engine's API --------------------------------------
class EngineStateMachine(RuleBasedStateMachine):
    """Random create / enqueue / cancel / requeue / update_status / worker runs / crashes / reconciles."""

    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.engine = WorkflowEngine(database_url="sqlite:///:memory:", redis_url="fakeredis://")
        self.engine.register_handler("t", "state_machine_handlers:maybe_fail", max_retries=1, retry_backoff=0)
        self.engine.configure_council("c1", members=["ana", "bo", "cy"], quorum=2)
        self.known: dict[str, WorkflowStatus] = {}
        self.revived: set[str] = set()  # workflows a call was allowed to move out of a terminal state

    def teardown(self) -> None:
        self.engine.close()

    @rule(target=ids, fail=st.booleans())
    def create(self, fail: bool) -> str:
        wid = self.engine.create_workflow(workflow_type_id="t", inputs={"fail": fail})
        self.known[wid] = S.PENDING
        return wid

    @rule(target=ids, fail=st.booleans())
    def create_awaiting_approval(self, fail: bool) -> str:
        wid = self.engine.create_workflow(
            workflow_type_id="t", inputs={"fail": fail}, assigned_council_id="c1", requires_approval=True
        )
        self.known[wid] = S.AWAITING_APPROVAL
        return wid

    @rule(wid=ids, voter=st.sampled_from(["ana", "bo", "cy"]), approve=st.booleans(), change=st.booleans())
    def vote(self, wid: str, voter: str, approve: bool, change: bool) -> None:
        try:
            self.engine.vote(wid, voter_id=voter, approve=approve, change=change)
        except InvalidTransition:
            assert self.engine.get_workflow(wid).status is not S.AWAITING_APPROVAL
        except DuplicateVote:
            assert not change

    @rule(wid=ids)
    def enqueue(self, wid: str) -> None:
        try:
            self.engine.enqueue_execution(wid)
        except InvalidTransition:
            assert self.engine.get_workflow(wid).status in (S.RUNNING, S.AWAITING_APPROVAL, *TERMINAL)

    @rule(wid=ids, reason=st.none() | st.just("test"))
    def cancel(self, wid: str, reason: str | None) -> None:
        try:
            self.engine.cancel(wid, reason=reason)
        except InvalidTransition:
            assert self.engine.get_workflow(wid).status in TERMINAL

    @rule(wid=ids)
    def requeue(self, wid: str) -> None:
        self.revived.add(wid)
        try:
            self.engine.requeue(wid)
        except InvalidTransition:
            wf = self.engine.get_workflow(wid)
            events = self.engine.get_events(wid)
            never_approved = any(e.to_status is S.AWAITING_APPROVAL for e in events) and not any(
                e.from_status is S.AWAITING_APPROVAL and e.to_status is S.QUEUED for e in events
            )
            # Only a failed or cancelled workflow is requeued, and never one its council did not approve.
            assert wf.status not in (S.FAILED, S.CANCELLED) or (wf.status is S.CANCELLED and never_approved)

    @rule(wid=ids, status=st.sampled_from(list(S)))
    def update_status(self, wid: str, status: WorkflowStatus) -> None:
        if status is S.QUEUED:
            self.revived.add(wid)
        try:
            self.engine.update_status(wid, status.value)
        except InvalidTransition:
            pass

    @rule()
    def run_worker(self) -> None:
        rq.SimpleWorker([self.engine.queue], connection=self.engine.redis).work(burst=True)

    @rule(wid=ids)
    def worker_crashes_after_claiming(self, wid: str) -> None:
        wf = self.engine.get_workflow(wid)
        if wf.status is not S.QUEUED or wf.job_id is None:
            return
        old = utcnow() - timedelta(seconds=self.engine.stale_after + 1)
        claimed = self.engine.store.claim(
            wid, job_id=wf.job_id, worker="doomed", now=old, lease_until=self.engine.lease_from(old)
        )
        assert claimed is not None

    @rule()
    def reconcile(self) -> None:
        self.engine.reconcile()

    @rule()
    def redis_forgets_everything(self) -> None:
        self.engine.redis.flushall()

    @invariant()
    def every_status_change_has_its_event_and_follows_the_table(self) -> None:
        for wid in self.known:
            wf = self.engine.get_workflow(wid)
            events = self.engine.get_events(wid)
            assert events[0].from_status is None and events[0].to_status in (S.PENDING, S.AWAITING_APPROVAL)
            for before, after in itertools.pairwise(events):
                assert after.from_status == before.to_status, (before, after)
                if after.from_status != after.to_status:
                    assert after.to_status in TRANSITIONS[after.from_status], after
            assert events[-1].to_status == wf.status

    @invariant()
    def a_terminal_workflow_stays_terminal_unless_requeued(self) -> None:
        for wid, before in self.known.items():
            now = self.engine.get_workflow(wid).status
            if before in TERMINAL and now != before:
                assert wid in self.revived and before is not S.COMPLETED, (wid, before, now)
            self.known[wid] = now
        self.revived.clear()


EngineStateMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
)
test_the_engine_state_machine = EngineStateMachine.TestCase
