"""Ask your memory: a chat whose answers are grounded in the memories and facts it found.

`store` keeps conversations (SQLite, per workspace), `models` speaks to a
language model (the bundled local one, or any OpenAI-compatible endpoint), and
`agent` puts them together: retrieval first, the found records as numbered
citations, the answer streamed as events.
"""
