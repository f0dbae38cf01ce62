"""Serving a chat model: an OpenAI-compatible HTTP API over a batching decoder, with built-in tools."""
