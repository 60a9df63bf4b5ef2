"""The pack's tokens route on ComfyUI's web server: the token view of a prompt before anything is queued.

``POST /attention_guidance/tokens`` with ``{"text": ..., "subjects": ..., "family": ...}`` (a family of
:mod:`.tokenizers`: ``sd1``, ``sd2``, ``sdxl``, ``flux``, ``chroma``) answers the :mod:`..subjects.token_view` dict (a
subject that is not in the prompt is the view's ``error``); a malformed request, an unknown family (SD3 included:
its sequence depends on the encoders loaded) or a prompt that cannot be tokenised answers 400 with ``{"error": ...}``.
The current frontend calls it under ``/api`` (ComfyUI serves every route there as well).
"""
from __future__ import annotations

import logging
import sys

from aiohttp import web

from ..subjects.token_view import token_view
from .tokenizers import family_sequence_tokens

TOKEN_ROUTE = "/attention_guidance/tokens"
logger = logging.getLogger("attention_guidance")


def view_for(family: str, text: str, subjects: str) -> dict:
    """The token view of ``text`` and ``subjects`` with the weightless tokenizer of ``family``; raises
    :class:`.tokenizers.UnknownFamilyError`, or ValueError when the prompt cannot be tokenised (as a node run would)."""
    return token_view(text, family_sequence_tokens(family, text), subjects, family)


async def handle_tokens(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        text, subjects, family = body["text"], body.get("subjects", ""), body["family"]
        if not all(isinstance(value, str) for value in (text, subjects, family)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": "send JSON {\"text\": str, \"subjects\": str, \"family\": str}"},
                                 status=400)
    try:
        return web.json_response(view_for(family, text, subjects))
    except ValueError as error:  # an unknown family, or a prompt the tokenizer refuses
        return web.json_response({"error": str(error)}, status=400)


def register_token_route() -> bool:
    """Add the route to the running ComfyUI server; False (nothing done) when ComfyUI runs without one, as in
    scripts and tests that import it as a library. ``main.py`` creates the server before it loads custom nodes."""
    server = sys.modules.get("server")
    prompt_server = getattr(getattr(server, "PromptServer", None), "instance", None)
    if prompt_server is None:
        return False
    prompt_server.routes.post(TOKEN_ROUTE)(handle_tokens)
    logger.debug("attention guidance: tokens route at %s", TOKEN_ROUTE)
    return True
