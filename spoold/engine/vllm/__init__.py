"""The vLLM backend: the engine (backend), its load, the outbox of finished requests, pooling tasks (embed, score, rerank)."""
