"""GET /v1/models: the model profiles (and their adapters) a batch may name."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from spoold.api.context import api_key, context
from spoold.api.keys import ApiKey
from spoold.engine.profiles import ModelProfile

router = APIRouter()


def model_objects(profiles: dict[str, ModelProfile], created: int = 0) -> list[dict[str, Any]]:
    """openai.types.Model per profile, then per adapter a profile declares (SPEC section 12) (pure)."""
    out = []
    for name, profile in sorted(profiles.items()):
        out.append({"id": name, "object": "model", "created": created, "owned_by": "spoold"})
        for adapter in getattr(profile, "adapters", None) or []:
            out.append({"id": adapter.name, "object": "model", "created": created, "owned_by": "spoold", "parent": name})
    return out


def model_names(models: list[dict[str, Any]]) -> frozenset[str]:
    return frozenset(m["id"] for m in models)


@router.get("/models")
def list_models(request: Request, key: ApiKey = Depends(api_key)) -> dict[str, Any]:
    data = context(request).models
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": False,
    }
