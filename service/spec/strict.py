"""The base of every study-definition model: an unknown field is an error naming it, not
something silently dropped (a misspelt `n_trails` would otherwise run with the default)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
