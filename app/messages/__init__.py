"""The Anthropic Messages API (``POST /v1/messages``), served on top of chat completions.

``schema`` checks a request; ``request`` turns it into a chat-completions request (and, per
configured model, the body sent to it); ``answer`` turns a whole chat completion into a Message;
``stream`` turns chat chunks into Messages stream events; ``count`` estimates input tokens;
``errors`` shapes any router error as Anthropic's error object. All pure: no Flask, no HTTP, no I/O.
"""
