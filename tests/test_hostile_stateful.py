"""The hostile fuzzer's stateful mode (issue 17; tests/test_hostile_fuzz.py fuzzes each
route on its own): a hypothesis state machine drives the stored Responses API on the
session's real server (tiny model) through sequences of create (stored or not, streamed
or not, continuing a stored, deleted or made-up `previous_response_id`), GET and DELETE,
with ids that exist, were deleted, were never stored, or are made up.

After every step: no 5xx, every error in OpenAI's error form, and the store agrees with
the model of it kept here: a stored response GETs back byte-for-byte as created (also
once its parent is deleted: a stored conversation is self-contained), a deleted or
unstored id stays 404 for GET, DELETE and as `previous_response_id`, and a continuation
sees its history (more input tokens than the response it continues).
"""

from __future__ import annotations

import collections
import json
from typing import Any
from urllib.parse import quote

import httpx
import hypothesis
import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

MAX_TOKENS = 3  # the tiny model's answers: short, the run measures the store
TEXTS = st.sampled_from(["hi", "Weather in Paris?", "ünïcödé ✓", "a " * 40, '{"x": [1]}'])
# Made-up ids: anything a client may put in a path segment, percent-encoded ('/', '?',
# '#', '%' and lone surrogates aside: they are another route or not encodable), not "."
# or "..".
MADE_UP = st.text(
    st.characters(blacklist_characters="/?#%", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip(".") != "" and s.strip() == s)


def _events(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[len("data: ") :])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


class ResponsesStore(RuleBasedStateMachine):
    stored = Bundle("stored")  # ids GET must answer, with the body created
    gone = Bundle("gone")  # ids deleted or never stored: 404 from now on

    def __init__(self, http: httpx.Client, counts: collections.Counter[int]) -> None:
        super().__init__()
        self.http = http
        self.counts = counts
        self.bodies: dict[str, dict[str, Any]] = {}  # id -> the response as created
        self.dead: set[str] = set()

    def _check(self, response: httpx.Response) -> httpx.Response:
        self.counts[response.status_code] += 1
        assert response.status_code < 500, response.text[:500]
        if response.status_code >= 400:
            error = response.json()["error"]
            assert {"message", "type", "param", "code"} <= set(error), response.text
        return response

    def _create(self, text: str, store: bool, stream: bool, previous: str | None) -> Any:
        body: dict[str, Any] = {
            "model": "tiny",
            "input": text,
            "max_output_tokens": MAX_TOKENS,
            "store": store,
            "stream": stream,
        }
        if previous is not None:
            body["previous_response_id"] = previous
        r = self._check(self.http.post("/v1/responses", json=body))
        if r.status_code != 200:
            return r.status_code, None
        if not stream:
            return 200, r.json()
        events = _events(r.text)
        assert events[0]["type"] == "response.created", events[:2]
        last = events[-1]
        assert last["type"] in ("response.completed", "response.incomplete"), last
        return 200, last["response"]

    def _keep(self, response: dict[str, Any], store: bool) -> Any:
        if store:
            self.bodies[response["id"]] = response
            return response["id"]
        self.dead.add(response["id"])
        return hypothesis.stateful.multiple()

    @rule(target=stored, text=TEXTS, stream=st.booleans())
    def create(self, text: str, stream: bool) -> Any:
        status, response = self._create(text, True, stream, None)
        assert status == 200
        return self._keep(response, True)

    @rule(target=gone, text=TEXTS, stream=st.booleans())
    def create_unstored(self, text: str, stream: bool) -> Any:
        status, response = self._create(text, False, stream, None)
        assert status == 200
        self.dead.add(response["id"])
        return response["id"]

    @rule(target=stored, previous=stored, text=TEXTS, store=st.booleans())
    def continue_stored(self, previous: str, text: str, store: bool) -> Any:
        status, response = self._create(text, store, False, previous)
        if status == 400:  # the history outgrew the tiny model's context: a clean 400
            return hypothesis.stateful.multiple()
        assert status == 200
        before = self.bodies[previous]["usage"]["input_tokens"]
        assert response["usage"]["input_tokens"] > before  # it saw the history
        return self._keep(response, store)

    @rule(previous=st.one_of(gone, MADE_UP), text=TEXTS, stream=st.booleans())
    def continue_missing(self, previous: str, text: str, stream: bool) -> None:
        status, _ = self._create(text, True, stream, previous)
        assert status == 404

    @rule(response_id=stored)
    def get(self, response_id: str) -> None:
        r = self._check(self.http.get(f"/v1/responses/{response_id}"))
        assert r.status_code == 200
        assert r.json() == self.bodies[response_id]

    @rule(target=gone, response_id=consumes(stored))
    def delete(self, response_id: str) -> str:
        r = self._check(self.http.delete(f"/v1/responses/{response_id}"))
        assert r.status_code == 200 and r.json()["deleted"] is True
        del self.bodies[response_id]
        self.dead.add(response_id)
        return response_id

    @rule(response_id=st.one_of(gone, MADE_UP), method=st.sampled_from(["GET", "DELETE"]))
    def missing(self, response_id: str, method: str) -> None:
        if response_id in self.bodies:  # a made-up id that exists: vanishingly rare
            return
        r = self._check(self.http.request(method, f"/v1/responses/{quote(response_id, safe='')}"))
        assert r.status_code == 404, (method, response_id, r.text)
        assert r.json()["error"]["code"] == "not_found"

    @invariant()
    def deleted_stays_deleted(self) -> None:
        assert not self.dead & set(self.bodies)


@pytest.mark.timeout(600)
def test_stateful_responses_store(server_url):
    counts: collections.Counter[int] = collections.Counter()
    settings = hypothesis.settings(
        max_examples=6,
        stateful_step_count=10,
        deadline=None,
        database=None,
        derandomize=True,  # the same sequences every run: a failure reproduces
        suppress_health_check=list(HealthCheck),
    )
    with httpx.Client(base_url=server_url, timeout=120) as http:
        run_state_machine_as_test(lambda: ResponsesStore(http, counts), settings=settings)
        assert http.get("/health").status_code == 200
    sent = sum(counts.values())
    print(f"\nstateful fuzz: {sent} requests; statuses {dict(sorted(counts.items()))}")
    assert sent >= 30
    assert counts[200] and counts[404]  # both sides of the store were exercised
