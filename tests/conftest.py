"""Shared fixtures. Sections are owned by topic; keep them apart."""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# ---- core fixtures (spool, daemon process) -------------------------------------------------

# ---- vLLM fixtures (one real engine per test session) --------------------------------------
