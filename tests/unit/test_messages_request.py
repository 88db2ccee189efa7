"""Messages requests as chat: the chat body each becomes, per configured model, and the token estimate."""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

import pytest

from app.catalog import Model
from app.messages.count import (
    AUDIO_BYTES_PER_TOKEN,
    IMAGE_TOKENS,
    PDF_PAGE_TOKENS,
    VIDEO_BYTES_PER_TOKEN,
    VIDEO_TOKENS,
    estimate_input_tokens,
)
from app.messages.request import ToolNames, for_model, to_chat_request
from app.messages.schema import validate_messages_request
from app.schemas import validate_chat_request

TOOL = {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object"}}
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
PNG_URL = "data:image/png;base64,iVBORw0KGgo="
USE = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}
MCP_NAME = "mcp__claude_ai_Google_Drive__search_documents_by_title_and_content_in_shared_drives"


def translate(**fields: Any) -> dict[str, Any]:
    body = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}], **fields}
    validate_messages_request(body)
    chat = to_chat_request(body).chat
    # Whatever the translation makes, the router's own chat validation accepts.
    validate_chat_request(chat)
    return chat


def messages_of(*messages: dict[str, Any], **fields: Any) -> list[dict[str, Any]]:
    return translate(messages=list(messages), **fields)["messages"]


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def test_minimal_request_becomes_model_messages_and_max_completion_tokens():
    assert translate() == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 100,
    }


def test_fields_with_no_chat_counterpart_are_not_sent():
    chat = translate(
        metadata={"user_id": "u"},
        top_k=5,
        service_tier="auto",
        context_management={"edits": []},
        mcp_servers=[],
        unknown_field=1,
        system=[{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
        tools=[{**TOOL, "cache_control": {"type": "ephemeral"}, "defer_loading": True}],
    )
    assert set(chat) == {"model", "messages", "tools", "max_completion_tokens"}
    assert chat["messages"][0] == {"role": "system", "content": "S"}
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {"name": "Bash", "description": "Run a command", "parameters": {"type": "object"}},
        }
    ]


def test_sampling_stop_sequences_and_streaming_map_to_chat_names():
    chat = translate(temperature=0.2, top_p=0.9, stop_sequences=["END", "STOP"], stream=True)
    assert chat["temperature"] == 0.2 and chat["top_p"] == 0.9
    assert chat["stop"] == ["END", "STOP"]
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert "stop" not in translate(stop_sequences=[])


def test_system_text_and_system_role_messages_become_one_leading_system_message():
    # Claude Code sends part of its prompt as a system-role message after the first user turn.
    chat_messages = messages_of(
        user(text("List files")),
        {"role": "system", "content": [text("# Environment")]},
        {"role": "assistant", "content": "Sure."},
        {"role": "system", "content": "Be careful."},
        system=[text("You are Claude Code."), text("  "), text("Rules.")],
    )
    assert chat_messages == [
        {"role": "system", "content": "You are Claude Code.\n\nRules.\n\n# Environment\n\nBe careful."},
        {"role": "user", "content": [text("List files")]},
        {"role": "assistant", "content": "Sure."},
    ]
    assert messages_of({"role": "user", "content": "Hi"}, system="Be brief")[0] == {
        "role": "system",
        "content": "Be brief",
    }


