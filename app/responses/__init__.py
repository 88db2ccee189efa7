"""The Responses API, served statelessly on top of chat completions.

``schema`` checks a request, ``request`` turns it into a chat-completions request, ``answer`` turns
a whole chat completion into a response object and ``stream`` turns chat chunks into Responses
events: all pure, no Flask, no HTTP, no I/O. ``service`` hands the translated request to the
forwarding pipeline chat uses.
"""
