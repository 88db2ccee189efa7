import pytest

from app.capabilities import required_capabilities


def user(*parts):
    return {"role": "user", "content": list(parts)}


TEXT = {"type": "text", "text": "What is this?"}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}

CASES = {
    "plain text": ({"messages": [{"role": "user", "content": "Hi"}]}, set()),
    "text parts only": ({"messages": [user(TEXT)]}, set()),
    "image_url part": ({"messages": [user(TEXT, IMAGE)]}, {"image"}),
    "image in an earlier turn": (
        {"messages": [user(IMAGE), {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "More"}]},
        {"image"},
    ),
    "video_url part": (
        {"messages": [user({"type": "video_url", "video_url": {"url": "https://v.test/a.mp4"}})]},
        {"video"},
    ),
    "input_video part": ({"messages": [user({"type": "input_video", "video_url": "https://v.test/a.mp4"})]}, {"video"}),
    "video part": ({"messages": [user({"type": "video", "video": {"url": "https://v.test/a.mp4"}})]}, {"video"}),
    "non-empty tools": ({"messages": [], "tools": [{"type": "function", "function": {"name": "f"}}]}, {"tools"}),
    "empty tools": ({"messages": [], "tools": []}, set()),
    "legacy functions": ({"messages": [], "functions": [{"name": "f"}]}, {"tools"}),
    "stream true": ({"messages": [], "stream": True}, {"streaming"}),
    "stream false": ({"messages": [], "stream": False}, set()),
    "stream as a string is not a stream": ({"messages": [], "stream": "true"}, set()),
    "everything": (
        {
            "stream": True,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [user(IMAGE, {"type": "video_url", "video_url": {"url": "x"}})],
        },
        {"image", "video", "tools", "streaming"},
    ),
    "odd shapes are ignored": (
        {"messages": ["not a message", {"content": [None, {"type": ["x"]}, {"no": "type"}]}, {"content": 5}]},
        set(),
    ),
    "no messages at all": ({}, set()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_required_capabilities_follow_the_request_body(case):
    body, expected = CASES[case]
    assert required_capabilities(body) == frozenset(expected)