def test_images_and_documents_become_image_url_file_and_text_parts():
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}
    (message,) = messages_of(
        user(
            text("Compare"),
            {"type": "image", "source": PNG},
            {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
            {"type": "document", "source": pdf, "title": "Q3 report"},
            {"type": "document", "source": pdf},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}, "title": "N"},
            {"type": "document", "source": {"type": "content", "content": [text("a"), text("b")]}},
        )
    )
    assert message["content"] == [
        text("Compare"),
        {"type": "image_url", "image_url": {"url": PNG_URL}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
        {"type": "file", "file": {"filename": "Q3 report.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
        {"type": "file", "file": {"filename": "document.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
        text("N\n\nnotes"),
        text("a\nb"),
    ]


def test_assistant_tool_use_becomes_tool_calls_with_ids_kept_and_json_arguments():
    _, assistant = messages_of(
        {"role": "user", "content": "Run ls and pwd"},
        {
            "role": "assistant",
            "content": [
                text("Running."),
                USE,
                {"type": "tool_use", "id": "toolu_2", "name": "Bash", "input": {"command": "pwd", "n": [1, "é"]}},
            ],
        },
        tools=[TOOL],
    )[:2]
    assert assistant == {
        "role": "assistant",
        "content": "Running.",
        "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "Bash", "arguments": '{"command":"ls"}'}},
            {
                "id": "toolu_2",
                "type": "function",
                "function": {"name": "Bash", "arguments": '{"command":"pwd","n":[1,"é"]}'},
            },
        ],
    }
    assert json.loads(assistant["tool_calls"][1]["function"]["arguments"]) == {"command": "pwd", "n": [1, "é"]}


def test_assistant_turn_of_only_tool_use_has_null_content():
    assistant = messages_of({"role": "user", "content": "Run"}, {"role": "assistant", "content": [USE]})[1]
    assert assistant["content"] is None and len(assistant["tool_calls"]) == 1


def test_bug13_tool_results_come_first_as_tool_messages_then_the_turns_text_and_images():
    """Chat wants tool messages right after the calls, then a user message: never the other way."""
    calls = {
        "role": "assistant",
        "content": [USE, {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"path": "a.png"}}],
    }
    chat_messages = messages_of(
        {"role": "user", "content": "Go"},
        calls,
        user(
            text("Here you go"),
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [text("a.txt"), text("b.txt")]},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "image", "source": PNG}]},
            {"type": "image", "source": PNG},
        ),
    )
    assert chat_messages[2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "a.txt\nb.txt"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "(The result is in the next user message.)"},
        {
            "role": "user",
            "content": [
                text("Here you go"),
                {"type": "image_url", "image_url": {"url": PNG_URL}},
                {"type": "image_url", "image_url": {"url": PNG_URL}},
            ],
        },
    ]


def test_tool_result_error_is_marked_and_string_or_empty_content_is_kept():
    chat_messages = messages_of(
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": [USE, {**USE, "id": "toolu_2"}, {**USE, "id": "toolu_3"}]},
        user(
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "command not found", "is_error": True},
            {"type": "tool_result", "tool_use_id": "toolu_2"},
            {"type": "tool_result", "tool_use_id": "toolu_3", "content": "ok", "is_error": False},
        ),
    )
    assert chat_messages[2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: command not found"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": ""},
        {"role": "tool", "tool_call_id": "toolu_3", "content": "ok"},
    ]


def test_bug9_thinking_blank_text_and_unknown_keys_of_history_never_reach_the_vendor():
    chat_messages = messages_of(
        {"role": "user", "content": [text("Hi"), text(""), text(" \n"), {**text("x"), "citations": [], "extra": 1}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "let me think", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                text("Hello"),
            ],
        },
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "only thoughts", "signature": "s"}]},
        {"role": "user", "content": "  "},
        {"role": "user", "content": "Next"},
    )
    assert chat_messages == [
        {"role": "user", "content": [text("Hi"), text("x")]},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Next"},
    ]


def test_bug12_consecutive_same_role_messages_are_not_merged_and_images_are_kept():
    chat_messages = messages_of(
        user({"type": "image", "source": PNG}),
        user(text("What is in it?"), {"type": "image", "source": PNG}),
        {"role": "assistant", "content": "A cat."},
        {"role": "assistant", "content": "A black one."},
    )
    assert [message["role"] for message in chat_messages] == ["user", "user", "assistant", "assistant"]
    images = [part for message in chat_messages[:2] for part in message["content"] if part["type"] == "image_url"]
    assert len(images) == 2


def test_tool_choice_and_parallel_calls_map_to_chat():
    def choice(**tool_choice):
        chat = translate(tools=[TOOL], tool_choice=tool_choice)
        return chat.get("tool_choice"), chat.get("parallel_tool_calls")

    assert choice(type="auto") == ("auto", None)
    assert choice(type="any") == ("required", None)
    assert choice(type="none") == ("none", None)
    assert choice(type="tool", name="Bash") == ({"type": "function", "function": {"name": "Bash"}}, None)
    assert choice(type="auto", disable_parallel_tool_use=True) == ("auto", False)
    assert choice(type="any", disable_parallel_tool_use=False) == ("required", None)
    # Without tools there is nothing to choose from: auto and none are chat's default anyway.
    assert "tool_choice" not in translate(tool_choice={"type": "auto"})


