"""The tokens route (what the token view shows while the user types) against the nodes' own run, per tokenizer family.

The route tokenises with a weightless tokenizer of the family; the node with the CLIP it is given. Both must give the
same token view, so the page shows before a run exactly what the run will use.
"""
import asyncio
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import nodes
from devkit import comfy_host
from devkit.comfy_host import ag
from devkit.token_cases import CASES

route = ag("guidance.comfy_bridge.token_route")
tokenizers = ag("guidance.comfy_bridge.tokenizers")
common = ag("nodes.common")

FAMILIES = ("sd1", "sd2", "sdxl")
T5_FAMILIES = ("flux", "chroma")  # diffusion transformers that attend over T5 tokens alone


def run_picker(clip, prompt: str, subjects: str) -> dict:
    return nodes.NODE_CLASS_MAPPINGS["AG_TokenPicker"]().pick(clip, prompt, subjects)["ui"]["ag_token_view"][0]


def post(body) -> tuple[int, dict]:
    """POST ``body`` to the route through a real aiohttp server on loopback, as the page does."""
    async def call() -> tuple[int, dict]:
        app = web.Application()
        app.router.add_post(route.TOKEN_ROUTE, route.handle_tokens)
        async with TestClient(TestServer(app)) as client:
            response = await client.post(route.TOKEN_ROUTE, json=body)
            return response.status, await response.json()

    return asyncio.run(call())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt,subjects,expected", CASES, ids=[f"{c[0][:28]}|{c[1]}" for c in CASES])
def test_route_view_is_the_node_run_view(tiny, family, prompt, subjects, expected):
    at_run = run_picker(tiny(family).clip, prompt, subjects)
    assert at_run == route.view_for(family, prompt, subjects)
    assert at_run["family"] == family and at_run["error"] is None
    shown = {s["label"].lower(): (tuple(s["positions"]), {a["text"].lower(): tuple(a["positions"])
                                                           for a in s["attributes"]}) for s in at_run["subjects"]}
    assert shown == expected


@pytest.mark.parametrize("family", T5_FAMILIES)
@pytest.mark.parametrize("prompt,subjects", [("a red cube and a blue sphere", "red cube, blue sphere"),
                                             ("a t-shirt and a café", "t-shirt, café"),
                                             ("a red cat and a frog on a table, photorealistic", ""),
                                             ("a cat and a frog", "cat, dog")])
def test_route_view_is_the_node_run_view_on_t5(tiny_dit, family, prompt, subjects):
    clip = tiny_dit(family).clip
    try:
        at_run = run_picker(clip, prompt, subjects)
    except common.NodeInputError as error:  # the run stops where the view shows the error
        at_route = route.view_for(family, prompt, subjects)
        assert str(error) == f"Subject Token Picker: input 'subjects': {at_route['error']}"
        assert at_route["subjects"] == [] and at_route["words"]
        return
    assert at_run == route.view_for(family, prompt, subjects)
    assert at_run["family"] == family and at_run["error"] is None and at_run["subjects"]
    words = {word["text"]: word["pieces"] for word in at_run["words"]}
    assert all(piece and not piece.startswith("\u2581") for pieces in words.values() for piece in pieces)


def test_t5_view_positions_are_the_t5_sequence(tiny_dit):
    view = route.view_for("flux", "a red cube and a blue sphere", "red cube, blue sphere")
    assert view["token_count"] == 256  # FLUX pads T5 to 256; Chroma does not pad
    assert route.view_for("chroma", "a red cube", "cube")["token_count"] == 6  # ▁ a ▁red ▁cu be </s>
    assert [(w["text"], w["positions"], w["pieces"]) for w in view["words"]][2:4] == [
        ("cube", [3, 4], ["cu", "be"]), ("and", [5], ["and"])]
    assert [(s["label"], s["positions"], s["attributes"]) for s in view["subjects"]] == [
        ("cube", [3, 4], [{"text": "red", "positions": [2]}]), ("sphere", [10], [{"text": "blue", "positions": [8]}])]


