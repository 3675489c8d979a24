"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens) over the
chat machinery, with Anthropic's event stream and error JSON."""