def test_bug11_tool_names_vendors_refuse_are_renamed_the_same_everywhere_and_mapped_back():
    odd = "search.docs"
    translated = to_chat_request(
        {
            "model": "m",
            "max_tokens": 10,
            "messages": [
                {"role": "user", "content": "Find"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": MCP_NAME, "input": {}}]},
                user({"type": "tool_result", "tool_use_id": "t1", "content": "none"}),
            ],
            "tools": [{**TOOL, "name": MCP_NAME}, {**TOOL, "name": odd}, TOOL],
            "tool_choice": {"type": "tool", "name": MCP_NAME},
        }
    )
    chat, names = translated.chat, translated.tool_names
    vendor_names = [tool["function"]["name"] for tool in chat["tools"]]
    assert vendor_names[2] == "Bash"  # a name vendors accept is kept
    for name in vendor_names:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name)
    assert len(set(vendor_names)) == 3
    assert vendor_names[0].startswith("mcp__claude_ai_Google_Drive__") and vendor_names[1].startswith("search_docs_")
    assert chat["messages"][1]["tool_calls"][0]["function"]["name"] == vendor_names[0]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": vendor_names[0]}}
    assert [names.client(name) for name in vendor_names] == [MCP_NAME, odd, "Bash"]
    # Deterministic: the next request of the conversation names the tool the same way.
    assert ToolNames.of([MCP_NAME]).vendor(MCP_NAME) == vendor_names[0]
    assert names.vendor(MCP_NAME) == vendor_names[0]


def test_renamed_tool_names_stay_unique_even_against_a_name_the_client_really_uses():
    first = ToolNames.of(["a.b"]).vendor("a.b")
    names = ToolNames.of(["a.b", first])
    assert names.vendor(first) == first
    assert names.vendor("a.b") != first
    assert names.client(names.vendor("a.b")) == "a.b"


def test_bug7_tool_choice_names_the_tool_as_the_vendor_knows_it():
    """The chosen tool is renamed with its tool: the vendor never hears of a tool it was not given."""
    chat = translate(tools=[{**TOOL, "name": MCP_NAME}], tool_choice={"type": "tool", "name": MCP_NAME})
    assert chat["tool_choice"]["function"]["name"] == chat["tools"][0]["function"]["name"]


@pytest.mark.parametrize(
    ("fields", "effort"),
    [
        ({}, None),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "low"),
        ({"thinking": {"type": "enabled", "budget_tokens": 4095}}, "low"),
        ({"thinking": {"type": "enabled", "budget_tokens": 4096}}, "medium"),
        ({"thinking": {"type": "enabled", "budget_tokens": 16383}}, "medium"),
        ({"thinking": {"type": "enabled", "budget_tokens": 16384}}, "high"),
        ({"thinking": {"type": "adaptive"}}, "medium"),
        ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}, "low"),
        ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}}, "high"),
        ({"output_config": {"effort": "high"}}, "high"),
        ({"output_config": {"effort": "medium"}}, "medium"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}, "output_config": {"effort": "high"}}, "high"),
        ({"thinking": {"type": "disabled"}}, "none"),
        ({"thinking": {"type": "disabled"}, "output_config": {"effort": "high"}}, "none"),
    ],
)
def test_thinking_and_effort_become_one_reasoning_effort(fields, effort):
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}], **fields}
    validate_messages_request(body)
    translated = to_chat_request(body)
    assert translated.effort == effort
    assert "reasoning_effort" not in translated.chat


PLAIN = Model("openai", "gpt-4o")
LIMITED_REASONER = Model("openai", "o4-mini", max_output_tokens=100_000, reasoning=True)


def test_for_model_sets_the_model_and_lowers_max_tokens_to_its_limit():
    translated = to_chat_request(
        {"model": "claude-opus-5-5", "max_tokens": 128000, "messages": [{"role": "user", "content": "x"}]}
    )
    assert for_model(translated, PLAIN)["max_completion_tokens"] == 128000
    chat = for_model(translated, LIMITED_REASONER)
    assert chat["model"] == "o4-mini" and chat["max_completion_tokens"] == 100_000
    assert translated.chat["model"] == "claude-opus-5-5"  # the translation itself is not changed
    small = to_chat_request({"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": "x"}]})
    assert for_model(small, LIMITED_REASONER)["max_completion_tokens"] == 50


def test_for_model_sends_reasoning_effort_only_to_models_that_support_it():
    translated = to_chat_request(
        {
            "model": "m",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "x"}],
            "thinking": {"type": "adaptive"},
        }
    )
    assert for_model(translated, LIMITED_REASONER)["reasoning_effort"] == "medium"
    assert "reasoning_effort" not in for_model(translated, PLAIN)
    no_thinking = to_chat_request({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]})
    assert "reasoning_effort" not in for_model(no_thinking, LIMITED_REASONER)


