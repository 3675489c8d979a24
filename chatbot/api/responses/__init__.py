"""OpenAI's Responses API (POST/GET/DELETE /v1/responses) over the chat machinery."""
