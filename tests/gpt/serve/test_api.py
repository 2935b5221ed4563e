"""gpt-serve judged by OpenAI's own Python client: completions whole and streamed, stop
strings, n, several prompts, the models list, and the client's error types."""
from __future__ import annotations

import httpx
import openai
import pytest

from gpt.sample.sampling import SamplingOptions
from tests.live_server import LiveServer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def client(server):
    # no retries: a 429 or a 5xx must reach the test, not be retried behind its back
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_a_completion_has_its_text_finish_reason_and_usage(client):
    r = client.completions.create(model="tiny", prompt="the cat ", max_tokens=40, temperature=0.8, seed=3)
    assert r.object == "text_completion" and r.model == "tiny"
    [choice] = r.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length") and choice.text
    assert r.usage.prompt_tokens == len("the cat ")  # a character model: a token a character here
    assert 1 <= r.usage.completion_tokens <= 40
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_the_same_seed_gives_the_same_text(client):
    texts = {client.completions.create(model="tiny", prompt="a dog ", max_tokens=50, seed=11,
                                       extra_body={"top_k": 8}).choices[0].text for _ in range(2)}
    assert len(texts) == 1


def test_a_streamed_completion_is_the_whole_one_in_pieces(client):
    whole = client.completions.create(model="tiny", prompt="to be ", max_tokens=60, seed=5)
    chunks = list(client.completions.create(model="tiny", prompt="to be ", max_tokens=60, seed=5, stream=True))
    assert len(chunks) > 1
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_a_stream_can_end_with_its_usage(client):
    chunks = list(client.completions.create(model="tiny", prompt="the ", max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 4
    assert chunks[-1].usage.completion_tokens == 20


def test_a_stop_string_ends_the_text_before_it(client):
    free = client.completions.create(model="tiny", prompt="the ", max_tokens=80, temperature=0).choices[0].text
    stop = next(c for c in free[5:] if c.strip())  # a character the free text has, past its start
    r = client.completions.create(model="tiny", prompt="the ", max_tokens=80, temperature=0, stop=[stop, "zzz"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == free[: free.index(stop)]


def test_n_completions_are_indexed_and_differ(client):
    r = client.completions.create(model="tiny", prompt="a ", max_tokens=30, n=3, seed=1, temperature=1.2)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.text for c in r.choices}) == 3


def test_several_prompts_get_their_completions_in_order(client):
    greedy = dict(model="tiny", max_tokens=25, temperature=0)
    each = [client.completions.create(prompt=p, **greedy).choices[0].text for p in ("the cat ", "to be ")]
    together = client.completions.create(prompt=["the cat ", "to be "], n=2, **greedy)
    assert [c.text for c in together.choices] == [each[0], each[0], each[1], each[1]]


def test_the_models_list_names_the_served_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


@pytest.mark.parametrize("fields", [
    dict(temperature=-0.5), dict(top_p=0.0), dict(max_tokens=-1), dict(max_tokens=10**7),
    dict(extra_body={"top_k": 0}), dict(extra_body={"no_such_field": 1}), dict(stop=[""]),
    dict(prompt="x" * 65), dict(logprobs=2), dict(extra_body={"max_tokens": "5"}),
])
def test_a_bad_request_is_a_bad_request_error_naming_what_is_wrong(client, fields):
    kwargs = {"model": "tiny", "prompt": "the ", "max_tokens": 5, **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**kwargs)
    assert caught.value.status_code == 400
    error = caught.value.body
    assert error["type"] == "invalid_request_error" and error["message"]


def test_an_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-4", prompt="the ", max_tokens=5)
    assert "gpt-4" in caught.value.body["message"] and "tiny" in caught.value.body["message"]


def test_a_prompt_outside_the_vocabulary_is_encoded_as_gpt_sample_does(client, server):
    r = client.completions.create(model="tiny", prompt="東京 ", max_tokens=5, temperature=0)
    expected = server.served.generator.encode_prompt("東京 ")
    assert r.usage.prompt_tokens == len(expected) > len("東京 ")  # byte fallback: a token per byte


def test_with_an_api_key_every_route_but_health_needs_it(serve_run):
    with LiveServer(serve_run, max_batch=2, api_key="s3cret") as live:
        keyless = openai.OpenAI(base_url=live.url + "/v1", api_key="wrong", max_retries=0, timeout=30)
        with pytest.raises(openai.AuthenticationError):
            keyless.completions.create(model="tiny", prompt="a", max_tokens=3)
        with pytest.raises(openai.AuthenticationError):
            keyless.models.list()
        keyed = openai.OpenAI(base_url=live.url + "/v1", api_key="s3cret", max_retries=0, timeout=30)
        assert keyed.completions.create(model="tiny", prompt="a", max_tokens=3).choices[0].text is not None
        assert keyed.models.list().data[0].id == "tiny"
        assert httpx.get(live.url + "/health").status_code == 200
        assert httpx.get(live.url + "/metrics").status_code == 401
        assert httpx.get(live.url + "/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_best_of_is_beam_search_returning_the_n_best(client, server):
    r = client.completions.create(model="tiny", prompt="the ", max_tokens=20, best_of=4, n=2)
    expected = server.served.generator.beam("the ", SamplingOptions(max_new_tokens=20), beams=4, count=2)
    assert [c.text for c in r.choices] == [text for text, _, _ in expected]
    assert [c.finish_reason for c in r.choices] == ["stop" if stopped else "length" for _, _, stopped in expected]
    assert r.usage.completion_tokens == sum(tokens for _, tokens, _ in expected)


@pytest.mark.parametrize("fields", [dict(best_of=1, n=2), dict(best_of=3, stream=True)])
def test_best_of_below_n_or_streamed_is_refused(client, fields):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="a", max_tokens=5, **fields)