def test_structured_output_format_becomes_response_format():
    chat = translate(output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}})
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": {"type": "object"}},
    }


def test_input_token_estimate_counts_text_tools_images_and_pdf_pages():
    plain = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert estimate_input_tokens(plain) == 4 + 100
    tools = [{"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}}}]
    assert estimate_input_tokens({**plain, "tools": tools}) > estimate_input_tokens(plain)
    pdf = base64.b64encode(b"%PDF-1.4 /Type /Pages /Type /Page x /Type/Page y").decode()
    with_media = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": PNG_URL}},
                    {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{pdf}"}},
                ],
            }
        ]
    }
    assert estimate_input_tokens(with_media) == 4 + IMAGE_TOKENS + 2 * PDF_PAGE_TOKENS
    calls = {
        "messages": [
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "abcd", "arguments": "1234"}}]}
        ]
    }
    assert estimate_input_tokens(calls) == 4 + 2
    assert estimate_input_tokens({"messages": []}) == 1


def test_input_token_estimate_prices_media_by_kind_and_length_not_by_its_base64_text():
    audio = base64.b64encode(b"\0" * 159_840).decode()  # 160 kB: ~100 s of compressed speech
    parts = [
        {"type": "input_audio", "input_audio": {"data": audio, "format": "mp3"}},
        {"type": "input_image", "image_url": "data:image/png;base64," + "A" * 1_000_000},
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + "A" * 4_000_000}},  # 3 MB
        {"type": "video_url", "video_url": {"url": "https://example.com/talk.mp4"}},
        {"type": "audio_url", "audio_url": {"url": "data:audio/ogg;base64," + "A" * 4_000}},  # 3 kB
        {"type": "file", "file": {"file_data": "data:text/plain;base64," + "A" * 40_000}},  # 30 kB of text
    ]
    estimate = estimate_input_tokens({"messages": [{"role": "user", "content": parts}]})
    audio_tokens = math.ceil(159_840 / AUDIO_BYTES_PER_TOKEN) + math.ceil(3_000 / AUDIO_BYTES_PER_TOKEN)
    video_tokens = 3_000_000 // VIDEO_BYTES_PER_TOKEN + VIDEO_TOKENS
    assert estimate == 4 + audio_tokens + IMAGE_TOKENS + video_tokens + 30_000 // 4


def test_reasoning_sent_back_with_an_earlier_answer_is_not_input():
    turn = {"role": "assistant", "content": "ok", "reasoning_content": "x" * 8000, "reasoning": "y" * 8000}
    assert estimate_input_tokens({"messages": [turn]}) == 4 + 1


def test_input_token_estimate_counts_what_else_a_message_or_the_body_carries():
    hidden = {"role": "assistant", "content": "", "function_call": {"name": "f", "arguments": "x" * 4000}}
    assert estimate_input_tokens({"messages": [hidden]}) >= 1000
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"description": "x" * 4000}}}
    plain = {"messages": [{"role": "user", "content": "hi"}], "model": "m", "max_tokens": 5, "stream": True}
    assert estimate_input_tokens(plain) == 4 + 1  # settings are not input
    assert estimate_input_tokens({**plain, "response_format": schema}) >= 1000


@pytest.mark.parametrize(
    "part",
    [{"type": "file", "file": "abc"}, {"type": "file", "file": {"file_data": None}}, "a string", {"type": None}],
)
def test_input_token_estimate_survives_odd_parts(part):
    assert estimate_input_tokens({"messages": [{"role": "user", "content": [part]}]}) >= 4


def test_claude_codes_request_becomes_a_chat_body_every_vendor_takes():
    from tests.unit.test_messages_schema import CLAUDE_CODE

    validate_messages_request(CLAUDE_CODE)
    translated = to_chat_request(CLAUDE_CODE)
    chat = for_model(translated, Model("gemini", "gemini-2.5-pro", max_output_tokens=65536, reasoning=True))
    validate_chat_request(chat)
    assert [message["role"] for message in chat["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert chat["messages"][0]["content"] == "You are Claude Code.\n\nBe careful.\n\n# Environment"
    assert chat["max_completion_tokens"] == 65536
    assert chat["reasoning_effort"] == "medium"
    assert chat["stream_options"] == {"include_usage": True}
    assert [tool["function"]["name"] for tool in chat["tools"]] == ["Bash", "DeferredToolPlaceholder"]
    assert "cache_control" not in str(chat) and "defer_loading" not in str(chat) and "metadata" not in chat
    assert estimate_input_tokens(chat) > 0
