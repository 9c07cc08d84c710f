"""The Responses API through the gateway to real engines with the openai SDK: plain, streamed,
and the stateful parts. A stored response lives on the one worker that made it (vLLM keeps it in
that process's memory), so GET by id and `previous_response_id` must reach that worker, also
through another gateway replica: the model here has two workers."""

from __future__ import annotations

import openai
import pytest

from tests.e2e.conftest import RealStack

pytestmark = pytest.mark.e2e
# With two workers, an unpinned follow-up would reach the other worker half the time:
# eight stored responses leave a non-sticky gateway about one chance in 256 to pass.
STORED = 8


def client(real: RealStack, base: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=(base or real.gateway) + "/v1", api_key=real.key, max_retries=0)


def test_create_returns_a_completed_response_with_usage(real: RealStack) -> None:
    model = real.replicated_model.name
    response = client(real).responses.create(model=model, input="Say hello.", max_output_tokens=8)
    assert response.status == "completed" or response.status == "incomplete"
    assert response.model == model
    assert response.usage is not None
    assert 1 <= response.usage.output_tokens <= 8
    assert response.output_text is not None


def test_stream_relays_named_events_in_order(real: RealStack) -> None:
    model = real.replicated_model.name
    with client(real).responses.stream(
        model=model, input="Count to three.", max_output_tokens=8
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created"
    assert "response.output_text.delta" in kinds
    assert kinds[-1] == "response.completed"
    assert final.usage is not None
    assert final.usage.output_tokens >= 1


def test_stored_responses_are_found_through_another_replica(real: RealStack) -> None:
    model = real.replicated_model.name
    first, second = client(real), client(real, real.second_gateway)
    created = [
        first.responses.create(model=model, input=f"Note {i}.", max_output_tokens=4, store=True)
        for i in range(STORED)
    ]
    for response in created:
        found = second.responses.retrieve(response.id)
        assert found.id == response.id
        assert found.output_text == response.output_text


def test_previous_response_id_continues_on_the_same_worker(real: RealStack) -> None:
    model = real.replicated_model.name
    first, second = client(real), client(real, real.second_gateway)
    for i in range(STORED):
        opening = first.responses.create(
            model=model, input=f"Remember {i}.", max_output_tokens=4, store=True
        )
        follow_up = second.responses.create(
            model=model,
            input="And then?",
            previous_response_id=opening.id,
            max_output_tokens=4,
        )
        assert follow_up.previous_response_id == opening.id
        assert follow_up.usage is not None
        # The earlier turn is part of the prompt: more input tokens than the opening had.
        assert opening.usage is not None
        assert follow_up.usage.input_tokens > opening.usage.input_tokens


def test_unknown_response_id_is_not_found(real: RealStack) -> None:
    with pytest.raises(openai.NotFoundError):
        client(real).responses.retrieve("resp_0123456789abcdef0123456789abcdef")
