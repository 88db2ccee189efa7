"""What a chat request needs from a model: images, video, tools, streaming.

The selector keeps only models whose config supports all of it, so a request with a picture never
reaches a text-only model. Pure and cheap: plain-text messages cost one type check each.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PART_CAPABILITY", "required_capabilities"]

# Content part types and the capability each needs; vendors differ in how they name video parts.
PART_CAPABILITY = {
    "image_url": "image",
    "input_image": "image",
    "video_url": "video",
    "input_video": "video",
    "video": "video",
}


def required_capabilities(body: dict[str, Any]) -> frozenset[str]:
    """The capabilities (subset of image, video, tools, streaming) a chat request body needs."""
    needs: set[str] = set()
    if body.get("stream") is True:
        needs.add("streaming")
    # "functions" is the older form of tools, still sent by some clients.
    if body.get("tools") or body.get("functions"):
        needs.add("tools")
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, list):
                continue
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(kind, str) and kind in PART_CAPABILITY:
                    needs.add(PART_CAPABILITY[kind])
    return frozenset(needs)
