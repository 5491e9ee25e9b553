"""The presets a definition can name, with what each expands to."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.deps import Reader
from service.api.schemas import PresetsPublic
from service.spec import presets

router = APIRouter(prefix="/api/v1/presets", tags=["studies"])


@router.get("", response_model=PresetsPublic)
def list_presets(_caller: Reader) -> dict[str, Any]:
    """Each preset's space and fixed values, plain and with `finetune: true`. Role: viewer, member or admin.

    Entries a definition states in `space` or fixes in `workload` override the preset's."""
    out = []
    for name in presets.PRESET_NAMES:
        space, fixed = presets.expand(name)
        finetune_space, _ = presets.expand(name, finetune=True)
        out.append({"name": name, "fixed": fixed, "space": space, "finetune_space": finetune_space})
    return {"presets": out}