@pytest.mark.parametrize("family", FAMILIES)
def test_route_over_http_answers_the_node_run_view(tiny, family):
    prompt, subjects = "a red apple and a sombrero", "red apple, sombrero"
    status, body = post({"text": prompt, "subjects": subjects, "family": family})
    assert status == 200
    assert body == run_picker(tiny(family).clip, prompt, subjects)
    assert [word["pieces"] for word in body["words"]] == [["a"], ["red"], ["apple"], ["and"], ["a"], ["som", "brero"]]


def test_text_encode_shows_the_same_view_as_the_picker(tiny):
    clip = tiny("sdxl").clip
    encoded = nodes.NODE_CLASS_MAPPINGS["AG_TextEncodeWithTokens"]().encode(clip, "a cat and a frog", "cat, frog")
    assert encoded["ui"]["ag_token_view"][0] == run_picker(clip, "a cat and a frog", "cat, frog")
    assert encoded["ui"]["text"][0].startswith("Subjects (from the subjects input):")


def test_automatic_picks_are_in_the_view(tiny):
    prompt = "a red cat and a frog on a table, photorealistic"
    at_run = run_picker(tiny("sd1").clip, prompt, "")
    assert at_run == route.view_for("sd1", prompt, "")
    assert at_run["auto_picked"]
    assert [(s["label"], s["attributes"]) for s in at_run["subjects"]] == [
        ("cat", [{"text": "red", "positions": [2]}]), ("frog", []), ("table", [])]


def test_a_missing_subject_is_the_views_error_with_the_nodes_message(tiny):
    status, body = post({"text": "a cat and a frog", "subjects": "cat, dog", "family": "sd1"})
    assert status == 200 and body["subjects"] == []
    assert [word["text"] for word in body["words"]] == ["a", "cat", "and", "a", "frog"]
    with pytest.raises(common.NodeInputError) as raised:
        nodes.NODE_CLASS_MAPPINGS["AG_TokenPicker"]().pick(tiny("sd1").clip, "a cat and a frog", "cat, dog")
    assert str(raised.value) == f"Subject Token Picker: input 'subjects': {body['error']}"
    assert body["error"].startswith("subject 'dog': it is not in the prompt.")


@pytest.mark.parametrize("body,message", [
    ({"text": "a cat", "subjects": "cat", "family": "pixart"},
     r"no tokenizer for the family 'pixart'.*sd1, sd2, sdxl, flux, chroma"),
    ({"text": "a cat", "subjects": "cat", "family": "sd3"}, r"does not tokenise SD3 / SD3.5 prompts before a run"),
    ({"text": "a cat", "subjects": "cat"}, r"send JSON"),
    ({"text": 3, "subjects": "cat", "family": "sd1"}, r"send JSON"),
    (["a cat"], r"send JSON"),
])
def test_bad_requests_answer_400_with_the_reason(body, message):
    status, answer = post(body)
    assert status == 400 and re.search(message, answer["error"])


def test_a_clip_of_another_tokenizer_has_no_family(tiny):
    class OtherClip:
        tokenizer = object()

    assert tokenizers.clip_family(OtherClip()) is None
    assert [tokenizers.clip_family(tiny(family).clip) for family in FAMILIES] == list(FAMILIES)


def test_dit_clips_have_their_family_and_sd3_none(tiny_dit):
    assert [tokenizers.clip_family(tiny_dit(family).clip) for family in T5_FAMILIES] == list(T5_FAMILIES)
    assert tokenizers.clip_family(tiny_dit("sd3").clip) is None  # the route refuses SD3; a run shows its view


@pytest.mark.skipif(comfy_host.has_dit(), reason="the current host has T5 tokenizers")
def test_a_host_without_t5_tokenizers_says_so():
    status, answer = post({"text": "a cat", "subjects": "cat", "family": "flux"})
    assert status == 400 and answer["error"].startswith("this ComfyUI has no flux tokenizer")


def test_without_a_web_server_the_route_is_not_registered():
    assert route.register_token_route() is False  # the pack imports as a library (as here) without a server
