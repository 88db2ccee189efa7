"""POST /v1/messages/count_tokens: a Messages request's input tokens, estimated without any vendor.

POST /v1/messages is the Messages recipe's (app/messages/recipe.py), served by app/blueprints/endpoints.py.
"""

from flask import Blueprint

from app.http import read_json_body
from app.messages.recipe import count_tokens

bp = Blueprint("messages_tokens", __name__)

# How the count was made, for clients that care: OpenAI and Gemini's OpenAI-compatible endpoints
# have no counting call, so it is the router's estimate (about 4 characters per token).
COUNT_METHOD_HEADER = {"X-Token-Count-Method": "estimate"}


@bp.post("/v1/messages/count_tokens")
def count_message_tokens() -> tuple[dict, int, dict]:
    """``{"input_tokens": N}`` for the request as it would be sent to a vendor."""
    return {"input_tokens": count_tokens(read_json_body())}, 200, COUNT_METHOD_HEADER
