"""gpt-serve at the HTTP level, for what OpenAI's client cannot send or see: malformed bodies,
limits, overload, a client that goes away mid-stream, CORS and the metrics' text."""
from __future__ import annotations

import json
import socket

import httpx
import pytest

from gpt.serve.api import Limits
from gpt.serve.middleware import route_of
from tests.live_server import LONG, LiveServer

pytestmark = pytest.mark.usefixtures("one_thread")
TIMEOUT_S = 30


def post(server, body: bytes | dict, **headers) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + "/v1/completions", content=content, timeout=TIMEOUT_S,
                      headers={"Content-Type": "application/json", **headers})


def assert_error(r: httpx.Response, status: int, *fragments: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for fragment in fragments:
        assert fragment in error["message"]
    return error


@pytest.mark.parametrize("body, fragments", [
    (b'{"prompt": "the ",', ["not valid JSON"]),
    (b"", ["needs a JSON body"]),
    (b'["the "]', ["body"]),
    (b'{"prompt": 5}', ["prompt must be a string or a list of strings"]),
    (b'{"prompt": [1, 2]}', ["prompt must be a string or a list of strings"]),
    (b'{"prompt": "a", "max_tokens": 2.5}', ["max_tokens"]),
    (b'{"prompt": "a", "stream": "yes"}', ["stream"]),
    (b'{"prompt": "a", "n": 0}', ["n must be"]),
    (b'{"prompt": "a", "temperature": 1e400}', ["temperature"]),
    (b'{"prompt": [], "max_tokens": 3}', ["empty list"]),
    (b'{"prompt": "h\\u00e9llo \\ud800 x", "echo": true}', ["prompt holds a lone surrogate"]),  # no UTF-8 echo
    (b'{"prompt": ["a", "\\udfff"], "stream": true, "echo": true}', ["prompt holds a lone surrogate"]),
    (b'{"prompt": "a", "stop": "\\ud800"}', ["stop holds a lone surrogate"]),
    (b'{"prompt": "a", "stream_options": {"include_usage": true}}', ["stream_options is only allowed when stream"]),
])
def test_a_malformed_or_mistyped_body_is_a_400_json_error(server, body, fragments):
    assert_error(post(server, body), 400, *fragments)


def test_null_for_an_optional_field_is_its_default_as_in_openais_api(server):
    nulls = dict.fromkeys(["model", "max_tokens", "temperature", "top_p", "top_k", "stop", "n", "stream", "echo",
                           "stream_options", "best_of", "logprobs", "presence_penalty", "frequency_penalty",
                           "logit_bias", "suffix", "user", "ignore_eos"])
    plain = post(server, {"prompt": "the ", "seed": 3})
    with_nulls = post(server, {"prompt": "the ", "seed": 3, **nulls})
    assert plain.status_code == with_nulls.status_code == 200, with_nulls.text
    assert with_nulls.json()["choices"] == plain.json()["choices"]
    streamed = post(server, {"prompt": "the ", "stream": True, "stream_options": {"include_usage": None}})
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")  # nested nulls too


def test_without_max_tokens_a_request_gets_the_default_or_the_operators_limit_if_lower(serve_run):
    with LiveServer(serve_run, limits=Limits(max_tokens=5)) as live:
        r = post(live, {"prompt": "the ", "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 5


def test_a_trailing_slash_is_an_unknown_route_and_health_answers_head(server):
    assert_error(httpx.post(server.url + "/v1/completions/", json={"prompt": "a"}, timeout=TIMEOUT_S), 404)
    assert httpx.head(server.url + "/health", timeout=TIMEOUT_S).status_code == 200


def test_a_json_body_sent_as_another_content_type_is_a_400_naming_it(server):
    assert_error(post(server, {"prompt": "a", "max_tokens": 2}, **{"Content-Type": "text/plain"}), 400,
                 "must be JSON, sent with Content-Type: application/json", "'text/plain'")


def test_a_json_body_sent_without_a_content_type_is_a_400_saying_so(server):
    r = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "a", "max_tokens": 2}', timeout=TIMEOUT_S)
    assert "content-type" not in r.request.headers
    assert_error(r, 400, "must be JSON, sent with Content-Type: application/json", "without a Content-Type")


def test_a_body_over_the_limit_is_a_413(serve_run):
    def chunked(body: dict) -> httpx.Response:  # no Content-Length: the body is counted as it comes
        raw = json.dumps(body).encode()
        return httpx.post(live.url + "/v1/completions", content=iter([raw[:40], raw[40:]]), timeout=TIMEOUT_S,
                          headers={"Content-Type": "application/json"})

    with LiveServer(serve_run, max_batch=1, max_body=200) as live:
        assert_error(post(live, {"prompt": "a" * 500}), 413, "200 bytes")
        assert_error(chunked({"prompt": "a" * 500}), 413, "200 bytes")
        assert post(live, {"prompt": "a", "max_tokens": 2}).status_code == 200
        assert chunked({"prompt": "a" * 50, "max_tokens": 2}).status_code == 200


def test_an_unknown_route_is_a_404_json_error(server):
    assert_error(httpx.get(server.url + "/v1/chat/completions", timeout=TIMEOUT_S), 404)
    assert_error(httpx.get(server.url + "/v1/models/other", timeout=TIMEOUT_S), 404, "other")


def test_a_full_queue_answers_429_with_retry_after_and_memory_stays_bounded(serve_run):
    long = {"prompt": "the ", "max_tokens": LONG, "ignore_eos": True, "stream": True}
    with LiveServer(serve_run, max_batch=1, max_waiting=1) as live, httpx.Client(timeout=TIMEOUT_S) as http:
        with http.stream("POST", live.url + "/v1/completions", json=long) as running:
            lines = running.iter_lines()  # held: a dropped iterator closes the connection
            next(lines)  # in the only slot
            with http.stream("POST", live.url + "/v1/completions", json=long) as waiting:
                assert live.wait_for(lambda: live.served.engine.load() == (1, 1))
                busy = post(live, {"prompt": "a", "max_tokens": 2})
                assert_error(busy, 429, "busy")
                assert busy.headers["retry-after"] == "1"
                assert live.served.engine.load() == (1, 1)  # the refused request holds nothing
                assert waiting.status_code == 200


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    request = json.dumps({"prompt": "the ", "max_tokens": LONG, "ignore_eos": True, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as raw:
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(request)).encode() + b"\r\n\r\n" + request)
        received = b""
        while b"data: " not in received:
            received += raw.recv(4096)
        assert server.served.engine.load()[0] == 1
    assert server.wait_for(lambda: server.served.engine.load() == (0, 0))
    assert server.wait_for(lambda: server.metric('gpt_serve_completions_total{reason="cancelled"}') >= 1)


def test_cors_is_off_unless_an_origin_is_allowed(server, serve_run):
    preflight = {"Origin": "http://example.test", "Access-Control-Request-Method": "POST"}
    r = httpx.options(server.url + "/v1/completions", headers=preflight, timeout=TIMEOUT_S)
    assert "access-control-allow-origin" not in r.headers
    with LiveServer(serve_run, max_batch=1, cors_origins=("http://example.test",)) as live:
        r = httpx.options(live.url + "/v1/completions", headers=preflight, timeout=TIMEOUT_S)
        assert r.headers["access-control-allow-origin"] == "http://example.test"


def test_a_models_route_is_counted_as_one_route_and_unknown_paths_as_other():
    assert route_of("/v1/models/tiny") == route_of("/v1/models/other") == "/v1/models/{id}"
    assert route_of("/v1/models") == "/v1/models" and route_of("/v1/models/a/b") == route_of("/v1/nope") == "other"


def test_the_metrics_count_requests_tokens_and_latencies(serve_run):
    with LiveServer(serve_run, max_batch=4) as live:
        assert post(live, {"prompt": "the ", "max_tokens": 12, "temperature": 0, "n": 2}).status_code == 200
        assert_error(post(live, {"prompt": "a", "top_p": 2}), 400)
        text = httpx.get(live.url + "/metrics", timeout=TIMEOUT_S).text
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples['gpt_serve_requests_total{route="/v1/completions",status="200"}'] == 1
    assert samples['gpt_serve_requests_total{route="/v1/completions",status="400"}'] == 1
    assert samples["gpt_serve_prompt_tokens_total"] == 4
    assert samples["gpt_serve_generated_tokens_total"] == 24
    assert samples['gpt_serve_completions_total{reason="length"}'] == 2
    assert samples["gpt_serve_time_to_first_token_seconds_count"] == 1
    assert samples["gpt_serve_time_per_output_token_seconds_count"] == 2
    assert samples["gpt_serve_request_duration_seconds_count"] == 1
    for gauge in ("gpt_serve_queue_depth", "gpt_serve_active_sequences", "gpt_serve_batch_occupancy"):
        assert gauge in samples


def test_max_tokens_is_capped_by_the_operator(serve_run):
    with LiveServer(serve_run, max_batch=1, limits=Limits(max_tokens=10)) as live:
        assert_error(post(live, {"prompt": "a", "max_tokens": 11}), 400, "10")
        assert post(live, {"prompt": "a", "max_tokens": 10}).json()["usage"]["completion_tokens"] <= 10


def test_the_page_is_served_whole_with_nothing_from_elsewhere(server):
    r = httpx.get(server.url + "/", timeout=TIMEOUT_S)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="prompt"' in r.text and 'id="stop"' in r.text
    for outside in ("http://", "https://", "//cdn", "src=\"//"):
        assert outside not in r.text


def test_more_beams_than_the_search_allows_is_a_400_even_where_the_operator_allows_more(serve_run):
    from gpt.sample.beam import MAX_BEAMS

    with LiveServer(serve_run, max_batch=1, limits=Limits(max_tokens=10, max_n=MAX_BEAMS + 1)) as live:
        r = httpx.post(live.url + "/v1/completions", timeout=TIMEOUT_S,
                       json={"prompt": "a", "max_tokens": 2, "best_of": MAX_BEAMS + 1})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "best_of" and str(MAX_BEAMS) in r.json()["error"]["message"]


def send_raw(port: int, body: dict) -> socket.socket:
    """A request sent on a connection of its own, its answer left unread."""
    request = json.dumps(body).encode()
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(request)).encode() + b"\r\n\r\n" + request)
    return raw


