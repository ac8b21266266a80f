"""The JSON bodies of POST /prompt, /queue, /history and /settings, as pydantic models.

pydantic earns its place here: one declaration per body gives the type checks, the lax
conversions ComfyUI's clients rely on (``"number": "2"``), and an error list with the location
and reason of every fault at once, instead of hand-written ``isinstance`` ladders that each
word their refusal differently (and missed cases: a 400-digit ``number`` raised OverflowError,
a 500). Faults become a structured 400 in ComfyUI's error shape::

    {"error": {"type": "invalid_prompt", "message": "...", "details": "number: Input should be a
     finite number", "extra_info": {"errors": [{"loc": "number", "type": "finite_number",
     "msg": "..."}]}}, "node_errors": {}}

Unknown keys are ignored, as ComfyUI does. The node graph itself (``prompt``) is only checked to be
an object here: engine.validate owns its meaning and reports per node.
"""
from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator
from starlette.exceptions import HTTPException


class PromptBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: dict  # node id -> node; a shallow check only (2 ms for 10,000 nodes)
    number: Union[float, None] = Field(None, allow_inf_nan=False)  # explicit priority (ComfyUI: float())
    front: Union[bool, None] = None
    prompt_id: Union[str, None] = Field(None, min_length=1, max_length=128)
    client_id: Union[str, None] = Field(None, max_length=128)
    extra_data: Union[dict, None] = None
    partial_execution_targets: Union[list[Union[str, int]], None] = None

    @field_validator("prompt_id")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        if v is not None and not v.isprintable():
            raise ValueError("must be printable text")
        return v


class ClearDelete(BaseModel):
    """POST /queue and POST /history: ``clear`` everything and/or ``delete`` some ids."""

    model_config = ConfigDict(extra="ignore")

    clear: Union[bool, None] = None
    delete: Union[list[Union[str, int]], str, int, None] = None

    def ids(self) -> list[str] | None:
        d = self.delete
        if d is None:
            return None
        return [str(x) for x in (d if isinstance(d, list) else [d])]


class Settings(RootModel[dict[str, Any]]):
    """POST /settings: an object of setting id -> any JSON value."""


def parse(model: type[BaseModel], body: Any, error_type: str = "invalid_body"):
    """``model`` validated from ``body``; a structured 400 (HTTPException with a dict detail) if not."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        errors = [{"loc": ".".join(str(p) for p in err["loc"]) or "(body)", "type": err["type"], "msg": err["msg"]}
                  for err in e.errors(include_input=False, include_url=False, include_context=False)]
        raise HTTPException(400, {"type": error_type, "message": f"invalid {model.__name__} body",
                                  "details": "; ".join(f"{x['loc']}: {x['msg']}" for x in errors),
                                  "extra_info": {"errors": errors}})