ENDLESS_BEAMS = {"prompt": "the ", "max_tokens": LONG, "ignore_eos": True, "best_of": 4}  # runs until stopped


def test_a_beam_search_whose_client_goes_away_ends_and_frees_the_server(serve_run):
    with LiveServer(serve_run, max_batch=1) as live:
        with send_raw(live.port, ENDLESS_BEAMS):
            assert live.wait_for(lambda: live.served.beam_requests == 1)
        assert live.wait_for(lambda: live.served.beam_requests == 0)  # ended at its next step, not at a million tokens
        r = httpx.post(live.url + "/v1/completions", timeout=TIMEOUT_S,
                       json={"prompt": "a", "max_tokens": 3, "best_of": 2})
        assert r.status_code == 200 and len(r.json()["choices"]) == 1


def test_beam_searches_past_the_queue_are_a_429(serve_run):
    with LiveServer(serve_run, max_batch=1, max_waiting=1) as live:
        with send_raw(live.port, ENDLESS_BEAMS), send_raw(live.port, ENDLESS_BEAMS):  # one searching, one waiting
            assert live.wait_for(lambda: live.served.beam_requests == 2)
            assert_error(post(live, {"prompt": "a", "max_tokens": 3, "best_of": 2}), 429, "busy")
        assert live.wait_for(lambda: live.served.beam_requests == 0)


def test_a_beam_search_running_when_the_server_stops_is_answered_503(serve_run):
    with LiveServer(serve_run, max_batch=1) as live:
        with send_raw(live.port, ENDLESS_BEAMS) as raw:
            assert live.wait_for(lambda: live.served.beam_requests == 1)
            live.served.engine.stop()  # what the end of gpt-serve's --grace does
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                more = raw.recv(4096)
                if not more:
                    break
                answer += more
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert json.loads(body)["error"]["message"] == "the server is shutting down"


def test_a_model_id_with_a_slash_is_found_by_its_own_route(serve_run):
    with LiveServer(serve_run, name="org/tiny") as live:
        card = httpx.get(live.url + "/v1/models/org/tiny", timeout=TIMEOUT_S)
        assert card.status_code == 200 and card.json()["id"] == "org/tiny"
        assert_error(httpx.get(live.url + "/v1/models/org/other", timeout=TIMEOUT_S), 404, "org/other")
